"""Samplers that integrate the learned velocity field from noise (t=1) back to data (t=0)."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# velocity_fn(x_t, t, conditional) -> velocity; t (batch,) times, conditional (batch,) bool: which
# examples see their prompt (True) and which the null prompt (False).
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
          shift: float = 1.0) -> jax.Array:
  """First-order integration of dx/dt = v from t=1 to t=0 under `lax.fori_loop`."""
  grid = time_grid(steps, shift)

  def body(i, x):
    t, t_next = grid[i], grid[i + 1]
    v = guided_velocity(velocity_fn, x, jnp.full((x.shape[0],), t, x.dtype), guidance)
    return x + (t_next - t) * v

  return jax.lax.fori_loop(0, steps, body, noise)
