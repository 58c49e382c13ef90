"""A rule-based judge: does a video show the colors, shapes and motions its prompt asks for?

No learned model: pixels are classified by color, each prompt object is tracked as the
largest blob of its color, and its shape and motion are measured from that blob.

- color: the blob is present (big enough, not implausibly big) in at least half the frames.
- shape: the blob's soft mask (how far each pixel is from background towards the object's
  color) is matched against square, circle and triangle templates of the same area and
  centroid, sharp and blurred; the template with the least squared error wins.
- motion: from the blob's centroid track. Static if it never strays far from where it
  started; bouncing if it goes far but comes most of the way back; otherwise the sign of
  the net displacement along the axis it moved most (y grows downward, so "up" is -y).
- pace (measured, not a verdict): for left/right/up/down movers, how far they go against the
  training clips' pace and how steady their steps are (`pace`).

Motion needs time: with one frame it is not observable and the judge returns motion=None
(likewise for "bouncing" with two frames, which end where they start). None propagates
to the prompt-level verdicts and summaries skip it.

The rules hold up against what a small generator produces at 32x32: noise, blur and a
global color drift (see tests/test_shapes_judge.py).
"""
import math

import numpy as np

from sorajax.data import shapes

ACCEPT_DISTANCE = 100.0  # RGB distance within which a pixel counts as a palette color
MIN_AREA = 0.25  # a blob counts if it covers this much of the smallest expected object...
MAX_AREA = 3.0  # ...and no more than this many times the largest one
STATIC_EXCURSION = 0.1  # fraction of the frame; moving objects travel shapes.TRAVEL
BOUNCE_RETURN = 0.5  # a bouncing object ends within this fraction of its excursion
SHAPE_FRAMES = 6  # at most this many frames, evenly spread, vote on the shape
SOFT_MARGIN = 4  # pixels around a blob whose partial color still counts towards its shape
FULL_COLOR_PERCENTILE = 90  # of blob pixels' distance from background: the object's own color
TEMPLATE_BLURS = 2  # shape templates are also tried after this many 3x3 box blurs
# Within half the smallest background-to-color distance, a pixel is nearest its background.
_SURELY_BACKGROUND = min(
    np.linalg.norm(np.subtract(color, background)) / 2
    for color in shapes.COLORS.values() for background in shapes.BACKGROUNDS.values())


def _planes(video: np.ndarray) -> np.ndarray:
  """(3, T, H, W) float32 color planes: numpy is slow at reducing a length-3 last axis."""
  return np.moveaxis(video, -1, 0).astype(np.float32)


def _distance2(planes: np.ndarray, rgb) -> np.ndarray:
  return sum(np.square(plane - value) for plane, value in zip(planes, rgb))


def classify_pixels(video: np.ndarray, background: str) -> np.ndarray:
  """(T, H, W) int: index into shapes.COLORS, len(COLORS) for background, -1 for neither."""
  return _classify(_planes(video), background)


def _classify(planes: np.ndarray, background: str) -> np.ndarray:
  background_rgb = shapes.BACKGROUNDS[background]
  classes = np.full(planes.shape[1:], len(shapes.COLORS))
  # Most pixels are plain background: settle those with one distance, the rest in full.
  undecided = _distance2(planes, background_rgb) > _SURELY_BACKGROUND**2
  pixels = planes[:, undecided]
  best = np.full(pixels.shape[1:], ACCEPT_DISTANCE**2, np.float32)
  labels = np.full(pixels.shape[1:], -1)
  for index, rgb in enumerate([*shapes.COLORS.values(), background_rgb]):
    dist2 = _distance2(pixels, rgb)
    closer = dist2 <= best  # a tie within the threshold goes to the later entry
    best = np.where(closer, dist2, best)
    labels[closer] = index
  classes[undecided] = labels
  return classes


# ---------------------------------------------------------------------------
# Blobs.
# ---------------------------------------------------------------------------


def _label_components(mask: np.ndarray) -> np.ndarray:
  """4-connected components per frame of a (T, H, W) mask.

  Each pixel is labelled with the smallest flat index in its component (mask.size off the
  mask). Labels spread by neighbour minimum, and pointer jumping (a label's own label)
  makes that take a few rounds instead of one per pixel of blob diameter.
  """
  off = mask.size
  index = np.arange(mask.size, dtype=np.int32).reshape(mask.shape)
  labels = np.where(mask, index, off)
  while True:
    spread = labels.copy()
    np.minimum(spread[:, 1:], labels[:, :-1], out=spread[:, 1:])
    np.minimum(spread[:, :-1], labels[:, 1:], out=spread[:, :-1])
    np.minimum(spread[:, :, 1:], labels[:, :, :-1], out=spread[:, :, 1:])
    np.minimum(spread[:, :, :-1], labels[:, :, 1:], out=spread[:, :, :-1])
    spread = np.where(mask, spread, off)
    spread = np.append(spread.reshape(-1), off)[spread]  # pointer jumping
    if np.array_equal(spread, labels):
      return labels
    labels = spread


def largest_blobs(mask: np.ndarray) -> np.ndarray:
  """(T, H, W) bool: the largest 4-connected component of each frame's mask."""
  frames, height, width = mask.shape
  labels = _label_components(mask)
  ids, counts = np.unique(labels[mask], return_counts=True)
  frame = ids // (height * width)
  order = np.lexsort((counts, frame))  # by frame, then by size: each frame's largest is last
  ids, frame = ids[order], frame[order]
  last = np.append(frame[1:] != frame[:-1], True)
  best = np.full(frames, -1)
  best[frame[last]] = ids[last]
  return labels == best[:, None, None]


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
  """Square dilation of each frame of a (T, H, W) mask."""
  out = mask.copy()
  for _ in range(radius):
    grown = out.copy()
    grown[:, 1:] |= out[:, :-1]
    grown[:, :-1] |= out[:, 1:]
    grown[:, :, 1:] |= grown[:, :, :-1].copy()
    grown[:, :, :-1] |= grown[:, :, 1:].copy()
    out = grown
  return out


def _box_blur(x: np.ndarray) -> np.ndarray:
  """3x3 mean over the last two axes, zero outside; separable, rows then columns."""
  padded = np.zeros(x.shape[:-2] + (x.shape[-2] + 2, x.shape[-1] + 2), x.dtype)
  padded[..., 1:-1, 1:-1] = x
  rows = padded[..., :-2, :] + padded[..., 1:-1, :] + padded[..., 2:, :]
  return (rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]) / 9.0


def _bounds(masks: np.ndarray) -> np.ndarray:
  """(n, 4) first row, last row, first column, last column of each non-empty (n, H, W) mask."""
  rows, cols = masks.any(axis=2), masks.any(axis=1)
  return np.stack([rows.argmax(1), rows.shape[1] - 1 - rows[:, ::-1].argmax(1),
                   cols.argmax(1), cols.shape[1] - 1 - cols[:, ::-1].argmax(1)], axis=1)


# ---------------------------------------------------------------------------
# Per-object measurements.
# ---------------------------------------------------------------------------


def _expected_area_range(shape: str, height: int, width: int) -> tuple[float, float]:
  """Blob areas (pixels) that can plausibly be the object."""
  short = min(height, width)
  smallest = shapes.AREA_FACTOR[shape] * (shapes.SIZE_RANGE[0] * short) ** 2
  largest = (shapes.SIZE_RANGE[1] * short) ** 2  # a square, whatever the prompt's shape
  return MIN_AREA * smallest, MAX_AREA * largest


def _leans_to(offsets: np.ndarray, background_rgb: np.ndarray, color_index: int) -> np.ndarray:
  """Which pixels' step away from the background, offsets (3, ...), points most towards this
  object color. Blurred edges of a neighbour point towards the neighbour's color instead."""
  norm = np.sqrt(sum(np.square(o) for o in offsets)) + 1e-6
  cosines = []
  for rgb in shapes.COLORS.values():
    direction = np.asarray(rgb, np.float32) - background_rgb
    direction /= np.linalg.norm(direction) + 1e-6
    cosines.append(sum(o * d for o, d in zip(offsets, direction)) / norm)
  return np.argmax(cosines, axis=0) == color_index


def _soft_mask(planes: np.ndarray, blob: np.ndarray, color_index: int,
               background_rgb: np.ndarray) -> np.ndarray:
  """(T, H, W) in [0, 1]: how far each pixel near the blob goes from background to object.

  The object's color is measured from the blob itself, so a global color drift cancels.
  Blurred edges reach past the hard blob, so pixels up to SOFT_MARGIN away count too,
  unless they lean towards another object's color.
  """
  near = _dilate(blob, SOFT_MARGIN)
  offsets = planes[:, near] - background_rgb[:, None]  # (3, pixels near the blob)
  in_blob = blob[near]
  direction = np.median(offsets[:, in_blob], axis=1)
  direction /= np.linalg.norm(direction) + 1e-6
  along = sum(o * d for o, d in zip(offsets, direction))  # distance from the background
  # Blur leaves few pixels at full color, so full color is a high percentile, not the median.
  full = max(float(np.percentile(along[in_blob], FULL_COLOR_PERCENTILE)), 1.0)
  alpha = np.zeros(blob.shape, np.float32)
  alpha[near] = np.where(_leans_to(offsets, background_rgb, color_index),
                         np.clip(along / full, 0.0, 1.0), 0.0)
  return alpha


def _windows(alpha: np.ndarray, blob: np.ndarray, frames: np.ndarray):
  """Square crops of `alpha` around the blob in each of `frames`.

  Returns (crops (n, s, s), corners (n, 2) as (x, y) of each crop's top-left pixel).
  """
  top, bottom, left, right = _bounds(blob[frames]).T
  # Wide enough for the blob, its soft margin and a template a bit off its centroid.
  side = int(max((bottom - top).max(), (right - left).max())) + 2 * SOFT_MARGIN + 5
  corners = np.stack([(left + right) // 2 - side // 2, (top + bottom) // 2 - side // 2], -1)
  padded = np.pad(alpha[frames], [(0, 0), (side, side), (side, side)])
  rows = corners[:, 1, None, None] + side + np.arange(side)[None, :, None]
  cols = corners[:, 0, None, None] + side + np.arange(side)[None, None, :]
  crops = padded[np.arange(len(frames))[:, None, None], rows, cols]
  return crops, corners


def _centroids(crops: np.ndarray, corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Soft areas (n,) and centroids (n, 2) in image (x, y); pixel j's center is j + 0.5."""
  area = crops.sum(axis=(1, 2))
  grid = np.arange(crops.shape[-1]) + 0.5
  cx = (crops.sum(axis=1) * grid).sum(-1) / np.maximum(area, 1e-6) + corners[:, 0]
  cy = (crops.sum(axis=2) * grid).sum(-1) / np.maximum(area, 1e-6) + corners[:, 1]
  return area, np.stack([cx, cy], axis=-1)


def _template_errors(crops: np.ndarray, corners: np.ndarray) -> dict[str, float]:
  """Mean squared mismatch (per unit area) between the crops and each shape's template.

  Each template has the crop's area and centroid. Blurred templates stand in for soft
  generated edges; each frame counts whichever blur level fits it best.
  """
  area, centroid = _centroids(crops, corners)
  area = np.maximum(area, 1.0)
  side = crops.shape[-1]
  errors = {}
  for shape in shapes.SHAPES:
    size = np.sqrt(area / shapes.AREA_FACTOR[shape])
    x0 = centroid[:, 0] - size / 2
    # A triangle's centroid sits 2/3 of the way down from its apex.
    y0 = centroid[:, 1] - size * (2 / 3 if shape == "triangle" else 1 / 2)
    template = shapes.shape_coverage(shape, x0, y0, size, corners[:, 0], corners[:, 1], side,
                                     side)
    best = np.full(len(crops), np.inf)
    for _ in range(TEMPLATE_BLURS + 1):
      best = np.minimum(best, np.square(crops - template).sum(axis=(1, 2)))
      template = _box_blur(template)
    errors[shape] = float(np.mean(best / area))
  return errors


def _fill_ratio(blobs: np.ndarray) -> float:
  """Median blob area over bounding-box area (square 1, circle 0.79, triangle 0.5)."""
  top, bottom, left, right = _bounds(blobs).T
  return float(np.median(blobs.sum(axis=(1, 2)) / ((bottom - top + 1) * (right - left + 1))))


def classify_motion(track: np.ndarray, height: int, width: int) -> tuple[str, dict]:
  """Names the motion of a (n, 2) centroid track (x, y) in pixels, n >= 2.

  Returns the motion and the measurements it rests on, as fractions of the frame.
  """
  from_start = (track - track[0]) / np.array([width, height])
  excursion = np.abs(from_start).max(axis=0)
  net = from_start[-1]
  axis = int(np.argmax(excursion))
  if excursion[axis] < STATIC_EXCURSION:
    motion = "static"
  elif abs(net[axis]) < BOUNCE_RETURN * excursion[axis]:
    motion = "bouncing"
  elif axis == 0:
    motion = "right" if net[0] > 0 else "left"
  else:
    motion = "down" if net[1] > 0 else "up"
  return motion, {"excursion": excursion.tolist(), "net_displacement": net.tolist()}


def pace(track: np.ndarray, frames_at: np.ndarray, motion: str, frames: int, height: int,
         width: int) -> dict:
  """How far and how steadily a mover goes along its prompt's direction.

  `travel`: its pace as a share of the world's (shapes.TRAVEL of the frame per clip; 1 is the
  training clips' pace). `evenness`: its slowest step over its mean step (1: steady; 0: it stops
  for a frame; < 0: it steps back). The direction verdict sees neither: a mover that stalls at
  every latent frame still ends up on the right side. track (n, 2) is measured at frames_at (n,).
  """
  axis, sign = shapes.DIRECTIONS[motion]
  along = sign * track[:, axis]
  steps = np.diff(along) / np.diff(frames_at)
  mean_step = (along[-1] - along[0]) / (frames_at[-1] - frames_at[0])
  extent = (width, height)[axis]
  travel = mean_step * (frames - 1) / (shapes.TRAVEL * extent)
  evenness = float(steps.min() / mean_step) if mean_step > 0 else None
  return {"travel": float(travel), "evenness": evenness}


def _motion_observable(frames: int, motion: str) -> bool:
  return frames >= 3 or (frames == 2 and motion != "bouncing")


def _crop_box(mask: np.ndarray) -> tuple[slice, slice] | None:
  """Rows and columns holding the mask in any frame, plus the soft margin; None if empty."""
  rows = np.flatnonzero(mask.any(axis=(0, 2)))
  cols = np.flatnonzero(mask.any(axis=(0, 1)))
  if rows.size == 0:
    return None
  grow = SOFT_MARGIN + 1
  return (slice(max(rows[0] - grow, 0), rows[-1] + grow + 1),
          slice(max(cols[0] - grow, 0), cols[-1] + grow + 1))


def _judge_object(planes: np.ndarray, classes: np.ndarray, obj: shapes.ObjectSpec,
                  background_rgb: np.ndarray) -> dict:
  frames, height, width = classes.shape
  color_index = list(shapes.COLORS).index(obj.color)
  observable = _motion_observable(frames, obj.motion)
  absent = {"color": False, "shape": False, "motion": False if observable else None,
            "details": {"present_frames": 0}}
  # Work on the region the color ever occupies: most of a frame is background.
  box = _crop_box(classes == color_index)
  if box is None:
    return absent
  classes, planes = classes[:, box[0], box[1]], planes[:, :, box[0], box[1]]
  origin = np.array([box[1].start, box[0].start])  # (x, y) of the crop in the frame

  blob = largest_blobs(classes == color_index)
  areas = blob.sum(axis=(1, 2))
  low, high = _expected_area_range(obj.shape, height, width)
  present = np.flatnonzero((areas >= low) & (areas <= high))
  details = {"present_frames": int(present.size)}
  if present.size == 0 or 2 * present.size < frames:
    return absent | {"details": details}
  details["area"] = float(areas[present].mean())

  alpha = _soft_mask(planes, blob, color_index, background_rgb)
  crops, corners = _windows(alpha, blob, present)
  corners = corners + origin
  spread = np.unique(np.linspace(0, present.size - 1, SHAPE_FRAMES).round().astype(int))
  errors = _template_errors(crops[spread], corners[spread])
  shape = min(errors, key=errors.get)
  details.update(shape=shape, shape_errors=errors,
                 fill_ratio=_fill_ratio(blob[present[spread]]))

  motion_ok = None
  if observable and present.size >= 2:
    _, track = _centroids(crops, corners)
    motion, measured = classify_motion(track, height, width)
    details.update(motion=motion, track=track.round(2).tolist(), **measured)
    if obj.motion in shapes.DIRECTIONS and present.size >= 3:
      details.update(pace(track, present, obj.motion, frames, height, width))
    motion_ok = motion == obj.motion
  elif observable:
    motion_ok = False
  return {"color": True, "shape": shape == obj.shape, "motion": motion_ok, "details": details}


def judge_video(video: np.ndarray, prompt: shapes.Prompt) -> list[dict]:
  """Per prompt object: booleans "color", "shape", "motion" (None: not observable), "details".

  video: (T, H, W, 3) uint8. Prompt colors must be distinct (objects are told apart by color).
  """
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
    raise ValueError(f"video must be uint8 (T, H, W, 3); got {video.dtype} {video.shape}")
  colors = [obj.color for obj in prompt.objects]
  if len(set(colors)) != len(colors):
    raise ValueError(f"prompt colors must be distinct to be judged; got {', '.join(colors)}")
  planes = _planes(video)
  classes = _classify(planes, prompt.background)
  # Measure the background too, so a global color drift cancels in the soft masks.
  # Every third pixel each way is plenty for a median and keeps large videos cheap.
  is_background = classes[:, ::3, ::3] == len(shapes.COLORS)
  if is_background.any():
    background_rgb = np.median(planes[:, :, ::3, ::3][:, is_background], axis=1)
  else:
    background_rgb = np.array(shapes.BACKGROUNDS[prompt.background], np.float32)
  return [_judge_object(planes, classes, obj, background_rgb) for obj in prompt.objects]


def _all(values) -> bool | None:
  values = list(values)
  return None if any(v is None for v in values) else all(values)


def judge_prompt(video: np.ndarray, prompt: shapes.Prompt) -> dict:
  """Prompt-level verdicts: each is True only if it holds for every object."""
  objects = judge_video(video, prompt)
  both = [None if o["motion"] is None else o["color"] and o["motion"] for o in objects]
  return {
      "color": _all(o["color"] for o in objects),
      "shape": _all(o["shape"] for o in objects),
      "motion": _all(o["motion"] for o in objects),
      "color_and_motion": _all(both),
      "objects": objects,
  }


def shape_margin(verdict: dict, shape: str) -> float:
  """How far a `judge_video` object verdict is from changing its shape reading: the best other
  template's error less that of `shape` (> 0: read as `shape`; near 0: a small change to the
  drawing flips it). NaN when the object is not there to be read."""
  errors = verdict["details"].get("shape_errors")
  if errors is None:
    return math.nan
  return min(e for name, e in errors.items() if name != shape) - errors[shape]


def judge_summary(results: list[dict]) -> dict:
  """Pass rates over `judge_prompt` results, skipping verdicts that were not observable."""
  summary = {"count": len(results)}
  for key in ("color", "shape", "motion", "color_and_motion"):
    verdicts = [r[key] for r in results if r[key] is not None]
    summary[key] = sum(verdicts) / len(verdicts) if verdicts else math.nan
  return summary
