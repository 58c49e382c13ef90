"""Captioned clips from a TFDS dataset, read by random access (`tfds.data_source`).

The dataset must already be prepared in ArrayRecord format (`tfds build NAME --data_dir DIR
--file_format=array_record`): nothing is downloaded at training time, where every host and grain
worker would start its own download. `TfdsDataset` reads like a prepared dataset
(records.Dataset): per-example `meta` for bucketing, and records of store "array" (frames already
decoded by TFDS) that video_source.ClipSource samples and fits to a bucket.

Video features carry no frame rate: `fps` is reported for every example (0: unknown, so sampling
takes every frame_stride-th frame). The caption may be a Text feature, a sequence of texts (the
first is used) or a ClassLabel (its class name, e.g. an action). TFDS's Video feature cannot be
built without TensorFlow, so the `tfds` extra installs tensorflow-cpu too.
"""
from __future__ import annotations

import functools
import io
import logging

import numpy as np

INSTALL = "data.source='tfds' needs tensorflow-datasets; pip install -e .[tfds]"


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ValueError(INSTALL) from e
  return tfds


def _open(name: str, split: str, data_dir: str | None, decoders=None):
  """tfds.data_source, never downloading, with its errors as one line that names the fix."""
  tfds = _tfds()
  where = f"tfds:{name}/{split}"
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                            decoders=decoders)
  except ModuleNotFoundError as e:
    if (e.name or "").split(".")[0] == "tensorflow":
      raise ValueError(f"{where} needs TensorFlow to read its features (tfds.features.Video); "
                       "pip install -e .[tfds]") from e
    raise
  except tfds.core.DatasetNotFoundError as e:
    raise ValueError(f"no TFDS dataset {name!r} (data.tfds_name) is registered or prepared in "
                     f"{data_dir or 'the default data_dir'}; tfds.list_builders() names the "
                     "registered ones") from e
  except (AssertionError, ValueError, FileNotFoundError, NotImplementedError) as e:
    why = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0].rstrip(".")
    raise ValueError(f"{where} cannot be read ({why}); prepare it first: tfds build {name} "
                     f"--file_format=array_record{f' --data_dir={data_dir}' if data_dir else ''}"
                     ) from e


class TfdsDataset:
  """Split `split` of the TFDS dataset `name` opened for reading, with the interface of
  records.Dataset: `directory` (for messages), `meta` (per-example arrays of
  records.META_FIELDS), len() and records of store "array"."""

  def __init__(self, name: str, split: str, data_dir: str | None = None,
               video_key: str = "video", caption_key: str = "caption", fps: float = 0.0):
    self.name, self.split, self.data_dir = name, split, data_dir or None
    self.video_key, self.caption_key, self.fps = video_key, caption_key, float(fps)
    self.directory = f"tfds:{name}/{split}"
    self._source = None
    features = self._records().dataset_info.features
    keys = ", ".join(features.keys())
    for what, key in (("video", video_key), ("caption", caption_key)):
      if key not in features:
        raise ValueError(f"data.tfds_{what}_key={key!r} is not a feature of {self.directory}; "
                         f"valid: {keys}")
    shape = tuple(features[video_key].shape)
    if len(shape) != 4 or shape[-1] not in (1, 3):
      raise ValueError(f"feature {video_key!r} of {self.directory} has shape {shape}, not a video "
                       f"(frames, height, width, 1 or 3); set data.tfds_video_key to one of {keys}")
    # A ClassLabel caption reads as its class name; a list, so that the dataset pickles.
    label = features[caption_key]
    self._label_names = (list(label.names) if isinstance(label, _tfds().features.ClassLabel)
                         else None)
    frames, height, width = _video_sizes(name, split, self.data_dir, video_key, shape)
    count = len(frames)
    self.meta = {"frames": frames, "height": height, "width": width,
                 "fps": np.full(count, self.fps, np.float64),
                 "start": np.zeros(count, np.int64), "end": frames}

  def _records(self):
    if self._source is None:  # opened lazily: grain workers open their own readers
      self._source = _open(self.name, self.split, self.data_dir)
    return self._source

  def __len__(self) -> int:
    return len(self.meta["frames"])

  def __getitem__(self, index: int) -> dict:
    example = self._records()[int(index)]
    video = np.asarray(example[self.video_key])
    if video.dtype != np.uint8:
      raise ValueError(f"feature {self.video_key!r} of {self.directory} is {video.dtype}; this "
                       "source reads uint8 videos")
    if video.shape[-1] == 1:  # grayscale
      video = np.repeat(video, 3, axis=-1)
    frames, height, width = video.shape[:3]
    return {"store": "array", "data": video, "start": 0, "end": frames, "frames": frames,
            "height": height, "width": width, "fps": self.fps,
            "caption": self._caption(example[self.caption_key]), "path": ""}

  def _caption(self, value) -> str:
    value = np.asarray(value)
    if value.ndim:  # several captions: the first
      value = value.reshape(-1)[0] if value.size else np.asarray(b"")
    value = value.item()
    if self._label_names is not None:
      return self._label_names[int(value)]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)

  def __getstate__(self):  # picklable for grain worker processes
    state = dict(self.__dict__)
    state["_source"] = None
    return state


@functools.lru_cache(maxsize=16)  # from_config opens a split once per bucket
def _video_sizes(name: str, split: str, data_dir: str | None, video_key: str,
                 shape: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-example (frames, height, width): the feature's shape where it is fixed, else one pass
  over the examples that leaves the frames encoded (a Video feature is a list of encoded images:
  their count and the first one's header)."""
  count = len(_open(name, split, data_dir))
  sizes = [np.full(count, -1 if s is None else s, np.int64) for s in shape[:3]]
  if None in shape[:3]:
    logging.info("reading the video sizes of tfds:%s/%s (%d examples)", name, split, count)
    source = _open(name, split, data_dir, decoders={video_key: _skip_decoding()})
    for i, example in enumerate(source):
      for size, value in zip(sizes, _encoded_size(example[video_key], shape)):
        size[i] = value
  for size in sizes:
    size.setflags(write=False)  # shared by every dataset opened on this split
  return tuple(sizes)


def _skip_decoding():
  """tfds.decode.SkipDecoding for the NumPy reader, which decodes a video's frames as a batch (a
  path SkipDecoding lacks)."""
  class SkipDecoding(_tfds().decode.SkipDecoding):
    def decode_batch_example_np(self, serialized_example):
      return serialized_example
  return SkipDecoding()


def _encoded_size(video, shape: tuple) -> tuple[int, int, int]:
  """(frames, height, width) of a video read without decoding: an array (a Tensor feature) or a
  sequence of encoded frames (a Video feature), whose size is in the first frame's header."""
  if isinstance(video, np.ndarray) and video.dtype.kind not in "OSU":
    return video.shape[:3]
  height, width = shape[1:3]
  if len(video) and (height is None or width is None):
    from PIL import Image  # pylint: disable=import-outside-toplevel
    with Image.open(io.BytesIO(bytes(video[0]))) as image:  # reads the header only
      width, height = image.size
  return len(video), height or 0, width or 0
