r"""What the world's judge reads in true clips after a VAE codes them: the ceiling a generator on
that VAE is judged against.

  python bench/judge_ceiling.py --workdir runs/demo/vae [--placements 200] [--all]
      [--latent_noise 0.5]

Renders --placements clips (9 frames, 32x32; a render seed each, so a size and place each) of every
held-out prompt whose object stays in view (standing still or bouncing: the ones a minute-long
rollout is judged on; --all: every held-out prompt), codes and decodes them with the VAE at
--workdir (a VAE run, or a DiT run: the VAE it trained on), and judges each clip as one rollout
window is judged. Per prompt: the share of clips whose shape is read right, raw and coded, and
the shape margin (shapes_judge.shape_margin: how far the reading is from flipping), mean and
lowest. With --latent_noise S each clip's latents get Gaussian noise of S times each channel's std
(the VAE's stored latent statistics) before decoding: how near the data's latents a generator
must sample for the judge to read its drawing right.
A generator reproduces its VAE's drawings at best, so a coded clip read as another shape is a
window no rollout on that VAE keeps at that size and place.
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import jax
import numpy as np

from sorajax import evaluate_modes
from sorajax.configuration import load_saved_config
from sorajax.data import shapes, shapes_judge
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import objectives
from sorajax.training import vae_objective


def load_coder(workdir: str, latent_noise: float = 0.0):
  """(code, vae_workdir, step): `code` maps uint8 clips (N, T, H, W, 3) to their VAE round trip,
  the latents noised by `latent_noise` channel stds."""
  config = load_saved_config(workdir)
  vae_workdir, step = workdir, None
  if config.objective == "dit":  # the VAE and step the DiT trained on
    vae_workdir, step = config.vae_workdir, config.get("vae_step") or None
  mesh = mesh_lib.make_mesh({"data": -1})
  _, objective, params, step = objectives.restore_run(vae_workdir, mesh, step=step)
  if latent_noise <= 0:
    def code(clips):
      return np.asarray(vae_objective.unit_to_pixels(objective.reconstruct(params, clips)[0]))
    return code, vae_workdir, step

  with open(os.path.join(vae_workdir, vae_objective.LATENT_STATS_FILE)) as f:
    std = np.asarray(json.load(f)["std"], np.float32)
  model = objective.model

  @jax.jit
  def noised_round_trip(clips, key):
    video = vae_objective.pixels_to_unit(clips)
    mean, _ = model.apply({"params": params}, video, method=model.encode)
    z = mean + latent_noise * std * jax.random.normal(key, mean.shape, mean.dtype)
    return vae_objective.unit_to_pixels(model.apply({"params": params}, z, method=model.decode))

  def code(clips):  # the same noise for the same clips, whatever else is coded
    size = objective.config.train.batch_size
    return np.concatenate([np.asarray(noised_round_trip(clips[i:i + size], jax.random.key(i)))
                           for i in range(0, len(clips), size)])
  return code, vae_workdir, step


def read(clip: np.ndarray, prompt: shapes.Prompt) -> tuple[bool, float]:
  [verdict] = shapes_judge.judge_video(clip, prompt)
  return bool(verdict["shape"]), shapes_judge.shape_margin(verdict, prompt.objects[0].shape)


def ceiling(code, prompts, placements: int, frames: int, size: int) -> tuple[float, dict]:
  """(share of coded clips whose shape reads right, per-prompt rows) over `placements` render seeds
  of each prompt; `code` maps uint8 clips (N, T, H, W, 3) to what the generator's VAE makes of
  them."""
  rows, kept = {}, []
  for prompt in prompts:
    clips = np.stack([shapes.render_prompt(prompt, frames, size, size, seed)
                      for seed in range(placements)])
    raw = [read(clip, prompt) for clip in clips]
    coded = [read(clip, prompt) for clip in code(clips)]
    margins = np.array([m for _, m in coded])
    read_margins = margins[~np.isnan(margins)]  # NaN: no object there to read
    kept.extend(ok for ok, _ in coded)
    rows[prompt.caption] = {
        "raw_shape": float(np.mean([ok for ok, _ in raw])),
        "coded_shape": float(np.mean([ok for ok, _ in coded])),
        "raw_margin": float(np.nanmean([m for _, m in raw])),
        "coded_margin": float(read_margins.mean()) if read_margins.size else math.nan,
        "coded_margin_min": float(read_margins.min()) if read_margins.size else math.nan,
        "misread_seeds": [seed for seed, (ok, _) in enumerate(coded) if not ok][:10]}
  return float(np.mean(kept)), rows


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True, help="a VAE run, or a DiT run (its VAE)")
  parser.add_argument("--placements", type=int, default=200, help="render seeds per prompt")
  parser.add_argument("--frames", type=int, default=9)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--all", action="store_true", help="every held-out prompt, not only in-view")
  parser.add_argument("--latent_noise", type=float, default=0.0,
                      help="Gaussian noise on the latents before decoding, in channel stds")
  args = parser.parse_args()
  if args.placements < 1:
    parser.error(f"--placements={args.placements} must be 1 or more")
  if args.latent_noise < 0:
    parser.error(f"--latent_noise={args.latent_noise} must be >= 0 (0: the posterior mean)")
  code, vae_workdir, step = load_coder(args.workdir, args.latent_noise)
  prompts = [p for p in shapes.held_out_prompts("black") if args.all or evaluate_modes.in_view(p)]
  start = time.perf_counter()
  coded_shape, rows = ceiling(code, prompts, args.placements, args.frames, args.size)
  print(json.dumps({"vae_workdir": vae_workdir, "vae_step": step, "placements": args.placements,
                    "latent_noise": args.latent_noise,
                    "seconds": round(time.perf_counter() - start),
                    "coded_shape": coded_shape, "prompts": rows}))


if __name__ == "__main__":
  main()
