"""Rectified flow: straight paths from data (t=0) to noise (t=1), learned as a velocity field.

x_t = (1 - t) * x0 + t * noise, and the model predicts v = dx_t/dt = noise - x0. Training times are
logit-normal (SD3), which spends most steps in the middle of the path where the target is hardest.

Frames may be *given*: they stay clean at t=0 while the rest of the clip is noised, the model sees
per-frame times, and the loss counts only the frames it has to generate.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_timesteps(rng: jax.Array, batch: int, logit_mean: float = 0.0,
                     logit_std: float = 1.0) -> jax.Array:
  """t = sigmoid(n), n ~ Normal(logit_mean, logit_std): shape (batch,), strictly inside (0, 1)."""
  return jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(rng, (batch,)))


def _broadcast_time(t: jax.Array, like: jax.Array) -> jax.Array:
  return t.reshape(t.shape + (1,) * (like.ndim - t.ndim))


def interpolate(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """x_t for times t of shape (B,) or per frame (B, T)."""
  t = _broadcast_time(t, x0)
  return (1.0 - t) * x0 + t * noise


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
  return noise - x0


def frame_times(t: jax.Array, given: jax.Array) -> jax.Array:
  """Per-frame times (B, T): the clip's time t (B,), and 0 where a frame is given (B, T)."""
  return jnp.where(given, 0.0, t[:, None])


def flow_matching_loss(predict_velocity, x0: jax.Array, rng: jax.Array, logit_mean: float = 0.0,
                       logit_std: float = 1.0,
                       given: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean squared velocity error; `predict_velocity(x_t, t)` closes over the conditioning.

  x0 is (B, T, ...). `given` (B, T) bool marks frames handed to the model clean; they are not
  part of the loss, and t is then passed per frame. Each example's error is averaged over the
  frames it generates, so conditioned and unconditioned examples weigh the same.
  """
  time_rng, noise_rng = jax.random.split(rng)
  t = sample_timesteps(time_rng, x0.shape[0], logit_mean, logit_std)
  noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
  times = t if given is None else frame_times(t, given)  # a clip-level t keeps the model's cheap path
  prediction = predict_velocity(interpolate(x0, noise, times), times)
  error = jnp.square(prediction.astype(jnp.float32) - velocity_target(x0, noise))
  if given is None:
    given = jnp.zeros(x0.shape[:2], bool)
  generated = _broadcast_time(~given, error).astype(jnp.float32)
  axes = tuple(range(1, error.ndim))
  per_example = (error * generated).sum(axes) / jnp.maximum(
      generated.sum(axes) * error[0, 0].size, 1.0)
  return per_example.mean(), {"t_mean": t.mean(), "given_frames": given.mean()}
