r"""Ahead-of-time compile of the training step for a mesh you do not have: per-device memory,
FLOPs and collective traffic, read from the compiled program. Nothing runs and no weights load.

  # a TPU topology (needs libtpu: `make aot-venv`, then run with .venv-aot/bin/python)
  python -m sorajax.aot --config configs/shapes/dit.py:variant=XL/2,frames=33,size=256,batch=64 \
      --vae_config configs/shapes/vae.py --topology v5p:4x4x4 --config.mesh.fsdp=-1 \
      --config.mesh.data=1 --out aot_v5p64.json
  # this machine's fake CPU devices
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m sorajax.aot --topology cpu:8 \
      --config configs/shapes/dit.py:variant=B/2 --vae_config configs/shapes/vae.py

A DiT step is compiled on latent batches (what large runs train on; data.latent_cache); the VAE
is only needed for its shapes (`--vae_config`, a VAE config file, or the config.json of a VAE run).
"""
from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from sorajax import configuration
from sorajax.data import pipeline
from sorajax.models import text_encoders
from sorajax.parallel import collectives
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import objectives
from sorajax.training import state as state_lib
from sorajax.training import step as step_lib
from sorajax.training import vae_objective


def topology_devices(name: str) -> list:
  """The devices of `name`: this process's CPU devices, or an abstract TPU slice."""
  platform, _, shape = name.partition(":")
  if platform == "cpu":
    count = int(shape or len(jax.devices("cpu")))
    devices = jax.devices("cpu")
    if len(devices) < count:
      raise configuration.ConfigError(
          f"--topology={name} needs {count} CPU devices but this process has {len(devices)}; set "
          f"XLA_FLAGS=--xla_force_host_platform_device_count={count}")
    return devices[:count]
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    return list(topologies.get_topology_desc(name, "tpu").devices)
  except Exception as e:  # no libtpu, or a name it does not know
    raise configuration.ConfigError(
        f"--topology={name} could not be described ({str(e).splitlines()[0][:200]}); TPU "
        "topologies such as v5p:4x4x4 need libtpu (make aot-venv), or use cpu:N") from e


def load_vae_config(spec: str) -> ml_collections.ConfigDict:
  if spec.endswith(".json"):
    with open(spec) as f:
      return ml_collections.ConfigDict(json.load(f))
  return configuration.load_config_file(spec)


def abstract_vae(vae_config, mesh):
  """(VAE config, abstract VAE params replicated on `mesh`, step 0): the DiT's frozen VAE as
  shapes, replicated as the trainer places it."""
  vae = vae_objective.VAEObjective(vae_config, mesh)
  params = jax.eval_shape(lambda: vae.model_params(vae.init_params(jax.random.key(0))))
  params = mesh_lib.strip_boxes(params)
  replicated = mesh_lib.replicated(mesh)
  return vae_config, jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), params), 0


def abstract_text(config, mesh):
  """A frozen text encoder's weights as shapes replicated on `mesh` (None for the learned encoder,
  whose weights train with the DiT). Its config.json and tokenizer.json must be at hand."""
  kind = config.text.get("encoder", "learned")
  if kind == "learned":
    return None
  try:
    encoder = text_encoders.pretrained(kind, config.text.get("weights", ""),
                                       config.data.text_max_length)
  except ValueError as e:
    raise configuration.ConfigError(str(e)) from e
  ids = jnp.zeros((1, 2), jnp.int32)
  params = jax.eval_shape(lambda: encoder.module.init(jax.random.key(0), ids, ids > -1))["params"]
  replicated = mesh_lib.replicated(mesh)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                      mesh_lib.strip_boxes(params))


def _cached_prompts(objective, config) -> bool:
  """Whether training batches carry cached text embeddings instead of tokens (a frozen encoder
  with a latent cache or precomputed latents; dit_objective.DiTObjective.prepare)."""
  return (getattr(objective, "text_encoder", None) is not None
          and (config.data.get("latent_records", "") or config.data.get("latent_cache", 0) > 0))


def _abstract_batch(objective, config, mesh) -> dict:
  d, size = config.data, config.train.batch_size
  def spec(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=mesh_lib.batch_sharding(mesh, len(shape)))
  if config.objective == "vae":
    return {"video": spec((size, d.frames, d.height, d.width, 3), jnp.uint8)}
  batch = {"latents": spec((size,) + objective.latent_shape(d.frames, d.height, d.width),
                           jnp.float32),
           "token_mask": spec((size, d.text_max_length), jnp.bool_)}
  if pipeline.wants_anchor(config, d.frames):
    batch["anchor_latents"] = spec((size, 1) + objective.latent_shape(1, d.height, d.width)[1:],
                                   jnp.float32)
  if _cached_prompts(objective, config):
    batch["text_embedding"] = spec((size, d.text_max_length, objective.text_width), jnp.float32)
  else:
    batch["tokens"] = spec((size, d.text_max_length), jnp.int32)
  return batch


def _abstract_frozen(objective, config, mesh):
  replicated = mesh_lib.replicated(mesh)
  if config.objective == "vae":
    return None
  channels = objective.latent_channels
  stat = jax.ShapeDtypeStruct((channels,), jnp.float32, sharding=replicated)
  frozen = {"vae": objective.frozen["vae"], "latent_mean": stat, "latent_std": stat}
  if objective.text_encoder is not None:
    frozen["null_context"] = jax.ShapeDtypeStruct(
        (1, config.data.text_max_length, objective.text_width), jnp.float32, sharding=replicated)
    if not _cached_prompts(objective, config):
      frozen["text"] = objective.frozen["text"]
  return frozen


def compile_train_step(config, mesh, vae_config=None):
  """(the compiled training step for `config` on `mesh`, its objective, the abstract train
  state); all inputs abstract."""
  kwargs = {}
  if config.objective == "dit":
    if vae_config is None:
      raise configuration.ConfigError("a DiT step needs the VAE's shapes: pass --vae_config "
                                      "(a VAE config file or a VAE run's config.json)")
    kwargs["vae"] = abstract_vae(vae_config, mesh)
    kwargs["text_params"] = abstract_text(config, mesh)
  objective = objectives.build_objective(config, mesh, **kwargs)
  rules = mesh_lib.logical_rules(config.logical_rules)
  optimizer = state_lib.make_optimizer(config.train)
  target, shardings = state_lib.abstract_state(objective.init_params, optimizer,
                                               config.train.ema_decay, mesh, rules)
  batch = _abstract_batch(objective, config, mesh)
  frozen = _abstract_frozen(objective, config, mesh)
  key_type = jax.eval_shape(lambda: jax.random.key(0)).dtype
  rng = jax.ShapeDtypeStruct((), key_type, sharding=mesh_lib.replicated(mesh))
  step = step_lib.jit_train_step(objective, optimizer, config.train.ema_decay, shardings, mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    compiled = step.lower(target, batch, frozen, rng).compile()
  return compiled, objective, target


def state_bytes(target) -> dict[str, int]:
  """Bytes of params, optimizer state and EMA: whole (global) and on the most loaded device."""
  out = {}
  for name in ("params", "opt_state", "ema_params"):
    leaves = [a for a in jax.tree.leaves(getattr(target, name)) if hasattr(a, "shape")]
    whole = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in leaves)
    per_device = sum(int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize
                     for a in leaves)
    out[name] = {"global": whole, "per_device": per_device}
  return out


def report(compiled, objective, target, config, mesh) -> dict:
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  per_device = {name: int(getattr(memory, f"{name}_size_in_bytes"))
                for name in ("argument", "output", "alias", "temp", "generated_code")}
  per_device["peak_estimate"] = (per_device["argument"] + per_device["output"]
                                 - per_device["alias"] + per_device["temp"])
  buckets = getattr(objective, "buckets", None)
  analytic = objective.train_flops(buckets[0]) if buckets else 0
  return {
      "topology": str(mesh.devices.flat[0].device_kind), "devices": int(mesh.size),
      "mesh": {name: int(size) for name, size in mesh.shape.items()},
      "config": {"objective": config.objective, "batch": config.train.batch_size,
                 "clip": [config.data.frames, config.data.height, config.data.width]},
      "memory_per_device_bytes": per_device,
      "state_bytes": state_bytes(target),
      # XLA's cost analysis counts a scanned block stack's body once, not once per layer.
      "flops_per_device_compiled": float(cost.get("flops", float("nan"))),
      "train_flops_analytic_per_device": analytic / mesh.size,
      "collective_bytes_per_device": collectives.collective_bytes(compiled.as_text()),
  }


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise configuration.ConfigError("pass --config <file.py[:arg]>")
  config = _CONFIG.value
  devices = topology_devices(_TOPOLOGY.value)
  try:
    mesh = mesh_lib.make_mesh(config.mesh.to_dict(), devices=devices,
                              dcn_shape=config.get("dcn_mesh", {}))
  except ValueError as e:
    raise configuration.ConfigError(str(e)) from e
  vae_config = load_vae_config(_VAE_CONFIG.value) if _VAE_CONFIG.value else None
  compiled, objective, target = compile_train_step(config, mesh, vae_config)
  result = report(compiled, objective, target, config, mesh)
  gib = lambda b: f"{b / 2**30:.2f} GiB"
  memory = result["memory_per_device_bytes"]
  print(f"{result['devices']} x {result['topology']}, mesh {result['mesh']}")
  print(f"per device: peak ~{gib(memory['peak_estimate'])} (arguments {gib(memory['argument'])}, "
        f"temporaries {gib(memory['temp'])}); training FLOPs per device "
        f"{result['train_flops_analytic_per_device']:.3g} (analytic)")
  moved = result["collective_bytes_per_device"]
  print("collectives per device per step: "
        + ", ".join(f"{kind} {gib(size)}" for kind, size in moved.items() if size))
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    configuration.write_json_atomic(_OUT.value, result)


if __name__ == "__main__":
  # Defined only when run as a program: the library functions above are imported beside the
  # trainer, whose --config flag this one would clash with.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).",
                                            lock_config=True)
  _VAE_CONFIG = flags.DEFINE_string(
      "vae_config", None, "DiT only: a VAE config file (path[:arg]) or a VAE run's config.json.")
  _TOPOLOGY = flags.DEFINE_string(
      "topology", "cpu:8", "cpu:N (fake CPU devices of this machine) or a TPU topology such as "
      "v5p:4x4x4, v5e:16x16, v4:2x2x2 (needs libtpu).")
  _OUT = flags.DEFINE_string("out", None, "Write the report as JSON here too.")
  configuration.run(main)
