"""Training clips from a prepared dataset (data/records.py): temporal sampling, resize and crop to a
bucket's size, and the assignment of every clip to a bucket by aspect ratio and duration.

Temporal sampling takes every `stride`-th source frame, or, with `fps` > 0, the frames nearest to a
steady `fps` whatever each file's own rate. Each long record gives one example per stretch of it
whose window start is drawn from (seed, example), so an example is the same clip every time it
comes round: a resumed run sees the same batches (ClipSource).

Bucketing: each clip trains in the video bucket (frames > 1) whose aspect ratio is nearest its own
among those it is long enough for; ties go to the longer, then larger bucket. An image bucket (one
frame) takes a frame of every clip of its nearest aspect ratio, so image steps see the whole data.
A clip is center-cropped to its bucket's aspect ratio and resized; the crop is what is lost, and
nearest-aspect assignment keeps it within half a step between neighbouring buckets' ratios.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging

import numpy as np

from sorajax.data import buckets as buckets_lib
from sorajax.data import records, video_io


@dataclasses.dataclass(frozen=True)
class Sampling:
  stride: int = 1
  fps: float = 0.0

  def __post_init__(self):
    if self.stride < 1 or self.fps < 0:
      raise ValueError(f"data.frame_stride={self.stride} must be >= 1 and data.fps={self.fps} "
                       ">= 0 (0: use the stride)")

  def step(self, source_fps) -> np.ndarray:
    """Source frames per sampled frame (per clip, for arrays of rates); a rate of 0 (unknown)
    takes the stride."""
    source_fps = np.asarray(source_fps, np.float64)
    return np.where((self.fps > 0) & (source_fps > 0), source_fps / max(self.fps, 1e-9),
                    float(self.stride))

  def span(self, frames: int, source_fps) -> np.ndarray:
    """Source frames a clip of `frames` sampled frames covers."""
    return np.floor((frames - 1) * self.step(source_fps)).astype(int) + 1

  def indices(self, start: int, frames: int, source_fps: float) -> np.ndarray:
    return start + np.floor(np.arange(frames) * self.step(source_fps)).astype(int)


def assign_buckets(meta: dict[str, np.ndarray], buckets: list[buckets_lib.Bucket],
                   sampling: Sampling) -> list[np.ndarray]:
  """Record indices per bucket (see the module docstring); a record too short for every video
  bucket trains only in image buckets."""
  log_aspect = np.log(meta["width"] / meta["height"])
  bucket_aspect = np.log(np.asarray([b.width / b.height for b in buckets]))
  distance = np.abs(log_aspect[:, None] - bucket_aspect[None, :])  # (records, buckets)
  fits = np.stack([sampling.span(b.frames, meta["fps"]) <= meta["frames"] for b in buckets], 1)
  video = np.asarray([b.frames > 1 for b in buckets])
  # Nearest aspect first (to 1e-6 in log ratio), then more frames, then more pixels.
  preference = np.lexsort(([-b.height * b.width for b in buckets], [-b.frames for b in buckets]))
  rank = np.empty(len(buckets), np.int64)
  rank[preference] = np.arange(len(buckets))
  score = (np.round(distance * 1e6).astype(np.int64) * len(buckets) + rank).astype(np.float64)
  members = [[] for _ in buckets]
  video_score = np.where(fits & video, score, np.inf)
  best_video = np.argmin(video_score, axis=1)
  for record in np.flatnonzero(np.isfinite(video_score.min(axis=1))):
    members[best_video[record]].append(record)
  if (~video).any():
    image_score = np.where(~video, score, np.inf)
    for record, bucket in enumerate(np.argmin(image_score, axis=1)):
      members[bucket].append(record)
  return [np.asarray(m, np.int64) for m in members]


class ClipSource:
  """Random-access source of {"video": uint8 (frames, H, W, 3), "caption": str}: windows of the
  records `indices` of `dataset`, each sampled and fitted to (frames, height, width).

  A record long enough for several windows gives that many examples, one per stretch of the
  record, each placed at random inside its stretch by (seed, example): a minute of video trains
  on a minute, not on one window of it, and an example is the same clip every time it comes
  round (exact resume). An image bucket (one frame) takes one frame per record, anywhere in it.
  A record that fails to decode is logged and the next example is read instead.
  """

  def __init__(self, dataset: records.Dataset, indices: np.ndarray, size: tuple[int, int, int],
               sampling: Sampling, seed: int):
    self.dataset, self.size, self.sampling, self.seed = dataset, size, sampling, seed
    indices = np.asarray(indices, np.int64)
    spans = sampling.span(size[0], dataset.meta["fps"][indices])
    windows = (np.maximum(1, dataset.meta["frames"][indices] // spans) if size[0] > 1
               else np.ones(len(indices), np.int64))
    self.indices = np.repeat(indices, windows)  # the record of each example
    self.stretches = np.repeat(windows, windows)  # how many stretches its record is cut into
    self.stretch = np.arange(len(self.indices)) - np.repeat(np.cumsum(windows) - windows, windows)

  def __len__(self) -> int:
    return len(self.indices)

  @functools.cached_property
  def fingerprint(self) -> str:
    """Names the examples: the dataset's contents, the records, size, sampling and seed."""
    identity = [getattr(self.dataset, "fingerprint", self.dataset.directory), list(self.size),
                dataclasses.astuple(self.sampling), self.seed,
                hashlib.sha256(self.indices.tobytes()).hexdigest()]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()

  def __getitem__(self, index: int) -> dict:
    for attempt in range(min(len(self), 8)):
      example = (int(index) + attempt) % len(self)
      try:
        return self._clip(example)
      except ValueError as e:
        logging.warning("skipping example %d (record %d of %s): %s", example,
                        self.indices[example], self.dataset.directory, e)
    raise ValueError(f"examples {index} to {index + 7} of {self.dataset.directory} all failed to "
                     "decode; check the dataset (python -m sorajax.prepare reports bad inputs)")

  def _clip(self, index: int) -> dict:
    frames, height, width = self.size
    record = self.dataset[self.indices[index]]
    available = record["end"] - record["start"]
    span = int(self.sampling.span(frames, record["fps"]))
    stretch = available // self.stretches[index]  # >= span
    first = self.stretch[index] * stretch
    start = first + int(np.random.default_rng((self.seed, index)).integers(0, stretch - span + 1))
    video = records.record_frames(record, self.sampling.indices(start, frames, record["fps"]))
    video, _ = video_io.fit_video(video, height, width, temporal_factor=1)
    return {"video": video, "caption": record["caption"]}

  def __repr__(self) -> str:
    return f"ClipSource({self.dataset.directory}, clips={len(self)}, size={self.size})"


def open_dataset(data, split: str = "train"):
  """The clips of `split` ("train", else held out): the prepared dataset data.records (or
  data.eval_records), or with data.source "tfds" the TFDS split data.tfds_split (or
  data.tfds_eval_split)."""
  train = split == "train"
  if data.source == "tfds":
    from sorajax.data import tfds_source  # pylint: disable=import-outside-toplevel
    if not data.get("tfds_name"):
      raise ValueError("data.source='tfds' needs data.tfds_name, a TFDS dataset prepared with "
                       "tfds build NAME --file_format=array_record")
    tfds_split = data.tfds_split if train else (data.get("tfds_eval_split") or data.tfds_split)
    return tfds_source.TfdsDataset(
        data.tfds_name, tfds_split, data.get("tfds_data_dir") or None,
        video_key=data.get("tfds_video_key", "video"),
        caption_key=data.get("tfds_caption_key", "caption"), fps=data.get("tfds_fps", 0.0))
  directory = data.records if train else (data.get("eval_records") or data.records)
  if not directory:
    raise ValueError("data.source='records' needs data.records, a folder written by "
                     "python -m sorajax.prepare")
  return records.Dataset(directory)


def from_config(data, size: tuple[int, int, int], seed: int, split: str = "train") -> ClipSource:
  """The clips of `split` (open_dataset) in the bucket of `size` among the run's buckets
  (`data.buckets`, or the one size data.frames x height x width)."""
  dataset = open_dataset(data, split)
  spec = data.get("buckets", "")
  buckets = buckets_lib.parse(spec) if spec else [
      buckets_lib.Bucket(data.frames, data.height, data.width, 1)]
  sizes = [b.size for b in buckets]
  if tuple(size) not in sizes:
    buckets.append(buckets_lib.Bucket(*size, 1))  # a size of its own (an eval or cache size)
    sizes.append(tuple(size))
  sampling = Sampling(data.get("frame_stride", 1), data.get("fps", 0.0))
  members = assign_buckets(dataset.meta, buckets, sampling)[sizes.index(tuple(size))]
  if not len(members):
    raise ValueError(f"no clip of {dataset.directory} fits the bucket {'x'.join(map(str, size))} "
                     "(too short at this frame stride or rate, or nearer other aspect ratios); "
                     "drop the bucket or lower data.frame_stride / data.fps")
  return ClipSource(dataset, members, tuple(size), sampling, seed)
