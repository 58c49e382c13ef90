"""Grain input pipeline: random-access source -> shuffle -> encode -> batch -> global jax.Arrays.

Each process reads its own shard of the index space (ShardByJaxProcess) and builds a per-process
batch; `GlobalBatches` stitches those into arrays sharded over the mesh's data-parallel axes.
The grain iterator's state is checkpointed with the model, so a resumed run sees the same stream.
With several buckets (data/buckets.py), each bucket has its own stream and iterator, and the step
number picks which one feeds each step.
"""
from __future__ import annotations

from typing import Any

import grain.python as grain
import jax
import ml_collections
import numpy as np

from sorajax.configuration import ConfigError
from sorajax.data import buckets as buckets_lib
from sorajax.data import shapes, video_source
from sorajax.parallel import mesh as mesh_lib

SOURCES = ("shapes", "records", "tfds")


def make_source(data: ml_collections.ConfigDict, split: str, seed: int,
                size: tuple[int, int, int] | None = None, anchor: bool = False):
  """The random-access source named by `data.source`, at `size` (frames, height, width) or the
  config's data.frames/height/width; with `anchor`, each example also holds an anchor frame of
  its video at another time (flow.anchor; `wants_anchor`)."""
  frames, height, width = size or (data.frames, data.height, data.width)
  if data.source == "shapes":
    train = split == "train"  # held-out clips stay those the judge's references are drawn from
    try:
      return shapes.ShapesWorld(
          frames=frames, height=height, width=width, split=split,
          min_objects=data.min_objects, max_objects=data.max_objects, seed=seed,
          rewording=data.get("caption_rewording", 0.0) if train else 0.0, anchor=anchor,
          bounce_phase=data.get("bounce_phase", "middle") if train else "middle")
    except ValueError as e:
      raise ConfigError(f"data: {e}") from e
  if anchor:
    raise ConfigError(f"flow.anchor needs an anchor frame per training clip, which only "
                      f"data.source='shapes' provides so far, not {data.source!r}; set "
                      f"--config.flow.anchor=0")
  if data.source in ("records", "tfds"):  # python -m sorajax.prepare's folder, or a TFDS dataset
    try:
      return video_source.from_config(data, (frames, height, width), seed, split)
    except ValueError as e:
      raise ConfigError(str(e)) from e
  raise ConfigError(f"data.source={data.source!r} is unknown; valid: {', '.join(SOURCES)}")


def wants_anchor(config: ml_collections.ConfigDict, frames: int) -> bool:
  """Whether training clips of `frames` video frames carry an anchor frame: a DiT run with
  flow.anchor > 0, and clips longer than the one frame an anchor would stand beside."""
  return frames > 1 and float(config.get("flow", {}).get("anchor", 0.0)) > 0


class EncodeExample(grain.MapTransform):
  """Keeps the arrays a train step needs: the uint8 video (or pre-encoded latents) and the
  caption's tokens from `tokenizer`, or its cached text embeddings from `prompt_table`
  (data/prompt_embeddings.py) with the token mask."""

  def __init__(self, tokenizer=None, prompt_table=None):
    self._tokenizer, self._prompt_table = tokenizer, prompt_table

  def map(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {name: example[name] for name in ("video", "latents", "anchor", "anchor_latents")
           if name in example}
    if self._prompt_table is not None:
      out["text_embedding"], out["token_mask"] = self._prompt_table[example["caption"]]
    elif self._tokenizer is not None:
      out["tokens"], out["token_mask"] = self._tokenizer.encode(example["caption"])
    return out


def batch_share(mesh) -> tuple[int, int]:
  """(index, count): this process reads share `index` of `count` equal shares of every batch.

  A share is the block of batch rows this process's devices hold. Processes whose devices hold
  the same rows (a tensor or context axis across hosts) read the same share, so that together
  they build one consistent global batch; with data-parallel axes only, index and count are the
  process index and count.
  """
  rows = mesh_lib.data_parallel_size(mesh)  # one row per data-parallel position
  held = mesh_lib.batch_sharding(mesh, 1).addressable_devices_indices_map((rows,)).values()
  starts = sorted({index[0].indices(rows)[0] for index in held})  # this process's rows
  first, last = starts[0], starts[-1] + 1
  if last - first != len(starts):
    raise ConfigError(f"process {jax.process_index()} holds batch rows {starts} of {rows}, not "
                      "one block; put the data and fsdp axes outermost in the device order")
  if rows % len(starts) or first % len(starts):
    raise ConfigError(f"process {jax.process_index()} holds batch rows {starts} of {rows}, not an "
                      "aligned share; put the data and fsdp axes outermost in the device order")
  return first // len(starts), rows // len(starts)


def per_process_batch_size(global_batch_size: int, mesh, what: str = "train.batch_size") -> int:
  data_parallel = mesh_lib.data_parallel_size(mesh)
  if global_batch_size % data_parallel:
    raise ConfigError(
        f"{what}={global_batch_size} does not divide over {data_parallel} data-parallel "
        f"devices; use a multiple of {data_parallel}")
  return global_batch_size // batch_share(mesh)[1]


def make_loader(source, *, batch_size: int, seed: int, tokenizer=None, prompt_table=None,
                shuffle: bool = True, num_epochs: int | None = None, worker_count: int = 0,
                share: tuple[int, int] | None = None) -> grain.DataLoader:
  """A grain DataLoader over share `share` = (index, count) of the source (see `batch_share`);
  None: the source already holds only this process's examples (a latent cache).
  `batch_size` is per process."""
  # Shares may differ by one example: the streams repeat without end, so no process waits at an
  # epoch's end, and dropping the remainder would leave the same examples unseen in every epoch.
  if share is not None and len(source) < share[1]:
    raise ConfigError(f"{source!r} holds {len(source)} examples, fewer than the {share[1]} "
                      "process shares that read it; add clips to it or drop its bucket from "
                      "data.buckets")
  shard = grain.NoSharding() if share is None else grain.ShardOptions(
      shard_index=share[0], shard_count=share[1], drop_remainder=False)
  sampler = grain.IndexSampler(
      num_records=len(source), shard_options=shard,
      shuffle=shuffle, num_epochs=num_epochs, seed=seed)
  operations = [EncodeExample(tokenizer, prompt_table),
                grain.Batch(batch_size, drop_remainder=True)]
  return grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                          worker_count=worker_count)


class GlobalBatches:
  """Iterates global batches: dicts of jax.Arrays whose batch dimension spans the data axes.

  `iterator` is the grain iterator underneath, the thing checkpoints save and restore.
  """

  def __init__(self, loader: grain.DataLoader, mesh, global_batch_size: int):
    self.iterator = iter(loader)
    self._mesh, self._size = mesh, global_batch_size

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, jax.Array]:
    local = next(self.iterator)
    return {name: jax.make_array_from_process_local_data(
                mesh_lib.batch_sharding(self._mesh, value.ndim), value,
                (self._size,) + value.shape[1:])
            for name, value in local.items()}


class BucketedBatches:
  """The training stream over several buckets: step n's batch comes from bucket
  `buckets.draw(buckets, seed, n)`. `iterators` (name -> grain iterator) is what checkpoints save;
  a resumed run calls `resume_at(step)` so the draws continue where they stopped."""

  def __init__(self, streams: list[GlobalBatches], buckets: list[buckets_lib.Bucket], seed: int):
    self.streams, self.buckets, self._seed = streams, buckets, seed
    self._step = 0
    self.last_bucket = None  # the bucket of the batch `next` returned last

  @property
  def iterators(self) -> dict:
    # The first stream keeps the name single-size runs have always saved it under.
    return {("data" if i == 0 else f"data_{b.name}"): stream.iterator
            for i, (stream, b) in enumerate(zip(self.streams, self.buckets))}

  def resume_at(self, step: int) -> None:
    self._step = step

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, jax.Array]:
    self._step += 1
    index = buckets_lib.draw(self.buckets, self._seed, self._step)
    self.last_bucket = self.buckets[index]
    return next(self.streams[index])


def train_buckets(config: ml_collections.ConfigDict) -> list[buckets_lib.Bucket]:
  try:
    return buckets_lib.from_config(config)
  except ValueError as e:
    raise ConfigError(str(e)) from e


def train_batches(config: ml_collections.ConfigDict, mesh, tokenizer=None,
                  local_sources: list | None = None, prompt_table=None) -> BucketedBatches:
  """The training stream the trainer consumes, one grain stream per bucket: from `local_sources`
  (per bucket; a latent cache holding this process's examples, or latent records that the loader
  shards over processes) if given, else from the configured source at each bucket's size,
  sharded over processes. Captions become tokens, or cached embeddings given a `prompt_table`."""
  buckets = train_buckets(config)
  streams = []
  for i, bucket in enumerate(buckets):
    local = None if local_sources is None else local_sources[i]
    source = local if local is not None else make_source(
        config.data, "train", config.seed, bucket.size, wants_anchor(config, bucket.frames))
    what = "train.batch_size" if len(buckets) == 1 else f"the batch of bucket {bucket.name}"
    loader = make_loader(source, batch_size=per_process_batch_size(bucket.batch_size, mesh, what),
                         seed=config.seed + i, tokenizer=tokenizer, prompt_table=prompt_table,
                         worker_count=config.data.worker_count,
                         share=(None if getattr(local, "process_local", False)
                                else batch_share(mesh)))
    streams.append(GlobalBatches(loader, mesh, bucket.batch_size))
  return BucketedBatches(streams, buckets, config.seed)
