r"""One rollout chunk from the world's own frames: how often a chunk drops or misdraws the object
its context shows, per in-view held-out prompt and per phase of the clip the context starts at.

  python bench/chunk_fades.py --workdir RUN [--placements 2] [--samples 16] [--phase_step 2]
      [--guidance 2.5] [--temperature 0.8] [--anchor | --no-anchor]

A minute-long rollout is a chain of chunks, each given the last latent frames of the one before
(prompting.rollout); one chunk that lets its object fade hands an emptier context on, and the
minute loses windows until the anchor frame brings the object back. This measures that one step
on its own, from contexts that are right: the true minute of each in-view held-out prompt (its
rendered clip on repeat, as evaluate_modes.true_minute_kept), from every `--phase_step`-th frame
of the clip's period, `--samples` chunk seeds each, continued by `prompting.extend` (the context
coded by the run's VAE, the anchor the minute's first frame). A chunk is "lost" when the judge
finds no object of the prompt's color and size in its last frame (what it hands on), "misshaped"
when its new frames read as another shape. Prints a JSON line of shares, then one row per
prompt: lost/misshaped chunks per phase and placement.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from sorajax import evaluate_modes
from sorajax import prompting
from sorajax.data import shapes
from sorajax.data import shapes_judge
from sorajax.diffusion.samplers import check_temperature
from sorajax.generation import VideoGenerator


def chunk_verdict(new_frames: np.ndarray, prompt: shapes.Prompt) -> str:
  """"lost" (no object of its color and size in the last frame), "misshaped" or "kept"."""
  if not shapes_judge.judge_prompt(new_frames[-1:], prompt)["color"]:
    return "lost"
  return "kept" if shapes_judge.judge_prompt(new_frames, prompt)["shape"] else "misshaped"


def fades(extend, prompts, placements: int, samples: int, phase_step: int, frames: int,
          size: int, context_frames: int) -> tuple[dict[str, int], list[str]]:
  """({verdict: chunks}, one row per prompt). `extend(clips, caption, seeds)` continues uint8
  clips (N, T, size, size, 3) by one chunk, returning them with its new frames after them; each
  clip is a true minute (the prompt's `frames`-frame clip on repeat, render seeds from 400) from
  its start to `context_frames` frames past the phase."""
  period = frames - 1  # a still or bouncing clip ends where it starts
  counts = {"kept": 0, "lost": 0, "misshaped": 0}
  rows = []
  for prompt in prompts:
    row = []
    for seed in range(400, 400 + placements):
      clip = shapes.render_prompt(prompt, frames, size, size, seed)
      minute = shapes.on_repeat(clip, 2 * period + context_frames)
      for phase in range(0, period, phase_step):
        # From the minute's start, so that the anchor is its first frame, as in a rollout.
        shown = np.repeat(minute[None, :phase + context_frames], samples, axis=0)
        videos = extend(shown, prompt.caption,
                        [seed * 1000 + phase * 100 + i for i in range(samples)])
        verdicts = [chunk_verdict(video[shown.shape[1]:], prompt) for video in videos]
        for verdict in verdicts:
          counts[verdict] += 1
        row.append(f"{phase}:{verdicts.count('lost')}/{verdicts.count('misshaped')}")
    rows.append(f"{' '.join(row)}  {prompt.caption}")
  return counts, rows


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--decoder", default=None,
                      help="a decoder fine-tune of the run's VAE (configs/shapes/vae.py)")
  parser.add_argument("--placements", type=int, default=2, help="render seeds per prompt")
  parser.add_argument("--samples", type=int, default=16, help="chunk seeds per context")
  parser.add_argument("--phase_step", type=int, default=2,
                      help="frames between the context starts tried in the clip's period")
  parser.add_argument("--guidance", type=float, default=None,
                      help="default: the run's sample.rollout_guidance")
  parser.add_argument("--temperature", type=float, default=None,
                      help="noise scale of each chunk (default: the run's "
                           "sample.rollout_temperature, as a rollout's later chunks)")
  parser.add_argument("--anchor", action=argparse.BooleanOptionalAction, default=None,
                      help="show the minute's first frame (default: if the run trained so)")
  args = parser.parse_args()
  for name in ("placements", "samples", "phase_step"):
    if getattr(args, name) < 1:
      parser.error(f"--{name}={getattr(args, name)} must be 1 or more")
  generator = VideoGenerator(args.workdir, decoder=args.decoder)
  chunk = prompting.Chunk(generator)
  if chunk.height != chunk.width:
    parser.error(f"the run's clips are {chunk.width}x{chunk.height}; this measures square ones")
  guidance = (prompting.default_rollout_guidance(generator) if args.guidance is None
              else args.guidance)
  anchored = generator.objective.anchor > 0 if args.anchor is None else args.anchor
  temperature = (prompting.default_rollout_temperature(generator) if args.temperature is None
                 else args.temperature)
  try:
    check_temperature(temperature, "--temperature")
  except ValueError as e:
    parser.error(str(e))

  def extend(clips, caption, seeds):
    return prompting.extend(generator, clips, [caption] * len(clips), seeds, chunk.factor,
                            chunk=chunk, anchor=anchored, guidance=guidance,
                            temperature=temperature)

  prompts = [p for p in shapes.held_out_prompts("black") if evaluate_modes.in_view(p)]
  start = time.perf_counter()
  # A rollout's default context: all but one latent frame of the chunk.
  counts, rows = fades(extend, prompts, args.placements, args.samples, args.phase_step,
                       chunk.frames, chunk.height,
                       chunk.video_frames(chunk.latents - 1, first=True))
  total = sum(counts.values())
  print(json.dumps({"workdir": args.workdir, "decoder": args.decoder, "guidance": guidance,
                    "temperature": temperature,
                    "anchor": anchored,
                    "chunks": total, "seconds": round(time.perf_counter() - start),
                    "lost": counts["lost"] / total, "misshaped": counts["misshaped"] / total}))
  print("\n".join(rows))


if __name__ == "__main__":
  main()
