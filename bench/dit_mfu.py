r"""DiT train-step MFU on this machine, against a float32 matmul peak measured in the same run.

  python bench/dit_mfu.py --vae_workdir runs/demo/vae [--steps 20] [--variants scan,unroll]
  python bench/dit_mfu.py --vae_workdir runs/demo/vae --variants scan \
      --config_arg variant=B/2,frames=17,size=64,batch=8 --latent_cache 256

For the demo DiT config (configs/shapes/dit.py, the trainer's own jitted step on the latent cache;
--config_arg picks another variant or clip size from the same file):
  - the machine's float32 matmul peak: the best of several 2048^3 matmuls;
  - analytic training FLOPs per step (objective.train_flops: 3x the forward's matmuls and
    attention);
  - MFU = analytic FLOPs / step time / peak, per variant of the block stack (scan, unrolled,
    remat policies);
  - the analytic forward FLOPs over XLA's cost analysis of the same forward (unrolled, so XLA counts
    every block), which should be about 1.0.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import train_step_speed  # bench/, beside this file
from sorajax import configuration
from sorajax.data import buckets as buckets_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {  # name -> (dit.remat, unrolled)
    "scan": ("none", False),
    "unroll": ("none", True),
    "scan+remat_dots": ("dots", False),
    "scan+remat_full": ("full", False),
}


def matmul_peak(size: int = 2048, repeats: int = 10) -> float:
  """Best float32 FLOP/s of one size^3 matmul over `repeats` runs."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best


def flops_ratio(objective, config) -> float:
  """Analytic forward FLOPs over XLA's count for the DiT's forward on one training batch (text
  embeddings given: a frozen encoder is not part of the trained model)."""
  d = config.data
  dit = objective.dit.clone(scan_unroll=objective.dit.depth)
  batch = config.train.batch_size
  latents = jnp.zeros((batch,) + objective.latent_shape(d.frames, d.height, d.width))
  context = jnp.zeros((batch, d.text_max_length, objective.text_width))
  mask = jnp.ones((batch, d.text_max_length), bool)
  t = jnp.zeros((batch,))
  params = jax.eval_shape(dit.init, jax.random.key(0), latents, t, context, mask)
  cost = jax.jit(dit.apply).lower(params, latents, t, context, mask).cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  analytic = batch * dit.forward_flops(latents.shape[1:], d.text_max_length, objective.text_width)
  return analytic / cost["flops"]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--vae_workdir", required=True)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--config_arg", default="",
                      help="configs/shapes/dit.py arg, e.g. variant=B/2")
  parser.add_argument("--latent_cache", type=int, default=None,
                      help="clips to pre-encode (default: the config's)")
  args = parser.parse_args()
  print(f"devices: {jax.devices()}")
  # This machine's matmul speed drifts by up to 20% between minutes: the peak is the best of a
  # measurement before and one after the steps, and MFU is reported against it (the lower MFU).
  peak = matmul_peak()
  results = []
  with tempfile.TemporaryDirectory() as workdir:
    for name in args.variants.split(","):
      remat, unrolled = VARIANTS[name]
      config_file = os.path.join(ROOT, "configs/shapes/dit.py")
      if args.config_arg:
        config_file += f":{args.config_arg}"
      config = configuration.load_config_file(config_file)
      config.vae_workdir = args.vae_workdir
      if args.latent_cache is not None:
        config.data.latent_cache = args.latent_cache
      config.data.buckets = ""  # the video clips only: one step shape, one FLOP count
      config.dit.remat = remat
      if unrolled:
        config.dit.scan_unroll = 0  # 0: the whole depth
      seconds, objective = train_step_speed.time_steps(config, args.steps, workdir)
      results.append((name, seconds, objective.train_flops(buckets_lib.from_config(config)[0])))
  peak = max(peak, matmul_peak())
  print(f"float32 matmul peak (2048^3, best of 10, before and after): {peak / 1e9:.1f} GFLOP/s")
  for name, seconds, flops in results:
    print(f"{name}: {seconds * 1000:.0f} ms/step, {flops / 1e9:.2f} GFLOP/step (analytic), "
          f"{flops / seconds / 1e9:.1f} GFLOP/s, MFU {100 * flops / seconds / peak:.1f}%")
  print(f"analytic / XLA forward FLOPs: {flops_ratio(objective, config):.3f}")


if __name__ == "__main__":
  main()
