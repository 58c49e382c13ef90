"""Prepared video datasets: ArrayRecord shards of captioned clips, written by `sorajax.prepare`.

A dataset is a folder:

  dataset.json              format, version, shard and record counts (written last: a folder
                            without it is still being prepared)
  shard-00000.array_record  one msgpack record per clip (`encode_record`)
  shard-00000.json          the shard's record metadata and the inputs it skipped; written after
                            the shard is renamed into place, so it marks the shard as done
  skipped.jsonl             every skipped input with its reason

A record holds the clip either as the source file's bytes ("file": exact, small, decoded on every
read) or as decoded uint8 frames ("raw": large, no decoding), plus its caption, frame rate, size
and the (start, end) frames of the span the captions file asked for. The metadata in the
sidecars lets a reader pick clips by size and duration (bucketing) without opening the shards.
"""
from __future__ import annotations

import io
import json
import os
import uuid

import msgpack
import numpy as np

from sorajax.data import video_io

FORMAT = "sorajax.video_records"
VERSION = 1
STORES = ("file", "raw")
DATASET_FILE = "dataset.json"
SKIPPED_FILE = "skipped.jsonl"
# Per-record metadata kept in the shard sidecars (and in every record).
META_FIELDS = ("frames", "height", "width", "fps", "start", "end")


def shard_name(index: int) -> str:
  return f"shard-{index:05d}"


def temporary_suffix() -> str:
  """A name part no other writer uses: hosts of one job often share process ids."""
  return f"tmp-{uuid.uuid4().hex}"


def finished_shard(base: str, fingerprint: str) -> dict | None:
  """The sidecar of a shard an earlier run wrote from the same inputs (None if there is none); a
  shard written from others is refused rather than mixed in."""
  if not os.path.isfile(base + ".json"):
    return None
  with open(base + ".json") as f:
    done = json.load(f)
  if done.get("fingerprint") != fingerprint:
    raise ValueError(f"{base}.json was written from other inputs, settings or VAE; write into a "
                     "new --out folder")
  return done


def encode_record(caption: str, store: str, data: bytes, meta: dict, path: str = "") -> bytes:
  if store not in STORES:
    raise ValueError(f"store={store!r}; valid: {', '.join(STORES)}")
  record = {"format": FORMAT, "version": VERSION, "caption": caption, "store": store,
            "path": path, "data": data}
  record.update({k: meta[k] for k in META_FIELDS})
  return msgpack.packb(record, use_bin_type=True)


def decode_record(raw: bytes, where: str = "a record") -> dict:
  record = msgpack.unpackb(raw, raw=False)
  if not isinstance(record, dict) or record.get("format") != FORMAT:
    raise ValueError(f"{where} is not a sorajax video record; prepare the data with "
                     "python -m sorajax.prepare")
  check_version(record.get("version"), where)
  return record


def check_version(version, where: str) -> None:
  if version != VERSION:
    raise ValueError(f"{where} is format version {version}, this sorajax reads version "
                     f"{VERSION}; prepare the data again with python -m sorajax.prepare")


def record_frames(record: dict, wanted: np.ndarray | None = None) -> np.ndarray:
  """uint8 (T, H, W, 3) frames of a record's span, or only the span-relative frame indices
  `wanted` (sorted); decoding stops after the last wanted frame. Besides the stored kinds, a
  record of store "array" holds its frames as an array in "data" (sources that decode for us)."""
  start, end = record["start"], record["end"]
  picks = np.arange(end - start) if wanted is None else np.asarray(wanted)  # within the span
  if record["store"] == "file":
    return decode_bytes(record["data"], record.get("path", ""), picks + start)
  if record["store"] == "array":  # decoded frames held in memory (the TFDS source)
    video = np.asarray(record["data"])[start:end]
  else:  # "raw": the span's frames, stored as they are
    video = np.frombuffer(record["data"], np.uint8).reshape(
        end - start, record["height"], record["width"], 3)
  return video if wanted is None else video[picks]


def decode_bytes(data: bytes, name: str, indices: np.ndarray) -> np.ndarray:
  """Frames `indices` (sorted, absolute) of an encoded image or video file held in memory."""
  if name.lower().endswith(video_io.IMAGE_EXTENSIONS):
    from PIL import Image  # pylint: disable=import-outside-toplevel
    with Image.open(io.BytesIO(data)) as image:
      frame = np.asarray(image.convert("RGB"))
    return np.repeat(frame[None], len(indices), axis=0)
  import av  # pylint: disable=import-outside-toplevel
  places: dict[int, list[int]] = {}  # an index may repeat (frame-rate upsampling)
  for n, i in enumerate(indices):
    places.setdefault(int(i), []).append(n)
  out = [None] * len(indices)
  last = max(places) if places else -1
  with av.open(io.BytesIO(data)) as container:
    for index, frame in enumerate(container.decode(video=0)):
      if index in places:
        array = video_io.frame_to_rgb(frame)
        for n in places[index]:
          out[n] = array
      if index >= last:
        break
  if any(frame is None for frame in out):
    raise ValueError(f"{name or 'a record'} decodes to fewer frames than its metadata says")
  return np.stack(out)


class Dataset:
  """A prepared dataset opened for reading: `meta` (per-record arrays of META_FIELDS and the
  shard each record is in) and random access to its records (a grain-compatible source)."""

  def __init__(self, directory: str):
    self.directory = directory
    if not os.path.isdir(directory):
      raise ValueError(f"dataset folder {directory!r} does not exist; prepare one with "
                       "python -m sorajax.prepare")
    info_path = os.path.join(directory, DATASET_FILE)
    if not os.path.isfile(info_path):
      raise ValueError(f"{directory!r} has no {DATASET_FILE}: not a prepared dataset, or "
                       "python -m sorajax.prepare has not finished it (run it again to resume)")
    with open(info_path) as f:
      self.info = json.load(f)
    if self.info.get("format") != FORMAT:
      raise ValueError(f"{info_path} is not a sorajax video dataset; prepare the data with "
                       "python -m sorajax.prepare")
    check_version(self.info.get("version"), info_path)
    paths, columns = [], {k: [] for k in META_FIELDS}
    for index in range(self.info["shards"]):
      sidecar = os.path.join(directory, shard_name(index) + ".json")
      with open(sidecar) as f:
        shard = json.load(f)
      check_version(shard.get("version"), sidecar)
      if shard["records"]:
        paths.append(os.path.join(directory, shard_name(index) + ".array_record"))
      for record in shard["records"]:
        for k in META_FIELDS:
          columns[k].append(record[k])
    self.fingerprint = self.info.get("fingerprint", "")  # what the shards were made from
    self.meta = {k: np.asarray(v) for k, v in columns.items()}
    self.meta["fps"] = self.meta["fps"].astype(np.float64)
    self._paths = paths
    self._source = None

  def _records(self):
    if self._source is None:  # opened lazily: grain workers open their own readers
      import grain.python as grain  # pylint: disable=import-outside-toplevel
      self._source = grain.ArrayRecordDataSource(self._paths)
    return self._source

  def __len__(self) -> int:
    return len(self.meta["frames"])

  def __getitem__(self, index: int) -> dict:
    return decode_record(self._records()[int(index)], f"record {index} of {self.directory}")

  def __getstate__(self):  # picklable for grain worker processes
    state = dict(self.__dict__)
    state["_source"] = None
    return state

