r"""Prepare a folder of videos and a captions file as a sorajax dataset (ArrayRecord shards).

  python -m sorajax.prepare --input_dir videos/ --captions captions.csv --out data/train
  python -m sorajax.prepare ... --store raw --fps 8 --max_side 256   # decoded, resampled frames
  python -m sorajax.prepare ... --process_index 3 --process_count 8   # one of 8 processes

The captions file is CSV (a header row) or JSONL (one object per line) with the columns `video`
(a path under --input_dir) and `caption`, and optionally `start` and `end` (seconds: the span of
the video the caption describes, as in Panda-70M). Other names for the first two are set with
--video_column/--caption_column; columns to leave alone with --ignore_columns. Any other column
is an error, so a misnamed one is not silently dropped.

Inputs are cut into shards of --clips_per_shard in the captions file's order (then the folder's
videos that have no caption, which are reported). Process p of n writes shards p, p+n, ... Each
shard is written to a temporary name and renamed, and a shard already written by an earlier run
with the same inputs is kept, so an interrupted job picks up where it stopped. A bad input
(unreadable, corrupt, too short, no caption, missing file) is recorded with its reason and the job
goes on. The process that finds every shard done writes skipped.jsonl and dataset.json.
Layout and record format: sorajax/data/records.py.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sys

from absl import app, flags
import numpy as np

from sorajax import configuration
from sorajax.data import records, video_io

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".gif")
OPTIONAL_COLUMNS = ("start", "end")


class Input:
  """One clip to prepare: a file under the input folder, its caption and span (seconds), and a
  reason to skip it found while reading the captions file (a caption that is not text, a row
  given twice)."""

  def __init__(self, path: str, caption: str | None, start: float | None = None,
               end: float | None = None, line: int = 0, problem: str = ""):
    self.path, self.caption, self.start, self.end, self.line = path, caption, start, end, line
    self.problem = problem

  def key(self) -> list:
    return [self.path, self.caption, self.start, self.end, self.problem]


def _seconds(value, column: str, where: str) -> float | None:
  if value in (None, ""):
    return None
  try:
    seconds = float(value)
  except (TypeError, ValueError):
    seconds = float("nan")
  if not math.isfinite(seconds) or seconds < 0:
    raise ValueError(f"{where}: {column}={value!r} is not a number of seconds >= 0")
  return seconds


def _check_columns(columns, video_column: str, caption_column: str, ignore: tuple[str, ...],
                   where: str) -> None:
  missing = [c for c in (video_column, caption_column) if c not in columns]
  if missing:
    raise ValueError(f"{where} has no column {', '.join(missing)}; name the columns with "
                     "--video_column and --caption_column")
  known = {video_column, caption_column, *OPTIONAL_COLUMNS, *ignore}
  extra = [c for c in columns if c not in known]
  if extra:
    raise ValueError(f"{where} has unknown column(s) {', '.join(map(str, extra))}; expected "
                     f"{video_column}, {caption_column} (optional: {', '.join(OPTIONAL_COLUMNS)}); "
                     "list others in --ignore_columns")


def read_captions(path: str, video_column: str = "video", caption_column: str = "caption",
                  ignore_columns: tuple[str, ...] = ()) -> list[Input]:
  """The rows of a CSV or JSONL captions file, checked for its columns (one-line errors)."""
  if not os.path.isfile(path):
    raise ValueError(f"captions file {path!r} does not exist")
  rows = []
  if path.lower().endswith((".jsonl", ".json")):
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not a column
      for line, text in enumerate(f, 1):
        if not text.strip():
          continue
        where = f"{path} line {line}"
        try:
          row = json.loads(text)
        except json.JSONDecodeError as e:
          raise ValueError(f"{where} is not JSON ({e.msg}); write one object per line") from None
        if not isinstance(row, dict):
          raise ValueError(f"{where} is not a JSON object; write one object per line")
        _check_columns(list(row), video_column, caption_column, ignore_columns, where)
        rows.append((line, row))
  else:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      _check_columns(reader.fieldnames or [], video_column, caption_column, ignore_columns,
                     f"{path} (header)")
      for row in reader:
        if None in row:
          raise ValueError(f"{path} line {reader.line_num} has more fields than the header; "
                           "quote captions that hold commas")
        rows.append((reader.line_num, row))
  inputs, first_line = [], {}
  for line, row in rows:
    where = f"{path} line {line}"
    caption, problem = row[caption_column], ""
    if caption is not None and not isinstance(caption, str):
      caption, problem = None, (f"caption is a {type(caption).__name__}, not text; write one "
                                "caption per row")
    item = Input(str(row[video_column]), (caption or "").strip() or None,
                 _seconds(row.get("start"), "start", where),
                 _seconds(row.get("end"), "end", where), line, problem)
    key = json.dumps([os.path.normpath(item.path), item.caption, item.start, item.end])
    if key in first_line and not item.problem:
      item.problem = f"duplicate of line {first_line[key]}"
    first_line.setdefault(key, line)
    inputs.append(item)
  return inputs


def list_inputs(input_dir: str, captioned: list[Input]) -> list[Input]:
  """The captioned rows, then the folder's media files no row names (reported as uncaptioned)."""
  named = {os.path.normpath(i.path) for i in captioned}
  extensions = VIDEO_EXTENSIONS + video_io.IMAGE_EXTENSIONS
  found = []
  for root, _, files in os.walk(input_dir):
    for name in files:
      if name.lower().endswith(extensions):
        relative = os.path.normpath(os.path.relpath(os.path.join(root, name), input_dir))
        if relative not in named:
          found.append(relative)
  return captioned + [Input(p, None) for p in sorted(found)]


class Settings:
  def __init__(self, store: str = "file", fps: float = 0.0, max_side: int = 0,
               max_frames: int = 0, min_frames: int = 1):
    if store not in records.STORES:
      raise ValueError(f"--store={store!r}; valid: {', '.join(records.STORES)}")
    if store == "file" and (fps or max_side or max_frames):
      raise ValueError("--fps, --max_side and --max_frames change the frames, so they need "
                       "--store raw; --store file keeps the source file as it is")
    if min(fps, max_side, max_frames) < 0 or min_frames < 1:
      raise ValueError("--fps, --max_side and --max_frames must be >= 0 and --min_frames >= 1")
    self.store, self.fps, self.max_side = store, fps, max_side
    self.max_frames, self.min_frames = max_frames, min_frames

  def key(self) -> list:
    return [self.store, self.fps, self.max_side, self.max_frames, self.min_frames]


class Skip(Exception):
  """An input that cannot become a record; the message is the reason reported."""


def _probe(data: bytes, image: bool) -> tuple[int, int, int, float]:
  """(frames, height, width, fps) of a media file, decoding a video without keeping its frames
  (a long video need not fit in memory); a file that cannot be decoded raises."""
  if image:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    with Image.open(io.BytesIO(data)) as picture:
      picture.load()  # decodes, so a truncated file fails here
      return 1, picture.height, picture.width, 0.0
  import av  # pylint: disable=import-outside-toplevel
  with av.open(io.BytesIO(data)) as container:  # the bytes already read, not the file again
    if not container.streams.video:
      raise ValueError("no video stream")
    stream = container.streams.video[0]
    fps = float(stream.average_rate) if stream.average_rate else 0.0
    frames, size = 0, (0, 0)
    for frame in container.decode(stream):
      frames, size = frames + 1, (frame.height, frame.width)
  if not frames:
    raise ValueError("no video frames")
  return frames, size[0], size[1], fps


def _resize(video: np.ndarray, max_side: int) -> np.ndarray:
  height, width = video.shape[1:3]
  scale = max_side / max(height, width)
  if scale >= 1:
    return video
  size = max(1, round(width * scale)), max(1, round(height * scale))
  from PIL import Image  # pylint: disable=import-outside-toplevel
  return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BILINEAR))
                   for f in video])


def resample(count: int, fps: float, target: float) -> np.ndarray:
  """Indices of `count` frames at `fps` that play them at `target` frames per second."""
  if not target or not fps or target == fps:
    return np.arange(count)
  return np.floor(np.arange(int(count * target / fps)) * fps / target).astype(int)


def make_record(input_dir: str, item: Input, settings: Settings) -> tuple[bytes, dict]:
  """The record of one input and its metadata, or Skip with the reason."""
  if item.problem:
    raise Skip(item.problem)
  if item.caption is None:
    raise Skip("missing caption")
  path = os.path.join(input_dir, item.path)
  if not os.path.isfile(path):
    raise Skip("missing file")
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise Skip(f"unreadable: {e.strerror or e}") from None
  image = item.path.lower().endswith(video_io.IMAGE_EXTENSIONS)
  try:
    frames, height, width, fps = _probe(data, image)
  except Exception as e:  # pylint: disable=broad-except  # any decoder failure is this input's
    raise Skip(f"corrupt: {_first_line(e)}") from None
  start, end = 0, frames
  if item.start is not None or item.end is not None:
    if not fps:
      raise Skip("start/end given but the file has no frame rate")
    start = round((item.start or 0.0) * fps)
    end = min(frames, round(item.end * fps)) if item.end is not None else frames
    if start >= end:
      raise Skip(f"empty span: start {item.start or 0:g} s, end "
                 f"{item.end if item.end is not None else frames / fps:g} s of a "
                 f"{frames / fps:g} s video")
  if end - start < settings.min_frames and not image:  # an image is a one-frame clip
    raise Skip(f"too short: {end - start} frames, --min_frames {settings.min_frames}")
  if settings.store == "raw":
    video = records.decode_bytes(data, item.path, np.arange(start, end))
    video = video[resample(len(video), fps, settings.fps)]
    fps = settings.fps if settings.fps and fps else fps  # resampled only when the rate is known
    if settings.max_frames:
      video = video[:settings.max_frames]
    if len(video) < settings.min_frames and not image:
      raise Skip(f"too short: {len(video)} frames at {fps:g} fps, --min_frames "
                 f"{settings.min_frames}")
    if settings.max_side:
      video = _resize(video, settings.max_side)
    data, (start, end), (height, width) = video.tobytes(), (0, len(video)), video.shape[1:3]
  meta = dict(frames=end - start, height=height, width=width, fps=fps, start=start, end=end)
  return records.encode_record(item.caption, settings.store, data, meta, item.path), meta


def _first_line(error: Exception) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _fingerprint(input_dir: str, block: list[Input], settings: Settings) -> str:
  """What a shard is made from: the folder, each input's row and file size, the settings."""
  def size(item):
    path = os.path.join(input_dir, item.path)
    return os.path.getsize(path) if os.path.isfile(path) else None
  text = json.dumps([os.path.realpath(input_dir), settings.key()]
                    + [i.key() + [size(i)] for i in block])
  return hashlib.sha256(text.encode()).hexdigest()


def write_shard(out: str, index: int, block: list[Input], input_dir: str,
                settings: Settings) -> dict:
  """Writes one shard and its sidecar (kept as they are if an earlier run wrote them)."""
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=import-outside-toplevel
  base = os.path.join(out, records.shard_name(index))
  fingerprint = _fingerprint(input_dir, block, settings)
  done = records.finished_shard(base, fingerprint)
  if done is not None:
    return done
  metas, skipped = [], []
  temporary = f"{base}.array_record.{records.temporary_suffix()}"
  writer = ArrayRecordWriter(temporary, "group_size:1")
  try:
    for item in block:
      try:
        raw, meta = make_record(input_dir, item, settings)
      except Skip as e:
        skipped.append({"video": item.path, "line": item.line, "reason": str(e)})
        continue
      except Exception as e:  # pylint: disable=broad-except  # one input never stops the job
        skipped.append({"video": item.path, "line": item.line,
                        "reason": f"failed: {type(e).__name__}: {_first_line(e)}"})
        continue
      writer.write(raw)
      metas.append(meta)
    writer.close()
  except BaseException:
    writer.close()
    os.remove(temporary)
    raise
  if metas:
    os.replace(temporary, base + ".array_record")
  else:
    os.remove(temporary)
  sidecar = {"format": records.FORMAT, "version": records.VERSION, "fingerprint": fingerprint,
             "inputs": len(block), "records": metas, "skipped": skipped}
  configuration.write_json_atomic(base + ".json", sidecar)
  return sidecar


def finish(out: str, fingerprints: list[str], settings: Settings) -> dict | None:
  """dataset.json and skipped.jsonl, once every shard is there and made from these inputs
  (`fingerprints`, one per shard); None before."""
  sidecars = []
  for index, fingerprint in enumerate(fingerprints):
    sidecar = records.finished_shard(os.path.join(out, records.shard_name(index)), fingerprint)
    if sidecar is None:
      return None
    sidecars.append(sidecar)
  skipped = [s for sidecar in sidecars for s in sidecar["skipped"]]
  temporary = os.path.join(out, f"{records.SKIPPED_FILE}.{records.temporary_suffix()}")
  with open(temporary, "w") as f:
    for item in skipped:
      f.write(json.dumps(item) + "\n")
  os.replace(temporary, os.path.join(out, records.SKIPPED_FILE))
  info = {"format": records.FORMAT, "version": records.VERSION, "shards": len(sidecars),
          "records": sum(len(s["records"]) for s in sidecars), "skipped": len(skipped),
          "store": settings.store,
          "fingerprint": hashlib.sha256(json.dumps(fingerprints).encode()).hexdigest()}
  configuration.write_json_atomic(os.path.join(out, records.DATASET_FILE), info)
  return info


def prepare(input_dir: str, captions: str, out: str, settings: Settings | None = None,
            clips_per_shard: int = 256, process_index: int = 0, process_count: int = 1,
            video_column: str = "video", caption_column: str = "caption",
            ignore_columns: tuple[str, ...] = ()) -> dict | None:
  """Writes this process's shards of the dataset; returns dataset.json's contents if every shard
  is done (by this or other processes), else None."""
  settings = settings or Settings()
  if clips_per_shard < 1:
    raise ValueError(f"--clips_per_shard={clips_per_shard} must be at least 1")
  if not 0 <= process_index < process_count:
    raise ValueError(f"--process_index={process_index} must be in [0, --process_count="
                     f"{process_count})")
  if not os.path.isdir(input_dir):
    raise ValueError(f"--input_dir {input_dir!r} does not exist")
  inputs = list_inputs(input_dir, read_captions(captions, video_column, caption_column,
                                                tuple(ignore_columns)))
  if not inputs:
    raise ValueError(f"{captions} and {input_dir} hold no inputs")
  os.makedirs(out, exist_ok=True)
  blocks = [inputs[i:i + clips_per_shard] for i in range(0, len(inputs), clips_per_shard)]
  for index in range(process_index, len(blocks), process_count):
    write_shard(out, index, blocks[index], input_dir, settings)
  return finish(out, [_fingerprint(input_dir, b, settings) for b in blocks], settings)


def main(argv):
  del argv
  for flag in (_INPUT_DIR, _CAPTIONS, _OUT):
    if not flag.value:
      sys.exit(f"--{flag.name} is required")
  try:
    settings = Settings(_STORE.value, _FPS.value, _MAX_SIDE.value, _MAX_FRAMES.value,
                        _MIN_FRAMES.value)
    info = prepare(_INPUT_DIR.value, _CAPTIONS.value, _OUT.value, settings, _PER_SHARD.value,
                   _PROCESS_INDEX.value, _PROCESS_COUNT.value, _VIDEO_COLUMN.value,
                   _CAPTION_COLUMN.value, tuple(_IGNORE.value))
  except ValueError as e:
    sys.exit(f"error: {e}")
  if info is None:
    print(f"process {_PROCESS_INDEX.value} of {_PROCESS_COUNT.value} done; the last process to "
          f"finish writes {records.DATASET_FILE}")
  else:
    print(f"wrote {info['records']} clips in {info['shards']} shard(s) to {_OUT.value}; skipped "
          f"{info['skipped']} (see {os.path.join(_OUT.value, records.SKIPPED_FILE)})")


if __name__ == "__main__":
  # Flags exist only when this module is the program, so importing it adds none to absl's
  # registry (the same names as other tools' flags would clash).
  _INPUT_DIR = flags.DEFINE_string("input_dir", None, "Folder of videos (and images).")
  _CAPTIONS = flags.DEFINE_string("captions", None, "CSV or JSONL: video, caption[, start, end].")
  _OUT = flags.DEFINE_string("out", None, "Dataset folder to write (or to resume).")
  _STORE = flags.DEFINE_enum("store", "file", records.STORES,
                             "file: the source bytes as they are; raw: decoded uint8 frames.")
  _FPS = flags.DEFINE_float("fps", 0.0, "raw: resample to this frame rate (0 keeps the source's).")
  _MAX_SIDE = flags.DEFINE_integer("max_side", 0, "raw: shrink so the longer side is at most this.")
  _MAX_FRAMES = flags.DEFINE_integer("max_frames", 0, "raw: keep at most this many frames.")
  _MIN_FRAMES = flags.DEFINE_integer("min_frames", 1, "Skip videos shorter than this.")
  _PER_SHARD = flags.DEFINE_integer("clips_per_shard", 256, "Inputs per shard.")
  _PROCESS_INDEX = flags.DEFINE_integer("process_index", 0, "This process, of --process_count.")
  _PROCESS_COUNT = flags.DEFINE_integer("process_count", 1, "Processes sharing the job.")
  _VIDEO_COLUMN = flags.DEFINE_string("video_column", "video", "Column with the video path.")
  _CAPTION_COLUMN = flags.DEFINE_string("caption_column", "caption", "Column with the caption.")
  _IGNORE = flags.DEFINE_list("ignore_columns", [], "Columns to leave alone.")
  app.run(main)
