r"""Train-step throughput of the demo's VAE and DiT configs on this machine's devices.

  python bench/train_step_speed.py --vae_workdir runs/demo/vae [--steps 20] [--latent_cache 0]

Times `--steps` jitted steps after one warm-up (compile) step, for each objective, and prints
steps/s and examples/s. The DiT needs a trained (or briefly trained) VAE workdir for its encoder.
The DiT trains from the config's latent cache (`data.latent_cache` pre-encoded clips; its one-off
encoding is timed separately); --latent_cache N overrides it, 0 encodes every batch.
"""
import argparse
import os
import tempfile
import time

import flax.linen as nn
import jax

from sorajax import configuration
from sorajax.data import pipeline
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import objectives
from sorajax.training import state as state_lib
from sorajax.training import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_steps(config, steps: int, workdir: str):
  """(mean seconds per train step after a warm-up step, the objective)."""
  mesh = mesh_lib.make_mesh(config.mesh.to_dict())
  rules = mesh_lib.logical_rules(config.logical_rules)
  objective = objectives.build_objective(config, mesh)
  start = time.perf_counter()
  objective.prepare(workdir)
  if objective.train_sources is not None:
    print(f"pre-encoded training latents of {sum(len(s) for s in objective.train_sources)} "
          f"clips ready in {time.perf_counter() - start:.1f} s (with the latent statistics)")
  optimizer = state_lib.make_optimizer(config.train)
  state, shardings = state_lib.init_sharded_state(
      objective.init_params, optimizer, config.train.ema_decay, jax.random.key(0), mesh, rules)
  batches = pipeline.train_batches(config, mesh, objective.tokenizer, objective.train_sources,
                                  objective.prompt_table)
  frozen = jax.device_put(objective.frozen, mesh_lib.replicated(mesh))
  step = step_lib.jit_train_step(objective, optimizer, config.train.ema_decay, shardings, mesh)
  rng = jax.random.key(1)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state, metrics = step(state, next(batches), frozen, rng)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, next(batches), frozen, rng)
    jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / steps, objective


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--vae_workdir", required=True)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--latent_cache", type=int, default=None,
                      help="DiT: pre-encoded clips (0: none; default: the config's)")
  args = parser.parse_args()
  print(f"devices: {jax.devices()}")
  for name in ("vae", "dit"):
    config = configuration.load_config_file(os.path.join(ROOT, f"configs/shapes/{name}.py"))
    config.vae_workdir = args.vae_workdir if name == "dit" else ""
    if name == "dit" and args.latent_cache is not None:
      config.data.latent_cache = args.latent_cache
    with tempfile.TemporaryDirectory() as workdir:
      seconds, _ = time_steps(config, args.steps, workdir)
    print(f"{name}: batch {config.train.batch_size}: {seconds * 1000:.0f} ms/step, "
          f"{1 / seconds:.2f} steps/s, {config.train.batch_size / seconds:.1f} examples/s")


if __name__ == "__main__":
  main()
