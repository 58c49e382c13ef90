"""Spatial tiling: code frames too large for one pass as overlapping tiles, cross-faded together.

A tile is cut from the input (latents to decode, or pixels to encode) with `overlap` input pixels
shared with each neighbour, coded on its own by any function (a jitted `vae.decode`, a
`ChunkedCoder`), and placed at its output position with weights that ramp linearly across the
overlaps; the weighted sum is divided by the summed weights. The VAE's receptive field is wider than
the overlap, so two tiles disagree a little near their edges; the ramps turn that into a gradual
blend instead of a visible step. Tiles all have one shape (the last in a row is moved back to end at
the border), so the coder compiles once.
"""
from collections.abc import Callable

import numpy as np


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
  """Starts of tiles of `tile` pixels covering [0, size), neighbours sharing at least `overlap`."""
  if not 0 <= overlap < tile:
    raise ValueError(f"tile overlap={overlap} must be in [0, tile={tile})")
  if tile >= size:
    return [0]
  starts = list(range(0, size - tile, tile - overlap))
  return starts + [size - tile]


def _ramp(length: int, fade: int, inner_left: bool, inner_right: bool) -> np.ndarray:
  """Weights (length,) of a tile along one axis: rising over `fade` after an edge inside the frame,
  falling over `fade` before one, 1 elsewhere and along the frame's own border."""
  weights = np.ones(length, np.float32)
  if fade:
    rise = (np.arange(fade, dtype=np.float32) + 0.5) / fade
    if inner_left:
      weights[:fade] = rise
    if inner_right:
      weights[-fade:] = np.minimum(weights[-fade:], rise[::-1])
  return weights


def code_tiled(code: Callable, x, tile: int, overlap: int, up: int = 1,
               down: int = 1) -> np.ndarray:
  """`code(x)` for x (B, T, H, W, C), computed as spatial tiles of tile x tile input pixels.

  `code` maps an input tile of side n to an output of side n*up/down (decode: up = the VAE's
  spatial factor; encode: down = it); tile and overlap must then be multiples of `down`.
  """
  for name, value in (("tile", tile), ("overlap", overlap)):
    if value % down:
      raise ValueError(f"tile {name}={value} must be a multiple of the spatial factor {down}")
  height, width = x.shape[2:4]
  th, tw = min(tile, height), min(tile, width)
  fade = overlap * up // down
  out = None
  for y0 in tile_starts(height, tile, overlap):
    for x0 in tile_starts(width, tile, overlap):
      piece = np.asarray(code(x[:, :, y0:y0 + th, x0:x0 + tw]), np.float32)
      if out is None:
        shape = piece.shape[:2] + (height * up // down, width * up // down) + piece.shape[4:]
        out = np.zeros(shape, np.float32)
        total = np.zeros(shape[2:4], np.float32)
      weight = np.outer(_ramp(th * up // down, fade, y0 > 0, y0 + th < height),
                        _ramp(tw * up // down, fade, x0 > 0, x0 + tw < width))
      ys = slice(y0 * up // down, (y0 + th) * up // down)
      xs = slice(x0 * up // down, (x0 + tw) * up // down)
      out[:, :, ys, xs] += piece * weight[:, :, None]
      total[ys, xs] += weight
  return out / total[:, :, None]
