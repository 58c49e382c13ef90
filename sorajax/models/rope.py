"""3D rotary position embedding (RoPE) for spacetime tokens.

Each attention head's channels are split into a time part and two equal space parts (height, width);
each part rotates channel pairs by angles proportional to the token's integer position on its axis.
A query-key dot product then depends on positions only through their difference, so attention can
find "the same place one frame later" with one rule at every grid size (the split follows the
t | h | w layout of Wan 2.1 and HunyuanVideo).
"""
import jax
import jax.numpy as jnp
import numpy as np


def axis_split(dim: int, name: str = "head_dim") -> tuple[int, int, int]:
  """Channels per axis (time, height, width), each even and summing to `dim`: height and width get
  2*(dim//6) each, time the rest. Shared by RoPE and the DiT's additive sin-cos table."""
  if dim % 2 or dim < 6:
    raise ValueError(f"{name}={dim} must be even and >= 6 for 3D positions")
  space = 2 * (dim // 6)
  return dim - 2 * space, space, space


def rope_angles(grid: tuple[int, int, int], head_dim: int, theta: float = 10_000.0) -> np.ndarray:
  """(gt*gh*gw, head_dim // 2) rotation angles, tokens row-major over (t, h, w) like `patchify`."""
  positions = np.meshgrid(*(np.arange(n) for n in grid), indexing="ij")
  parts = []
  for axis_positions, channels in zip(positions, axis_split(head_dim)):
    frequencies = theta ** (-np.arange(0, channels, 2, dtype=np.float64) / channels)
    parts.append(axis_positions.reshape(-1, 1) * frequencies[None, :])
  return np.concatenate(parts, axis=-1).astype(np.float32)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
  """Rotates (B, L, ..., head_dim) by angles (L, head_dim // 2); pairs are (i, i + head_dim/2).

  The dims between L and head_dim (heads; or stacked queries and keys, then heads) share angles.
  """
  shape = (1, angles.shape[0]) + (1,) * (x.ndim - 3) + (angles.shape[1],)
  cos, sin = jnp.cos(angles).reshape(shape), jnp.sin(angles).reshape(shape)
  first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)
  return rotated.astype(x.dtype)
