"""Grain input pipeline: random-access source -> shuffle -> encode -> batch -> global jax.Arrays.

Each process reads its own shard of the index space (ShardByJaxProcess) and builds a per-process
batch; `GlobalBatches` stitches those into arrays sharded over the mesh's data-parallel axes.
The grain iterator's state is checkpointed with the model, so a resumed run sees the same stream.
"""
from __future__ import annotations

from typing import Any

import grain.python as grain
import jax
import ml_collections
import numpy as np

from sorajax.configuration import ConfigError
from sorajax.data import shapes
from sorajax.parallel import mesh as mesh_lib

SOURCES = ("shapes",)


def make_source(data: ml_collections.ConfigDict, split: str, seed: int):
  """The random-access source named by `data.source`."""
  if data.source == "shapes":
    return shapes.ShapesWorld(
        frames=data.frames, height=data.height, width=data.width, split=split,
        min_objects=data.min_objects, max_objects=data.max_objects, seed=seed)
  raise ConfigError(f"data.source={data.source!r} is unknown; valid: {', '.join(SOURCES)}")


class EncodeExample(grain.MapTransform):
  """Keeps the arrays a train step needs: the uint8 video (or pre-encoded latents) and, given a
  tokenizer, caption tokens."""

  def __init__(self, tokenizer=None):
    self._tokenizer = tokenizer

  def map(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {name: example[name] for name in ("video", "latents") if name in example}
    if self._tokenizer is not None:
      out["tokens"], out["token_mask"] = self._tokenizer.encode(example["caption"])
    return out


def per_process_batch_size(global_batch_size: int, mesh) -> int:
  data_parallel = mesh_lib.data_parallel_size(mesh)
  if global_batch_size % data_parallel:
    raise ConfigError(
        f"train.batch_size={global_batch_size} does not divide over {data_parallel} data-parallel "
        f"devices; use a multiple of {data_parallel}")
  if global_batch_size % jax.process_count():
    raise ConfigError(f"train.batch_size={global_batch_size} does not divide over "
                      f"{jax.process_count()} processes")
  return global_batch_size // jax.process_count()


def make_loader(source, *, batch_size: int, seed: int, tokenizer=None, shuffle: bool = True,
                num_epochs: int | None = None, worker_count: int = 0,
                process_local: bool = False) -> grain.DataLoader:
  """A grain DataLoader over this process's shard; `batch_size` is per process.

  `process_local`: the source already holds only this process's examples (a latent cache).
  """
  shard = grain.NoSharding() if process_local else grain.ShardByJaxProcess(drop_remainder=True)
  sampler = grain.IndexSampler(
      num_records=len(source), shard_options=shard,
      shuffle=shuffle, num_epochs=num_epochs, seed=seed)
  operations = [EncodeExample(tokenizer), grain.Batch(batch_size, drop_remainder=True)]
  return grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                          worker_count=worker_count)


class GlobalBatches:
  """Iterates global batches: dicts of jax.Arrays whose batch dimension spans the data axes.

  `iterator` is the grain iterator underneath, the thing checkpoints save and restore.
  """

  def __init__(self, loader: grain.DataLoader, mesh):
    self.iterator = iter(loader)
    self._mesh = mesh

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, jax.Array]:
    local = next(self.iterator)
    return {name: jax.make_array_from_process_local_data(
                mesh_lib.batch_sharding(self._mesh, value.ndim), value)
            for name, value in local.items()}


def train_batches(config: ml_collections.ConfigDict, mesh, tokenizer=None,
                  local_source=None) -> GlobalBatches:
  """The training stream the trainer consumes: from `local_source` (this process's examples, e.g.
  a latent cache) if given, else from the configured source sharded over processes."""
  source = local_source if local_source is not None else make_source(config.data, "train",
                                                                      config.seed)
  loader = make_loader(source, batch_size=per_process_batch_size(config.train.batch_size, mesh),
                       seed=config.seed, tokenizer=tokenizer,
                       worker_count=config.data.worker_count,
                       process_local=local_source is not None)
  return GlobalBatches(loader, mesh)
