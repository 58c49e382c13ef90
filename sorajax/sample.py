r"""Sample videos from a trained DiT run.

  python -m sorajax.sample --workdir runs/demo/dit --prompt "a red circle moving left on a black background" \
      --num_samples 4 --seed 0 --out samples/

Sample i uses seed `--seed + i`: the same seed always gives the same video, different seeds differ.
Writes <out>/<index>_seed<seed>.mp4 and .gif, plus samples.json describing every file.
"""
from __future__ import annotations

import os
import re

from absl import flags

from sorajax import configuration
from sorajax.data import video_io

_WORKDIR = flags.DEFINE_string("workdir", None, "A DiT run made by sorajax.train.")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "Caption; repeat the flag for several prompts.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Videos per prompt (seeds seed..seed+n-1).")
_SEED = flags.DEFINE_integer("seed", 0, "First seed.")
_OUT = flags.DEFINE_string("out", "samples", "Output folder.")
_STEPS = flags.DEFINE_integer("steps", None, "Sampler steps (default: the run's sample.steps).")
_GUIDANCE = flags.DEFINE_float("guidance", None, "CFG scale (default: the run's sample.guidance).")
_SAMPLER = flags.DEFINE_string("sampler", None, "euler, heun or dpm_solver_2m (default: the run's "
                               "sample.sampler).")
_STAGE_FRAMES = flags.DEFINE_integer(
    "stage_frames", None, "Latent frames fixed per sampling stage, 0 for one pass (default: the "
    "run's sample.stage_frames).")
_FRAMES = flags.DEFINE_integer("frames", None, "Frames (default: the training size).")
_HEIGHT = flags.DEFINE_integer("height", None, "Height in pixels (default: the training size).")
_WIDTH = flags.DEFINE_integer("width", None, "Width in pixels (default: the training size).")
_SCALE = flags.DEFINE_integer("scale", 4, "Nearest-neighbour upscaling of the written files.")
_FPS = flags.DEFINE_integer("fps", 8, "Frames per second of the written files.")


def slug(text: str, limit: int = 48) -> str:
  return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "empty"


def main(argv):
  del argv
  if not _WORKDIR.value or not _PROMPT.value:
    raise configuration.ConfigError("pass --workdir <DiT run> and at least one --prompt")
  from sorajax.generation import VideoGenerator  # pylint: disable=import-outside-toplevel
  generator = VideoGenerator(_WORKDIR.value)
  captions, seeds = [], []
  for prompt in _PROMPT.value:
    for i in range(_NUM_SAMPLES.value):
      captions.append(prompt)
      seeds.append(_SEED.value + i)
  videos = generator.generate(captions, seeds, frames=_FRAMES.value, height=_HEIGHT.value,
                              width=_WIDTH.value, steps=_STEPS.value, guidance=_GUIDANCE.value,
                              stage_frames=_STAGE_FRAMES.value, sampler=_SAMPLER.value)
  os.makedirs(_OUT.value, exist_ok=True)
  records = []
  for index, (caption, seed, video) in enumerate(zip(captions, seeds, videos)):
    stem = os.path.join(_OUT.value, f"{index:03d}_{slug(caption)}_seed{seed}")
    video_io.write_mp4(stem + ".mp4", video, fps=_FPS.value, scale=_SCALE.value)
    video_io.write_gif(stem + ".gif", video, fps=_FPS.value, scale=_SCALE.value)
    records.append({"caption": caption, "seed": seed, "mp4": stem + ".mp4", "gif": stem + ".gif",
                    "shape": list(video.shape), "checkpoint_step": generator.step})
    print(f"wrote {stem}.mp4", flush=True)
  configuration.write_json_atomic(os.path.join(_OUT.value, "samples.json"), records)


if __name__ == "__main__":
  configuration.run(main, check_config_flag=False)
