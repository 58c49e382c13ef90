r"""Scale-out figures from compiled programs on 8 fake CPU devices (nothing runs):

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python bench/scaleout.py \
      [--variant S/2] [--parts fsdp,context,attention,collectives]

- fsdp: bytes of params + optimizer state + EMA per device, from the compiled initialisation's
  outputs, on 1 device and at fsdp=8; efficiency = bytes(1 device) / (8 x bytes per device).
- context: the DiT train step's temporary memory per device at a long clip, on 1 device and at
  context=8 (Ulysses and ring), and the ratio.
- attention: self-attention's temporary memory per device (forward + backward) against sequence
  length, plain and blockwise on one device, Ulysses and ring at context=8; the log-log slope.
- collectives: bytes per step moved by each collective, against what each layout should move
  (FSDP: about 3x the parameter bytes; ring and Ulysses: see `expected_context_bytes`).
"""
from __future__ import annotations

import argparse
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sorajax import aot, configuration
from sorajax.models import attention
from sorajax.models import dit as dit_lib
from sorajax.parallel import context
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import objectives
from sorajax.training import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIT = os.path.join(ROOT, "configs/shapes/dit.py")
VAE = os.path.join(ROOT, "configs/shapes/vae.py")
GIB = 2 ** 30


def dit_config(variant: str, frames: int, size: int, batch: int, mesh: dict, strategy="ulysses"):
  config = configuration.load_config_file(
      f"{DIT}:variant={variant},frames={frames},size={size},batch={batch}")
  config.dit.patch = (1, 2, 2)
  config.data.buckets = ""
  config.dit.context_parallel = strategy
  config.dit.attention = "blockwise"  # linear attention memory, so activations dominate
  config.mesh = {"data": 1, "fsdp": 1, "tensor": 1, "context": 1, **mesh}
  return config


def _mesh(shape: dict):
  count = int(np.prod(list(shape.values())))
  return mesh_lib.make_mesh(shape, devices=jax.devices()[:count])


def state_bytes_per_device(config) -> int:
  """Output bytes per device of the compiled, sharded initialisation of the train state."""
  mesh = _mesh(config.mesh)
  vae_config = configuration.load_config_file(VAE)
  objective = objectives.build_objective(config, mesh, vae=aot.abstract_vae(vae_config, mesh))
  rules = mesh_lib.logical_rules(config.logical_rules)
  optimizer = state_lib.make_optimizer(config.train)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(lambda r: state_lib.create_state(
        objective.init_params, optimizer, config.train.ema_decay, r), jax.random.key(0))
    shardings = state_lib.state_shardings(abstract, mesh, rules)

    def init(rng):
      state = state_lib.create_state(objective.init_params, optimizer, config.train.ema_decay, rng)
      return state.replace(params=nn.meta.unbox(state.params),
                           ema_params=nn.meta.unbox(state.ema_params))
    compiled = jax.jit(init, out_shardings=shardings).lower(jax.random.key(0)).compile()
  return compiled.memory_analysis().output_size_in_bytes


def fsdp_part(variant: str) -> None:
  one = state_bytes_per_device(dit_config(variant, 9, 64, 8, {}))
  eight = state_bytes_per_device(dit_config(variant, 9, 64, 8, {"fsdp": 8}))
  print(f"fsdp ({variant}): params+optimizer+EMA {one / GIB:.3f} GiB on 1 device, "
        f"{eight / GIB:.4f} GiB per device at fsdp=8; efficiency {one / (8 * eight):.3f}")


def step_report(config):
  mesh = _mesh(config.mesh)
  compiled, objective, target = aot.compile_train_step(config, mesh,
                                                      configuration.load_config_file(VAE))
  return aot.report(compiled, objective, target, config, mesh)


def context_part(variant: str, frames: int, size: int) -> None:
  rows = [("1 device", {}, "ulysses"), ("context=8 ulysses", {"context": 8}, "ulysses"),
          ("context=8 ring", {"context": 8}, "ring")]
  base = None
  for name, mesh, strategy in rows:
    report = step_report(dit_config(variant, frames, size, 1, mesh, strategy))
    temp = report["memory_per_device_bytes"]["temp"]
    base = base or temp
    tokens = (1 + (frames - 1) // 4) * (size // 16) ** 2
    print(f"context ({variant}, {frames}x{size}x{size} = {tokens} tokens, batch 1) {name}: "
          f"temporaries {temp / GIB:.3f} GiB per device ({base / temp:.2f}x less than 1 device)")


def attention_temp_bytes(kind: str, length: int, heads: int, head_dim: int) -> int:
  shape = (1, length, heads, head_dim)
  if kind in ("xla", "blockwise"):
    mesh, fn = _mesh({"data": 1}), lambda q, k, v: attention.attend(q, k, v, implementation=kind)
  else:
    mesh = _mesh({"context": 8})
    fn = lambda q, k, v: context.attend(q, k, v, strategy=kind, implementation="blockwise")
  spec = jax.sharding.PartitionSpec(None, mesh_lib.MESH_AXES[3] if kind not in ("xla", "blockwise")
                                    else None)
  arg = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=jax.sharding.NamedSharding(mesh, spec))
  loss = lambda q, k, v: jnp.sum(fn(q, k, v))
  rules = mesh_lib.logical_rules(mesh_lib.DEFAULT_LOGICAL_RULES)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(arg, arg, arg).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def attention_part(lengths: list[int], heads: int = 8, head_dim: int = 64) -> None:
  for kind in ("xla", "blockwise", "ulysses", "ring"):
    sizes = [attention_temp_bytes(kind, n, heads, head_dim) for n in lengths]
    slope = np.polyfit(np.log(lengths), np.log(sizes), 1)[0]
    cells = ", ".join(f"{n}: {s / 2**20:.1f} MiB" for n, s in zip(lengths, sizes))
    where = "1 device" if kind in ("xla", "blockwise") else "per device, context=8"
    print(f"attention {kind} ({where}): {cells}; log-log slope {slope:.2f}")


def expected_context_bytes(strategy: str, tokens: int, hidden: int, depth: int, size: int) -> int:
  """What one train step of context-parallel self-attention should move per device (float32):
  Ulysses all-to-alls q, k, v and the output forward and their gradients backward, each the local
  (tokens / size) x hidden activation; ring passes k, v `size` times forward and k, v, dk, dv
  `size` times backward."""
  local = tokens // size * hidden * 4
  per_layer = 8 * local if strategy == "ulysses" else (2 + 4) * size * local
  return depth * per_layer


def collectives_part(variant: str, context_variant: str, frames: int, size: int) -> None:
  for remat in ("none", "full"):  # with remat the backward pass must gather the weights again
    config = dit_config(variant, 9, 64, 8, {"fsdp": 8})
    config.dit.remat = remat
    report = step_report(config)
    params = report["state_bytes"]["params"]["global"]
    moved = report["collective_bytes_per_device"]
    total = sum(moved.values())
    print(f"collectives (fsdp=8, {variant}, remat {remat}): " + ", ".join(
        f"{k} {v / params:.2f}x" for k, v in moved.items() if v) +
          f" of the parameter bytes; total {total / params:.2f}x (expected about 3x)")
  tokens = (1 + (frames - 1) // 4) * (size // 16) ** 2
  variant = context_variant
  for strategy in ("ulysses", "ring"):
    config = dit_config(variant, frames, size, 1, {"context": 8}, strategy)
    report = step_report(config)
    moved = report["collective_bytes_per_device"]
    kind = "all-to-all" if strategy == "ulysses" else "collective-permute"
    shape = dit_lib.VARIANTS[variant]
    expected = expected_context_bytes(strategy, tokens, shape["hidden"], shape["depth"], 8)
    print(f"collectives (context=8 {strategy}, {variant}, {tokens} tokens): {kind} "
          f"{moved[kind] / 2**20:.1f} MiB against {expected / 2**20:.1f} MiB expected "
          f"({moved[kind] / expected:.2f}x); others: " + ", ".join(
              f"{k} {v / 2**20:.1f} MiB" for k, v in moved.items() if v and k != kind))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--variant", default="S/2", help="DiT for the FSDP figures")
  # Ulysses over 8 devices needs heads divisible by 8: L/2 has 16.
  parser.add_argument("--context_variant", default="L/2", help="DiT for the context figures")
  parser.add_argument("--frames", type=int, default=129, help="long clip for context parallelism")
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--lengths", default="2048,4096,8192,16384")
  parser.add_argument("--parts", default="fsdp,context,attention,collectives")
  args = parser.parse_args()
  if len(jax.devices()) < 8:
    sys.exit("needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
  print(f"devices: {jax.devices()[:1]} x {len(jax.devices())}")
  parts = args.parts.split(",")
  if "fsdp" in parts:
    fsdp_part(args.variant)
  if "context" in parts:
    context_part(args.context_variant, args.frames, args.size)
  if "attention" in parts:
    attention_part([int(n) for n in args.lengths.split(",")])
  if "collectives" in parts:
    collectives_part(args.variant, args.context_variant, args.frames, args.size)


if __name__ == "__main__":
  main()
