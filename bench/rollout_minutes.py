r"""Minute-long rollouts of the prompts that stay in view, several seeds each, judged window by
window: the count behind issue 5's rollout tables in bench/RESULTS.md.

  python bench/rollout_minutes.py --workdir runs/demo/dit [--seeds 4] [--no-seen]
      [--sampler dpm_solver_2m] [--steps 30] [--guidance 4] [--temperature 0.8] [--context 1]
      [--refresh 0.5]
      [--anchor | --no-anchor] [--traces]

Rolls out the held-out prompts whose object stays in view for a minute (standing still or
bouncing; `evaluate_modes.rollout` says why the straight movers are apart), --seeds rollouts of
--seconds per prompt at the demo's 8 fps, and unless --no-seen also each one's seen counterpart on
the same seed.
`python -m sorajax.evaluate` rolls out every held-out prompt once, beside all other modes; this
spends the time on the prompts the bar is judged on, with more seeds, under one setting per run.
Prints the rollout's measures (evaluate_modes.rollout) as one JSON line, with the seconds taken.
"""
from __future__ import annotations

import argparse
import json
import time

from sorajax import evaluate_modes
from sorajax import prompting
from sorajax.data import shapes
from sorajax.generation import VideoGenerator


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--decoder", default=None,
                      help="a decoder fine-tune of the run's VAE (configs/shapes/vae.py)")
  parser.add_argument("--seeds", type=int, default=4, help="rollouts per prompt")
  parser.add_argument("--seconds", type=float, default=60.0)
  parser.add_argument("--fps", type=int, default=8)
  parser.add_argument("--seen", action=argparse.BooleanOptionalAction, default=True,
                      help="also each prompt's seen counterpart (shapes.seen_counterpart)")
  parser.add_argument("--sampler", default=None, help="default: the run's sample.sampler")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--guidance", type=float, default=None,
                      help="default: the run's sample.rollout_guidance")
  parser.add_argument("--temperature", type=float, default=None,
                      help="noise scale of chunks after the first (default: the run's "
                           "sample.rollout_temperature)")
  parser.add_argument("--context", type=int, default=None,
                      help="latent frames carried into each chunk (default: prompting's)")
  parser.add_argument("--refresh", type=float, default=None,
                      help="default: the run's sample.rollout_refresh")
  parser.add_argument("--traces", action="store_true",
                      help="also print each in-view minute's windows in order (1 kept, "
                           "s misshaped, - no object of its color and size)")
  parser.add_argument("--anchor", action=argparse.BooleanOptionalAction, default=None,
                      help="show later chunks the first frame (default: if the run trained so)")
  args = parser.parse_args()
  generator = VideoGenerator(args.workdir, decoder=args.decoder)
  try:  # before the long run
    evaluate_modes.check_rollout_seeds(args.seeds, "--seeds")
    if args.guidance is None:
      prompting.default_rollout_guidance(generator)
    prompting.check_refresh(prompting.default_refresh(generator) if args.refresh is None
                            else args.refresh, "--refresh")
  except ValueError as e:
    parser.error(str(e))
  settings = {name: value for name, value in (("sampler", args.sampler), ("steps", args.steps),
                                              ("guidance", args.guidance),
                                              ("temperature", args.temperature),
                                              ("context", args.context),
                                              ("anchor", args.anchor))
              if value is not None}
  prompts = [p for p in shapes.held_out_prompts("black") if evaluate_modes.in_view(p)]
  start = time.perf_counter()
  result = evaluate_modes.rollout(generator, prompting.Chunk(generator), prompts, settings,
                                  args.seconds, args.fps, args.refresh, args.seeds, args.seen)
  print(json.dumps({"workdir": args.workdir, "decoder": args.decoder, "settings": settings,
                    "prompts": len(prompts),
                    "seconds": round(time.perf_counter() - start),
                    "metrics": result["metrics"]}, default=float))
  if args.traces:
    for caption, trace in result["traces"]:
      print(f"{trace}  {caption}")


if __name__ == "__main__":
  main()
