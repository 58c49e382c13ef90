r"""Judge a DiT run on the built-in world's held-out prompts (the last step of `make demo`).

  python -m sorajax.evaluate --workdir runs/demo/dit --out runs/demo/report --seeds 4

Samples every held-out prompt (never seen in training) with several seeds, asks the world's judge
whether each video shows the prompt's color, shape and motion, and writes
  <out>/videos/*.mp4|gif, <out>/contact_sheet.png, <out>/report.json and <out>/report.md.
The same prompts are judged again worded with other words (--paraphrased; shapes.PARAPHRASES):
a text encoder that knows language follows them, one that learned only the captions' words not.
A run trained with frame conditioning (flow.given_frames) is also judged in every prompting mode
(sorajax/evaluate_modes.py): image -> video, extension both ways, connect, loop, edit and a
minute-long rollout, each with a contact sheet <out>/modes/<mode>.png and a table in the report.
"""
from __future__ import annotations

import os
import time

import numpy as np
from absl import flags

from sorajax import configuration
from sorajax.data import shapes, shapes_judge
from sorajax.evaluate_report import (ATTRIBUTES, two_places, write_modes, write_paraphrased,
                                     write_report)

_WORKDIR = flags.DEFINE_string("workdir", None, "A DiT run made by sorajax.train.")
_DECODER = flags.DEFINE_string(
    "decoder", None, "A VAE run fine-tuned from the DiT's VAE with its encoder kept "
    "(configs/shapes/vae.py); its decoder draws the videos.")
_OUT = flags.DEFINE_string("out", None, "Report folder (default: <workdir>/report).")
_SEEDS = flags.DEFINE_integer("seeds", 4, "Samples per held-out prompt.")
_BATCH = flags.DEFINE_integer("batch", 16, "Videos generated per call.")
_STEPS = flags.DEFINE_integer("steps", None, "Sampler steps (default: the run's sample.steps).")
_GUIDANCE = flags.DEFINE_float("guidance", None, "CFG scale (default: the run's sample.guidance; "
                                "a loop's redrawn end: its sample.loop_guidance; a rollout: its "
                                "sample.rollout_guidance).")
_SAMPLER = flags.DEFINE_string("sampler", None, "euler, heun or dpm_solver_2m (default: the run's "
                               "sample.sampler).")
_MODES = flags.DEFINE_bool("modes", None, "Judge the prompting modes too (default: when the run "
                            "was trained with flow.given_frames).")
_MODE_SEEDS = flags.DEFINE_integer("mode_seeds", 2, "Samples per held-out prompt in each mode.")
_GIVEN_NOISE = flags.DEFINE_float(
    "given_noise", None, "Prompting modes: noise level the given frames are shown at (default: the "
    "run's sample.given_noise).")
_PARAPHRASED = flags.DEFINE_bool(
    "paraphrased", None, "Also judge the held-out prompts worded with other words "
    "(shapes.paraphrase): does the text encoder know words the captions never use? (default: "
    "for runs on a pretrained text encoder)")
_ROLLOUT_SECONDS = flags.DEFINE_float("rollout_seconds", 60.0, "Length of the judged rollouts.")
_ROLLOUT_SEEDS = flags.DEFINE_integer(
    "rollout_seeds", 1, "Judged rollouts per held-out prompt; more count drift over more videos "
    "(bench/RESULTS.md, issue 5 eighth pass).")
_ROLLOUT_SEEN = flags.DEFINE_bool(
    "rollout_seen", True, "Also roll out each in-view held-out prompt's seen counterpart (the same "
    "shape and motion in a color training shows them in): what a minute loses on any prompt, "
    "beside what it loses on unseen combinations. --norollout_seen saves those minutes.")
_ROLLOUT_REFRESH = flags.DEFINE_float(
    "rollout_refresh", None, "How far each rollout chunk is redrawn, [0, 1) (default: the run's "
    "sample.rollout_refresh).")
_LOOP_STRENGTH = flags.DEFINE_float(
    "loop_strength", None, "How far a loop's redrawn end is noised, (0, 1] (default: the run's "
    "sample.loop_strength).")
_STAGE_FRAMES = flags.DEFINE_integer(
    "stage_frames", None, "Latent frames fixed per sampling stage, 0 for one pass (default: the "
    "run's sample.stage_frames).")

PACE = ("travel", "evenness")  # measured for left/right/up/down movers (shapes_judge.pace)


def evaluate_heldout(generator, seeds: int, batch: int, steps=None, guidance=None,
                     stage_frames=None, sampler=None, paraphrased: bool = False):
  """Generates and judges every held-out prompt `seeds` times; returns (rows, videos).
  `paraphrased`: each prompt is worded with other words (shapes.paraphrase, a wording per seed)."""
  background = "black"
  prompts = shapes.held_out_prompts(background)
  jobs = [(prompt, seed) for prompt in prompts for seed in range(seeds)]
  rows, videos = [], []
  for start in range(0, len(jobs), batch):
    chunk = jobs[start:start + batch]
    captions = [shapes.paraphrase(p, s) if paraphrased else p.caption for p, s in chunk]
    out = generator.generate(captions, [s for _, s in chunk],
                             steps=steps, guidance=guidance, stage_frames=stage_frames,
                             sampler=sampler)
    for (prompt, seed), caption, video in zip(chunk, captions, out):
      verdict = shapes_judge.judge_prompt(video, prompt)
      paces = [o["details"] for o in verdict["objects"] if "travel" in o["details"]]
      rows.append({"caption": caption, "seed": seed, "prompt": prompt.to_json(),
                   **{name: verdict[name] for name in ATTRIBUTES},
                   **{name: [d[name] for d in paces] for name in PACE}})
      videos.append(video)
  return rows, videos


def summarise(rows) -> dict[str, float]:
  return {name: float(np.mean([bool(row[name]) for row in rows])) for name in ATTRIBUTES}


def summarise_pace(rows) -> dict[str, float]:
  """Medians of the directional movers' pace (shapes_judge.pace) over every sample."""
  values = {name: [v for row in rows for v in row[name] if v is not None] for name in PACE}
  # None, not NaN, where there were no movers: report.json stays strict JSON.
  return {f"median_{name}": float(np.median(v)) if v else None for name, v in values.items()}


def main(argv):
  del argv
  if not _WORKDIR.value:
    raise configuration.ConfigError("pass --workdir <DiT run>")
  from sorajax import evaluate_modes, prompting  # pylint: disable=import-outside-toplevel
  from sorajax.generation import VideoGenerator  # pylint: disable=import-outside-toplevel
  out = _OUT.value or os.path.join(_WORKDIR.value, "report")
  generator = VideoGenerator(_WORKDIR.value, decoder=_DECODER.value)
  if _GIVEN_NOISE.value is not None:  # before the held-out samples, not after
    generator.check_given_noise(_GIVEN_NOISE.value)
  try:  # the flag, or the run's own setting, before hours of judging
    prompting.check_refresh(prompting.default_refresh(generator) if _ROLLOUT_REFRESH.value is None
                            else _ROLLOUT_REFRESH.value, "--rollout_refresh")
    evaluate_modes.check_rollout_seeds(_ROLLOUT_SEEDS.value, "--rollout_seeds")
    prompting.default_rollout_temperature(generator)
    if _GUIDANCE.value is None:
      prompting.default_loop_guidance(generator)
      prompting.default_rollout_guidance(generator)
    if _LOOP_STRENGTH.value is None:
      prompting.default_loop_strength(generator)
    else:
      prompting.check_loop_strength(_LOOP_STRENGTH.value, "--loop_strength")
  except ValueError as e:
    raise configuration.ConfigError(str(e)) from e
  start = time.perf_counter()
  rows, videos = evaluate_heldout(generator, _SEEDS.value, _BATCH.value, _STEPS.value,
                                  _GUIDANCE.value, _STAGE_FRAMES.value, _SAMPLER.value)
  seconds = time.perf_counter() - start
  summary = summarise(rows)
  info = {"pace": summarise_pace(rows), "workdir": os.path.abspath(_WORKDIR.value),
          "decoder": _DECODER.value and os.path.abspath(_DECODER.value),
          "step": generator.step,
          "prompts": len(rows) // _SEEDS.value, "seeds": _SEEDS.value, "seconds": seconds,
          "sampler_steps": _STEPS.value or generator.config.sample.steps,
          "sampler": _SAMPLER.value or generator.config.sample.get("sampler", "euler"),
          "stage_frames": (generator.config.sample.get("stage_frames", 0)
                           if _STAGE_FRAMES.value is None else _STAGE_FRAMES.value),
          "guidance": (generator.config.sample.guidance
                       if _GUIDANCE.value is None else _GUIDANCE.value)}
  trained_modes = any(p > 0 for p in generator.objective.given_frames.values())
  extra = []
  if _PARAPHRASED.value or (_PARAPHRASED.value is None
                            and generator.objective.text_encoder is not None):
    os.makedirs(out, exist_ok=True)
    para_rows, para_videos = evaluate_heldout(generator, _SEEDS.value, _BATCH.value, _STEPS.value,
                                              _GUIDANCE.value, _STAGE_FRAMES.value,
                                              _SAMPLER.value, paraphrased=True)
    info["paraphrased"] = summarise(para_rows)
    extra += write_paraphrased(out, para_rows, para_videos, info["paraphrased"])
  if _MODES.value or (_MODES.value is None and trained_modes):
    start = time.perf_counter()
    settings = dict(steps=_STEPS.value, guidance=_GUIDANCE.value, sampler=_SAMPLER.value,
                    given_noise=_GIVEN_NOISE.value)
    info["given_noise"] = (generator.config.sample.get("given_noise", 0.0)
                           if _GIVEN_NOISE.value is None else _GIVEN_NOISE.value)
    modes = evaluate_modes.evaluate_modes(generator, _MODE_SEEDS.value, settings,
                                          seconds=_ROLLOUT_SECONDS.value,
                                          rollout_refresh=_ROLLOUT_REFRESH.value,
                                          loop_strength=_LOOP_STRENGTH.value,
                                          rollout_seeds=_ROLLOUT_SEEDS.value,
                                          rollout_seen=_ROLLOUT_SEEN.value)
    info["modes"] = {mode: result["metrics"] for mode, result in modes.items()}
    extra += write_modes(out, modes, time.perf_counter() - start)
    for mode, metrics in info["modes"].items():
      print(f"{mode}: " + ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()))
  write_report(out, rows, videos, summary, info, extra)
  print("held-out accuracy: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in summary.items()))
  if "paraphrased" in info:
    print("paraphrased accuracy: " + ", ".join(f"{k} {100 * v:.1f}%"
                                                for k, v in info["paraphrased"].items()))
  print("pace: " + ", ".join(f"{k} {two_places(v)}" for k, v in info["pace"].items()))
  print(f"report: {os.path.join(out, 'report.md')}")


if __name__ == "__main__":
  configuration.run(main, check_config_flag=False)
