"""Reading images and videos (Pillow, PyAV) and fitting them to a model's size; writing videos (mp4
via PyAV, streamed or whole; gif via Pillow) and contact sheets. Every file is written to a
temporary name and renamed, so an interrupted job never leaves half a file behind."""
from __future__ import annotations

import os
import threading

import numpy as np
from PIL import Image


def _temporary(path: str) -> str:
  root, ext = os.path.splitext(path)
  return f"{root}.tmp-{os.getpid()}{ext}"


def _check_video(video: np.ndarray) -> np.ndarray:
  video = np.asarray(video)
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError("expected a uint8 video of shape (T, H, W, 3), "
                     f"got {video.dtype} {video.shape}")
  return video


def upscale(video: np.ndarray, factor: int) -> np.ndarray:
  """Nearest-neighbour enlargement, so tiny demo videos are visible and codecs keep their edges."""
  return video.repeat(factor, axis=-3).repeat(factor, axis=-2) if factor > 1 else video


class Mp4Writer:
  """Streams frames into an H.264 mp4 (PyAV) a piece at a time, so a long render holds one piece.

  Written to a temporary name and renamed by `close` (or on leaving a `with` block without an
  error); after an error the partial file is removed.
  """

  def __init__(self, path: str, fps: int = 8, scale: int = 1):
    import av  # pylint: disable=import-outside-toplevel
    self.path, self.scale, self._tmp = path, scale, _temporary(path)
    self._container = av.open(self._tmp, mode="w")
    self._stream = self._container.add_stream("libx264", rate=fps)
    self._stream.pix_fmt = "yuv420p"
    self._stream.options = {"crf": "18"}
    self._size = None
    self.frames = 0

  def write(self, video: np.ndarray) -> None:
    import av  # pylint: disable=import-outside-toplevel
    video = upscale(_check_video(video), self.scale)
    if self._size is None:  # H.264 with yuv420p needs even sizes
      self._size = video.shape[1] // 2 * 2, video.shape[2] // 2 * 2
      self._stream.height, self._stream.width = self._size
    height, width = self._size
    for frame in video[:, :height, :width]:
      for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                                                   "rgb24")):
        self._container.mux(packet)
    self.frames += len(video)

  def close(self) -> None:
    for packet in self._stream.encode():
      self._container.mux(packet)
    self._container.close()
    os.replace(self._tmp, self.path)

  def abort(self) -> None:
    self._container.close()
    if os.path.exists(self._tmp):
      os.remove(self._tmp)

  def __enter__(self):
    return self

  def __exit__(self, kind, value, traceback):
    if kind is None:
      self.close()
    else:
      self.abort()


def write_mp4(path: str, video: np.ndarray, fps: int = 8, scale: int = 1) -> None:
  with Mp4Writer(path, fps, scale) as writer:
    writer.write(video)


_CONVERTERS = threading.local()  # one per thread: a converter is not safe to share


def frame_to_rgb(frame) -> np.ndarray:
  """A decoded PyAV frame as uint8 (H, W, 3). Each thread keeps one converter: PyAV's
  `to_ndarray(format="rgb24")` sets up a new one per frame, which costs 2-3x the decoding on
  small frames (bench/RESULTS.md, issue 7); the pixels are the same."""
  converter = getattr(_CONVERTERS, "rgb", None)
  if converter is None:
    from av.video.reformatter import VideoReformatter  # pylint: disable=import-outside-toplevel
    converter = _CONVERTERS.rgb = VideoReformatter()
  return converter.reformat(frame, format="rgb24").to_ndarray()


def read_video(path: str) -> np.ndarray:
  """Decodes every frame of a video file to uint8 (T, H, W, 3)."""
  import av  # pylint: disable=import-outside-toplevel
  with av.open(path) as container:
    return np.stack([frame_to_rgb(f) for f in container.decode(video=0)])


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def read_media(path: str) -> np.ndarray:
  """An image or video file as uint8 (T, H, W, 3) (an image is one frame); a file that is missing
  or that neither Pillow nor PyAV can decode raises ValueError in one line."""
  if not os.path.isfile(path):
    raise ValueError(f"conditioning file {path!r} does not exist")
  try:
    if path.lower().endswith(IMAGE_EXTENSIONS):
      with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))[None]
    video = read_video(path)
  except Exception as e:  # pylint: disable=broad-except  # any decoder failure, named in one line
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"cannot read {path!r} as an image or video ({reason}); pass an image "
                     f"({', '.join(IMAGE_EXTENSIONS)}) or a video PyAV can decode") from e
  if video.size == 0:
    raise ValueError(f"{path!r} holds no video frames")
  return video


def fit_video(video: np.ndarray, height: int, width: int, temporal_factor: int,
              max_frames: int | None = None) -> tuple[np.ndarray, list[str]]:
  """(T, H, W, 3) uint8 -> (1 + temporal_factor * k, height, width, 3) and notes of what changed.

  The largest centered crop with the target's aspect ratio is resized (bilinear), and the clip is
  trimmed at the end to the longest length the VAE codes (1 + temporal_factor * k, at most
  `max_frames`).
  """
  video = _check_video(video)
  notes = []
  frames, source_height, source_width = video.shape[:3]
  keep = min(frames, max_frames or frames)
  keep = 1 + (keep - 1) // temporal_factor * temporal_factor
  if keep != frames:
    notes.append(f"trimmed {frames} -> {keep} frames (1 + {temporal_factor}k)")
    video = video[:keep]
  if (source_height, source_width) != (height, width):
    scale = min(source_height / height, source_width / width)
    crop_h, crop_w = round(height * scale), round(width * scale)
    top, left = (source_height - crop_h) // 2, (source_width - crop_w) // 2
    video = np.stack([
        np.asarray(Image.fromarray(f[top:top + crop_h, left:left + crop_w]).resize(
            (width, height), Image.Resampling.BILINEAR)) for f in video])
    crop = "" if (crop_h, crop_w) == (source_height, source_width) else (
        f" (center crop {crop_w}x{crop_h})")
    notes.append(f"resized {source_width}x{source_height} -> {width}x{height}{crop}")
  return video, notes


def write_gif(path: str, video: np.ndarray, fps: int = 8, scale: int = 1) -> None:
  video = upscale(_check_video(video), scale)
  frames = [Image.fromarray(f) for f in video]
  tmp = _temporary(path)
  frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                 duration=int(1000 / fps), loop=0)
  os.replace(tmp, path)


def contact_sheet(videos: list[np.ndarray], columns: int | None = None, pad: int = 2,
                  max_frames: int = 9) -> np.ndarray:
  """One image: a row of frames per video (up to `max_frames`, evenly spaced), rows stacked."""
  if not videos:
    raise ValueError("contact_sheet needs at least one video")
  videos = [_check_video(v) for v in videos]
  height, width = videos[0].shape[1:3]
  frames = min(max_frames, max(v.shape[0] for v in videos))
  columns = columns or frames
  rows = []
  for video in videos:
    picks = np.linspace(0, video.shape[0] - 1, min(frames, video.shape[0])).round().astype(int)
    tiles = [video[i] for i in picks] + [np.zeros_like(video[0])] * (columns - len(picks))
    row = np.full((height, columns * (width + pad) - pad, 3), 255, np.uint8)
    for c, tile in enumerate(tiles[:columns]):
      row[:, c * (width + pad):c * (width + pad) + width] = tile
    rows.append(row)
  sheet = np.full((len(rows) * (height + pad) - pad, rows[0].shape[1], 3), 255, np.uint8)
  for r, row in enumerate(rows):
    sheet[r * (height + pad):r * (height + pad) + height] = row
  return sheet


def write_png(path: str, image: np.ndarray) -> None:
  tmp = _temporary(path)
  Image.fromarray(image).save(tmp, format="PNG")
  os.replace(tmp, path)
