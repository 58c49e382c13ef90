"""Pre-encoded training latents: the frozen VAE encodes each training clip once, not once per step.

A DiT trained on a frozen VAE spends much of every step rendering (or decoding) pixels and pushing
them through the VAE encoder: a third of the demo's step. With `data.latent_cache = N`, a DiT run
encodes the first N clips of its training source once, keeps them in its workdir, and trains on
those latents with fresh noise and times at every visit (the way MaxDiffusion and Open-Sora train
on pre-extracted latents). Rendering and encoding then cost N clips instead of steps x batch.

Each process encodes, stores and reads only its own contiguous share of the N clips, so the cache
scales out with the processes and needs no further sharding. A stored cache is reused when its
fingerprint (source, sizes, VAE checkpoint, share) matches, and rebuilt otherwise; it is written to
a temporary name and renamed, so an interrupted build never leaves a half-written cache behind.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable

import jax
import numpy as np

CACHE_DIR = "latent_cache"


def process_share(num_examples: int, process_index: int, process_count: int) -> range:
  """Source indices process `process_index` of `process_count` encodes: a contiguous slice."""
  start = num_examples * process_index // process_count
  return range(start, num_examples * (process_index + 1) // process_count)


class LatentCache:
  """Random-access source of {"latents": (T, h, w, c) float32, "caption": str} (grain-compatible),
  and "anchor_latents" (1, h, w, c) when the source's clips carry an anchor frame."""

  process_local = True  # holds this process's share only: the loader must not shard it again

  def __init__(self, latents: np.ndarray, captions: np.ndarray,
               anchors: np.ndarray | None = None):
    if len(latents) != len(captions):
      raise ValueError(f"{len(latents)} latents but {len(captions)} captions")
    if anchors is not None and len(anchors) != len(latents):
      raise ValueError(f"{len(latents)} latents but {len(anchors)} anchor latents")
    self.latents, self.captions, self.anchors = latents, captions, anchors

  def __len__(self) -> int:
    return len(self.latents)

  def __getitem__(self, index: int) -> dict:
    example = {"latents": self.latents[index], "caption": str(self.captions[index])}
    if self.anchors is not None:
      example["anchor_latents"] = self.anchors[index]
    return example

  def __repr__(self) -> str:
    return f"LatentCache(clips={len(self)}, latent_shape={self.latents.shape[1:]})"


def encode_source(encode_batch: Callable[[np.ndarray], np.ndarray], source, indices: range,
                  batch_size: int) -> LatentCache:
  """Encodes `source[i]["video"]` (and `source[i]["anchor"]`, where the source has anchor frames)
  for i in `indices`, `batch_size` clips per encoder call.

  The last batch is padded to full size (one compiled shape) and the padding dropped.
  """
  def encode(chunk, name):
    videos = np.stack([example[name] for example in chunk])
    pad = batch_size - len(chunk)
    if pad:
      videos = np.concatenate([videos, np.repeat(videos[-1:], pad, axis=0)])
    return np.asarray(encode_batch(videos))[: len(chunk)]

  latents, anchors, captions = [], [], []
  for start in range(indices.start, indices.stop, batch_size):
    chunk = [source[i] for i in range(start, min(start + batch_size, indices.stop))]
    latents.append(encode(chunk, "video"))
    if "anchor" in chunk[0]:
      anchors.append(encode(chunk, "anchor"))
    captions += [example["caption"] for example in chunk]
  if not latents:
    raise ValueError(f"process share {indices} of the latent cache is empty; "
                     "set data.latent_cache to at least the number of batch shares (processes)")
  return LatentCache(np.concatenate(latents).astype(np.float32), np.asarray(captions),
                     np.concatenate(anchors).astype(np.float32) if anchors else None)


def _path(workdir: str, name: str = "") -> str:
  prefix = f"{name}_" if name else ""
  return os.path.join(workdir, CACHE_DIR,
                      f"{prefix}process_{jax.process_index()}_of_{jax.process_count()}.npz")


def _load(path: str, fingerprint: str) -> LatentCache | None:
  if not os.path.isfile(path):
    return None
  with np.load(path) as stored:
    if str(stored["fingerprint"]) != fingerprint:
      return None
    return LatentCache(stored["latents"], stored["captions"],
                       stored["anchors"] if "anchors" in stored else None)


def load_or_build(workdir: str, source, num_examples: int,
                  encode_batch: Callable[[np.ndarray], np.ndarray], fingerprint: dict,
                  batch_size: int = 64, name: str = "",
                  share: tuple[int, int] | None = None) -> LatentCache:
  """This process's share of the cache: loaded from `workdir` if its fingerprint matches, else
  encoded now and saved there. `fingerprint` (JSON-able) names everything the latents depend on;
  `name` tells apart the caches of one run's buckets; `share` (index, count) is the process's
  share of the batch (data/pipeline.py `batch_share`; default: its process index and count)."""
  if num_examples > len(source):
    raise ValueError(f"data.latent_cache={num_examples} exceeds the {len(source)} clips of the "
                     f"training source; use at most {len(source)}")
  index, count = share or (jax.process_index(), jax.process_count())
  share = process_share(num_examples, index, count)
  fingerprint = json.dumps(dict(fingerprint, num_examples=num_examples,
                                share=[share.start, share.stop]), sort_keys=True)
  path = _path(workdir, name)
  cache = _load(path, fingerprint)
  if cache is not None:
    return cache
  cache = encode_source(encode_batch, source, share, batch_size)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temporary = path[: -len(".npz")] + ".tmp.npz"  # np.savez adds .npz to names without it
  anchors = {} if cache.anchors is None else {"anchors": cache.anchors}
  np.savez(temporary, latents=cache.latents, captions=cache.captions,
           fingerprint=np.asarray(fingerprint), **anchors)
  os.replace(temporary, path)
  return cache
