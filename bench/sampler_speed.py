r"""Sampling time per video for each sampler and step count, on a trained DiT run.

  python bench/sampler_speed.py --workdir runs/demo/dit [--batch 16] [--specs euler:30,heun:15]

Times `VideoGenerator.generate` (DiT sampling with CFG, then chunked VAE decode) on held-out prompts
after one warm-up call per setting, so compile time is left out. Judge accuracy at each setting
comes from `python -m sorajax.evaluate --sampler S --steps N` (bench/RESULTS.md pairs the two).
"""
from __future__ import annotations

import argparse
import time

from sorajax.data import shapes
from sorajax.diffusion import samplers
from sorajax.generation import VideoGenerator


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--specs", default="euler:30,euler:15,heun:15,heun:8,dpm_solver_2m:15,"
                                          "dpm_solver_2m:10")
  args = parser.parse_args()
  generator = VideoGenerator(args.workdir)
  prompts = shapes.held_out_prompts("black")
  captions = [prompts[i % len(prompts)].caption for i in range(args.batch)]
  seeds = list(range(args.batch))
  for spec in args.specs.split(","):
    name, steps = spec.split(":")
    steps = int(steps)
    generator.generate(captions, seeds, steps=steps, sampler=name)  # compile
    start = time.perf_counter()
    for _ in range(args.repeats):
      generator.generate(captions, seeds, steps=steps, sampler=name)
    seconds = (time.perf_counter() - start) / args.repeats
    calls = samplers.velocity_calls(name, steps)
    print(f"{name} {steps} steps ({calls} DiT calls, CFG batched): "
          f"{1000 * seconds / args.batch:.1f} ms/video ({seconds:.2f} s per batch of {args.batch})")


if __name__ == "__main__":
  main()
