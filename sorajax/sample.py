r"""Sample videos from a trained DiT run, from text or prompted with images and videos.

  python -m sorajax.sample --workdir runs/demo/dit \
      --prompt "a red circle moving left on a black background" \
      --num_samples 4 --seed 0 --out samples/
  python -m sorajax.sample --workdir runs/demo/dit --mode animate --input start.png --prompt "..."
  python -m sorajax.sample --workdir runs/demo/dit --mode rollout --seconds 60 --prompt "..."

Modes (sorajax/prompting.py): text, image (text -> image), animate (--input image), extend and
extend_back (--input clip, --new_frames), connect (--input and --input2 clips), loop (--input clip,
or a clip made from the prompt first; --strength), edit (--input clip, --strength), rollout
(--seconds of video made chunk by chunk and streamed to the mp4). Inputs are any image or video
file Pillow or PyAV reads; they are center-cropped, resized and trimmed to a size the model takes,
and the changes are printed and recorded.

`--decoder VAE_D` draws the videos with a decoder fine-tune of the run's VAE (configs/shapes/vae.py)
in place of the VAE's own decoder.

Sample i uses seed `--seed + i`: the same seed always gives the same video, different seeds differ.
Writes <out>/<index>_<prompt>_seed<seed>.mp4 and .gif (.png for images), plus samples.json
describing every file.
"""
from __future__ import annotations

import os
import re

import numpy as np
from absl import flags

from sorajax import configuration, prompting
from sorajax.data import video_io

_WORKDIR = flags.DEFINE_string("workdir", None, "A DiT run made by sorajax.train.")
_DECODER = flags.DEFINE_string(
    "decoder", None, "A VAE run fine-tuned from the DiT's VAE with its encoder kept "
    "(configs/shapes/vae.py); its decoder draws the videos.")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "Caption; repeat the flag for several prompts.")
_MODE = flags.DEFINE_enum(
    "mode", "text", prompting.MODES, "What to make (see the module docstring).")
_INPUT = flags.DEFINE_string("input", None, "Image or video file the mode starts from.")
_INPUT2 = flags.DEFINE_string("input2", None, "connect: the clip to lead into.")
_STRENGTH = flags.DEFINE_float(
    "strength", None, f"edit: how far to move from the input, (0, 1] (default "
    f"{prompting.EDIT_STRENGTH}). loop: how far the clip's end is redrawn, 1 from noise (default: "
    f"the run's sample.loop_strength).")
_NEW_FRAMES = flags.DEFINE_integer("new_frames", 8, "extend, extend_back: frames to add.")
_SECONDS = flags.DEFINE_float("seconds", 60.0, "rollout: length of the video at --fps.")
_REFRESH = flags.DEFINE_float(
    "refresh", None, "rollout: redraw each later chunk from this far towards noise under the "
    "prompt, [0, 1): larger keeps shapes longer, with larger steps between chunks and "
    "refresh x steps more sampler steps per chunk (default: the run's sample.rollout_refresh).")
_TEMPERATURE = flags.DEFINE_float(
    "temperature", None, "rollout: scale of the noise every chunk after the first starts from, "
    "(0, 1]: lower keeps the objects' look steadier from chunk to chunk; the first chunk keeps "
    "the full noise (default: the run's sample.rollout_temperature).")
_ANCHOR = flags.DEFINE_boolean(
    "anchor", None, "rollout: show every later chunk the video's first frame as an anchor frame; "
    "extend, extend_back: show every chunk the input clip's first frame (default: on for runs "
    "trained with flow.anchor > 0).")
_CONTEXT = flags.DEFINE_integer("context", None, "extend, extend_back, rollout: latent frames of "
                                "what is there given to each chunk (default: the mode's).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Videos per prompt (seeds seed..seed+n-1).")
_SEED = flags.DEFINE_integer("seed", 0, "First seed.")
_OUT = flags.DEFINE_string("out", "samples", "Output folder.")
_STEPS = flags.DEFINE_integer("steps", None, "Sampler steps (default: the run's sample.steps).")
_GUIDANCE = flags.DEFINE_float("guidance", None, "CFG scale (default: the run's sample.guidance; "
                                "a loop's redrawn end: its sample.loop_guidance; a rollout: its "
                                "sample.rollout_guidance).")
_SAMPLER = flags.DEFINE_string("sampler", None, "euler, heun or dpm_solver_2m (default: the run's "
                               "sample.sampler).")
_GIVEN_NOISE = flags.DEFINE_float(
    "given_noise", None, "Noise level the given frames are shown at, 0 to the run's "
    "flow.given_noise (default: the run's sample.given_noise).")
_STAGE_FRAMES = flags.DEFINE_integer(
    "stage_frames", None, "text: latent frames fixed per sampling stage, 0 for one pass (default: "
    "the run's sample.stage_frames).")
_FRAMES = flags.DEFINE_integer("frames", None, "Frames per clip or chunk (default: the training "
                               "size).")
_HEIGHT = flags.DEFINE_integer("height", None, "Height in pixels (default: the training size).")
_WIDTH = flags.DEFINE_integer("width", None, "Width in pixels (default: the training size).")
_SCALE = flags.DEFINE_integer("scale", 4, "Nearest-neighbour upscaling of the written files.")
_FPS = flags.DEFINE_integer("fps", 8, "Frames per second of the written files.")


def slug(text: str, limit: int = 48) -> str:
  return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "empty"


def _load(flag, chunk, count: int, max_frames: int | None = None):
  """The file named by `flag`, fitted to the chunk's size and repeated for `count` samples."""
  if not flag.value:
    raise configuration.ConfigError(f"--mode={_MODE.value} needs --{flag.name} <image or video>")
  try:
    video = video_io.read_media(flag.value)
  except ValueError as e:
    raise configuration.ConfigError(str(e)) from e
  fitted, notes = prompting.fit(video, chunk, max_frames)
  for note in notes:
    print(f"--{flag.name} {flag.value}: {note}", flush=True)
  return np.repeat(fitted, count, axis=0), notes


def _make(generator, captions, seeds, settings):
  """(videos (N, T, H, W, 3), notes) for every mode but rollout."""
  mode = _MODE.value
  size = dict(frames=_FRAMES.value, height=_HEIGHT.value, width=_WIDTH.value)
  if mode == "text":
    return generator.generate(captions, seeds, stage_frames=_STAGE_FRAMES.value, **size,
                              **settings), []
  if mode == "image":
    return prompting.text_to_image(generator, captions, seeds, _HEIGHT.value, _WIDTH.value,
                                   **settings)[:, None], []
  chunk = prompting.Chunk(generator, **size)
  n = len(captions)
  if mode == "animate":
    images, notes = _load(_INPUT, chunk, n, max_frames=1)
    return prompting.animate(generator, images[:, 0], captions, seeds, chunk, **settings), notes
  if mode in ("extend", "extend_back"):
    clips, notes = _load(_INPUT, chunk, n)
    return prompting.extend(generator, clips, captions, seeds, _NEW_FRAMES.value,
                            backward=mode == "extend_back", context=_CONTEXT.value, chunk=chunk,
                            anchor=_ANCHOR.value, **settings), notes
  if mode == "connect":
    first, notes = _load(_INPUT, chunk, n)
    second, more = _load(_INPUT2, chunk, n)
    return prompting.connect(generator, first, second, captions, seeds, chunk, **settings), (
        notes + more)
  if mode == "loop":
    if _INPUT.value:
      clips, notes = _load(_INPUT, chunk, n)
    else:  # a clip from the prompt, then its loop
      clips = generator.generate(captions, seeds, **size, **settings)
      notes = ["looped a clip made from the prompt"]
    strength = (prompting.default_loop_strength(generator) if _STRENGTH.value is None
                else _STRENGTH.value)
    guidance = prompting.loop_guidance(generator, strength, settings["guidance"])
    note = f"the clip's end redrawn from strength {strength} at guidance {guidance:g}"
    return prompting.loop(generator, clips, captions, seeds, chunk=chunk, strength=strength,
                          **{**settings, "guidance": guidance}), notes + [note]
  if mode == "edit":
    clips, notes = _load(_INPUT, chunk, n, max_frames=_FRAMES.value)
    strength = prompting.EDIT_STRENGTH if _STRENGTH.value is None else _STRENGTH.value
    return prompting.edit(generator, clips, captions, seeds, strength, **settings), notes
  raise AssertionError(mode)


def _rollout(generator, captions, seeds, settings, stems) -> list[int]:
  """Streams every rollout into its mp4 chunk by chunk; returns the frames written per file."""
  total = round(_SECONDS.value * _FPS.value)
  chunk = prompting.Chunk(generator, _FRAMES.value, _HEIGHT.value, _WIDTH.value)
  writers = [video_io.Mp4Writer(stem + ".mp4", _FPS.value, _SCALE.value) for stem in stems]
  try:
    for piece in prompting.rollout(generator, captions, seeds, total, context=_CONTEXT.value,
                                   chunk=chunk, refresh=_REFRESH.value, anchor=_ANCHOR.value,
                                   temperature=_TEMPERATURE.value, **settings):
      for writer, video in zip(writers, piece):
        writer.write(video)
      print(f"{writers[0].frames}/{total} frames", flush=True)
  except BaseException:
    for writer in writers:
      writer.abort()
    raise
  for writer in writers:
    writer.close()
  return [writer.frames for writer in writers]


def main(argv):
  del argv
  if not _WORKDIR.value or not _PROMPT.value:
    raise configuration.ConfigError("pass --workdir <DiT run> and at least one --prompt")
  from sorajax.generation import VideoGenerator  # pylint: disable=import-outside-toplevel
  generator = VideoGenerator(_WORKDIR.value, decoder=_DECODER.value)
  captions, seeds = [], []
  for prompt in _PROMPT.value:
    for i in range(_NUM_SAMPLES.value):
      captions.append(prompt)
      seeds.append(_SEED.value + i)
  settings = dict(steps=_STEPS.value, guidance=_GUIDANCE.value, sampler=_SAMPLER.value,
                  given_noise=_GIVEN_NOISE.value)
  os.makedirs(_OUT.value, exist_ok=True)
  stems = [os.path.join(_OUT.value, f"{index:03d}_{slug(caption)}_seed{seed}")
           for index, (caption, seed) in enumerate(zip(captions, seeds))]
  try:
    if _MODE.value == "rollout":
      lengths, notes = _rollout(generator, captions, seeds, settings, stems), []
    else:
      videos, notes = _make(generator, captions, seeds, settings)
  except ValueError as e:  # bad input found by the modes: one line, no traceback
    raise configuration.ConfigError(str(e)) from e
  records = []
  for index, (caption, seed, stem) in enumerate(zip(captions, seeds, stems)):
    record = {"mode": _MODE.value, "caption": caption, "seed": seed, "notes": notes,
              "checkpoint_step": generator.step,
              "decoder": _DECODER.value and os.path.abspath(_DECODER.value)}
    if _MODE.value == "rollout":
      record.update(mp4=stem + ".mp4", frames=lengths[index])
    elif _MODE.value == "image":
      video_io.write_png(stem + ".png", video_io.upscale(videos[index], _SCALE.value)[0])
      record.update(png=stem + ".png", shape=list(videos[index].shape[1:]))
    else:
      video_io.write_mp4(stem + ".mp4", videos[index], fps=_FPS.value, scale=_SCALE.value)
      video_io.write_gif(stem + ".gif", videos[index], fps=_FPS.value, scale=_SCALE.value)
      record.update(mp4=stem + ".mp4", gif=stem + ".gif", shape=list(videos[index].shape))
    records.append(record)
    print(f"wrote {stem}", flush=True)
  configuration.write_json_atomic(os.path.join(_OUT.value, "samples.json"), records)


if __name__ == "__main__":
  configuration.run(main, check_config_flag=False)
