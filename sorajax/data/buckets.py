"""Training buckets: several clip sizes in one run, each with its own batch size and share of steps.

Sora trains at native durations, resolutions and aspect ratios; a compiled step has one shape, so a
run lists the shapes it trains on (`data.buckets`), compiles one step per bucket, and draws the
bucket of every step from (seed, step). The draw needs no state of its own, so a resumed run draws
exactly the buckets an uninterrupted one would have.

Spec: comma-separated `FRAMESxHEIGHTxWIDTH:BATCH[@WEIGHT]`, e.g. "9x32x32:32@3, 1x32x32:64@1" (video
clips on three steps in four, one-frame images on the fourth). Weights default to 1. An empty spec
is one bucket: data.frames x data.height x data.width at train.batch_size.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

_BUCKET = re.compile(r"^(\d+)x(\d+)x(\d+):(\d+)(?:@([0-9.eE+-]+))?$")


@dataclasses.dataclass(frozen=True)
class Bucket:
  frames: int
  height: int
  width: int
  batch_size: int
  weight: float = 1.0

  @property
  def size(self) -> tuple[int, int, int]:
    return self.frames, self.height, self.width

  @property
  def name(self) -> str:
    return f"{self.frames}x{self.height}x{self.width}"


def parse(spec: str) -> list[Bucket]:
  """Buckets from a spec string; a malformed entry gets a one-line error naming the format."""
  buckets = []
  for entry in (e.strip() for e in spec.split(",")):
    match = _BUCKET.match(entry)
    if not match:
      raise ValueError(f"data.buckets entry {entry!r} is not FRAMESxHEIGHTxWIDTH:BATCH[@WEIGHT], "
                       "e.g. '9x32x32:32@3, 1x32x32:64@1'")
    frames, height, width, batch = (int(g) for g in match.groups()[:4])
    weight = float(match.group(5) or 1.0)
    if min(frames, height, width, batch) < 1 or not weight > 0:
      raise ValueError(f"data.buckets entry {entry!r} needs sizes and batch >= 1 and weight > 0")
    buckets.append(Bucket(frames, height, width, batch, weight))
  names = [b.name for b in buckets]
  if len(set(names)) != len(names):
    raise ValueError(f"data.buckets lists a size twice ({', '.join(names)}); give each size once "
                     "and set its share with @WEIGHT")
  return buckets


def from_config(config) -> list[Bucket]:
  """The run's buckets: `data.buckets` if set, else the one size of data.frames/height/width."""
  spec = config.data.get("buckets", "")
  if spec:
    return parse(spec)
  d = config.data
  return [Bucket(d.frames, d.height, d.width, config.train.batch_size)]


def draw(buckets: list[Bucket], seed: int, step: int) -> int:
  """Index of the bucket that trains step `step`: a fixed function of (seed, step)."""
  if len(buckets) == 1:
    return 0
  weights = np.asarray([b.weight for b in buckets], np.float64)
  return int(np.random.default_rng((seed, step)).choice(len(buckets), p=weights / weights.sum()))
