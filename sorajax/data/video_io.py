"""Writing videos (mp4 via PyAV, gif via Pillow) and contact sheets; every file is written to a
temporary name and renamed, so an interrupted job never leaves half a file behind."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image


def _temporary(path: str) -> str:
  root, ext = os.path.splitext(path)
  return f"{root}.tmp-{os.getpid()}{ext}"


def _check_video(video: np.ndarray) -> np.ndarray:
  video = np.asarray(video)
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f"expected a uint8 video of shape (T, H, W, 3), got {video.dtype} {video.shape}")
  return video


def upscale(video: np.ndarray, factor: int) -> np.ndarray:
  """Nearest-neighbour enlargement, so tiny demo videos are visible and codecs keep their edges."""
  return video.repeat(factor, axis=-3).repeat(factor, axis=-2) if factor > 1 else video


def write_mp4(path: str, video: np.ndarray, fps: int = 8, scale: int = 1) -> None:
  import av  # pylint: disable=import-outside-toplevel
  video = upscale(_check_video(video), scale)
  # H.264 with yuv420p needs even sizes.
  height, width = video.shape[1] // 2 * 2, video.shape[2] // 2 * 2
  tmp = _temporary(path)
  with av.open(tmp, mode="w") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"crf": "18"}
    for frame in video[:, :height, :width]:
      for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), "rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  os.replace(tmp, path)


def read_video(path: str) -> np.ndarray:
  """Decodes every frame of a video file to uint8 (T, H, W, 3)."""
  import av  # pylint: disable=import-outside-toplevel
  with av.open(path) as container:
    return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


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
