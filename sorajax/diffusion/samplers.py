"""Samplers that integrate the learned velocity field from noise (t=1) back to data (t=0)."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from sorajax.diffusion import flow

# velocity_fn(x_t, t, conditional) -> velocity; t (batch,) times or (batch, frames) per-frame times,
# conditional (batch,) bool: which examples see their prompt (True) and which the null prompt.
VelocityFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def time_grid(steps: int, shift: float = 1.0) -> jax.Array:
  """Times 1 -> 0 (steps + 1 points): uniform, then warped by SD3's shift.

  t -> shift * t / (1 + (shift - 1) * t) keeps both ends fixed; shift > 1 spends more steps at high
  noise, where the layout and the motion of a clip are decided.
  """
  if shift <= 0:
    raise ValueError(f"shift={shift} must be positive")
  t = jnp.linspace(1.0, 0.0, steps + 1)
  return shift * t / (1.0 + (shift - 1.0) * t)


def guided_velocity(velocity_fn: VelocityFn, x: jax.Array, t: jax.Array,
                    guidance: float) -> jax.Array:
  """Classifier-free guidance: v_uncond + g * (v_cond - v_uncond).

  Both passes run as one call on a doubled batch (one larger matmul per layer instead of two);
  g = 1 skips the unconditional half.
  """
  batch = x.shape[0]
  if guidance == 1.0:
    return velocity_fn(x, t, jnp.ones((batch,), bool))
  both = velocity_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                     jnp.arange(2 * batch) < batch)
  conditional, unconditional = both[:batch], both[batch:]
  return unconditional + guidance * (conditional - unconditional)


def euler(velocity_fn: VelocityFn, noise: jax.Array, steps: int, guidance: float = 1.0,
          shift: float = 1.0, given: jax.Array | None = None,
          given_latents: jax.Array | None = None) -> jax.Array:
  """First-order integration of dx/dt = v from t=1 to t=0 under `lax.fori_loop`.

  With `given` (batch, frames) bool, those frames of `given_latents` (shaped like `noise`) are held
  clean at t=0 throughout while the others are generated around them.
  """
  grid = time_grid(steps, shift)
  batch = noise.shape[0]
  if (given is None) != (given_latents is None):
    raise ValueError("pass both given and given_latents, or neither")
  if given is not None:
    if given.shape != noise.shape[:2] or given_latents.shape != noise.shape:
      raise ValueError(f"given {given.shape} / given_latents {given_latents.shape} must be "
                       f"{noise.shape[:2]} / {noise.shape}")
    keep = given.reshape(given.shape + (1,) * (noise.ndim - 2))
    noise = jnp.where(keep, given_latents, noise)

  def body(i, x):
    t, t_next = grid[i], grid[i + 1]
    times = jnp.full((batch,), t, x.dtype)
    if given is not None:
      times = flow.frame_times(times, given)
    x_next = x + (t_next - t) * guided_velocity(velocity_fn, x, times, guidance)
    return x_next if given is None else jnp.where(keep, x, x_next)

  return jax.lax.fori_loop(0, steps, body, noise)
