"""Pre-encoded training latents on disk: ArrayRecord shards written by `sorajax.precompute`.

A DiT trains on a frozen VAE, so its clips can be encoded once, offline and in parallel, and every
later epoch reads latents instead of decoding and encoding video (MaxDiffusion and Open-Sora train
this way too). The folder holds one set of shards per training bucket:

  dataset.json                    format, version, the VAE (workdir and step) and per bucket its
                                  clip count, shard count and latent shape (written last)
  9x32x32-shard-00000.array_record  one msgpack record per clip: caption and float32 latents
  9x32x32-shard-00000.json          the shard's fingerprint (written after the rename: done)

Latents are the VAE's posterior means before the run's normalisation, as the in-workdir latent
cache keeps them (data/latent_cache.py), so the run's latent statistics apply unchanged.
"""
from __future__ import annotations

import json
import os

import msgpack
import numpy as np

from sorajax import configuration
from sorajax.data import records

FORMAT = "sorajax.latent_records"
VERSION = 1


def shard_base(directory: str, bucket: str, index: int) -> str:
  return os.path.join(directory, f"{bucket}-{records.shard_name(index)}")


def encode_record(caption: str, latents: np.ndarray) -> bytes:
  latents = np.ascontiguousarray(latents, np.float32)
  return msgpack.packb({"format": FORMAT, "version": VERSION, "caption": caption,
                        "shape": list(latents.shape), "latents": latents.tobytes()},
                       use_bin_type=True)


def write_shard(base: str, captions, latents: np.ndarray, fingerprint: str) -> None:
  """One shard and its sidecar, each written to a temporary name and renamed."""
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=import-outside-toplevel
  temporary = f"{base}.array_record.{records.temporary_suffix()}"
  writer = ArrayRecordWriter(temporary, "group_size:1")
  try:
    for caption, value in zip(captions, latents):
      writer.write(encode_record(str(caption), value))
  finally:
    writer.close()
  os.replace(temporary, base + ".array_record")
  configuration.write_json_atomic(base + ".json", {"format": FORMAT, "version": VERSION,
                                             "fingerprint": fingerprint, "clips": len(latents)})


def shard_captions(base: str) -> list[str]:
  """The captions of a written shard, in order (for its prompt embeddings)."""
  import grain.python as grain  # pylint: disable=import-outside-toplevel
  source = grain.ArrayRecordDataSource([base + ".array_record"])
  return [msgpack.unpackb(source[i], raw=False)["caption"] for i in range(len(source))]


def read_info(directory: str) -> dict:
  path = os.path.join(directory, records.DATASET_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"{directory!r} has no {records.DATASET_FILE}: not a latent dataset, or "
                     "python -m sorajax.precompute has not finished it (run it again to resume)")
  with open(path) as f:
    info = json.load(f)
  if info.get("format") != FORMAT:
    raise ValueError(f"{path} is not a latent dataset; write one with python -m sorajax.precompute")
  records.check_version(info.get("version"), path)
  return info


class LatentRecords:
  """Random-access source of {"latents": (T, h, w, c) float32, "caption": str}: one bucket of a
  latent dataset, whole (each process reads its share through the loader)."""

  process_local = False  # every process sees all of it; the loader shards it

  def __init__(self, directory: str, bucket: str):
    info = read_info(directory)
    if bucket not in info["buckets"]:
      raise ValueError(f"{directory} holds latents of buckets {', '.join(info['buckets'])}, not "
                       f"{bucket}; precompute with this run's data.buckets")
    self.directory, self.bucket, self.info = directory, bucket, info
    entry = info["buckets"][bucket]
    self.shard_bases = [shard_base(directory, bucket, i) for i in range(entry["shards"])]
    self._paths = [base + ".array_record" for base in self.shard_bases]
    self._count = entry["clips"]
    self._source = None

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index: int) -> dict:
    if self._source is None:  # opened lazily: grain workers open their own readers
      import grain.python as grain  # pylint: disable=import-outside-toplevel
      self._source = grain.ArrayRecordDataSource(self._paths)
    record = msgpack.unpackb(self._source[int(index)], raw=False)
    where = f"record {index} of {self.directory} ({self.bucket})"
    if not isinstance(record, dict) or record.get("format") != FORMAT:
      raise ValueError(f"{where} is not a latent record; precompute again")
    records.check_version(record.get("version"), where)
    latents = np.frombuffer(record["latents"], np.float32).reshape(record["shape"])
    return {"latents": latents, "caption": record["caption"]}

  def __getstate__(self):  # picklable for grain worker processes
    state = dict(self.__dict__)
    state["_source"] = None
    return state

  def __repr__(self) -> str:
    return f"LatentRecords({self.directory}, {self.bucket}, clips={len(self)})"
