"""Samplers that integrate the learned velocity field from noise (t=1) back to data (t=0).

Euler (first order, one model call per step), Heun (second order, two calls per step) and
DPM-Solver++(2M) (second order from the previous step's prediction, one call per step). All share
one signature and one time grid, so a config names the sampler and the step count separately.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sorajax.diffusion import flow

# velocity_fn(x_t, t, conditional) -> velocity; t (batch,) times or (batch, frames) per-frame times,
# conditional (batch,) bool: which examples see their prompt (True) and which the null prompt.
VelocityFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def time_grid(steps: int, shift: float = 1.0) -> np.ndarray:
  """Times 1 -> 0 (steps + 1 float32 points, computed on the host): uniform, then warped by SD3's
  shift.

  t -> shift * t / (1 + (shift - 1) * t) keeps both ends fixed; shift > 1 spends more steps at high
  noise, where the layout and the motion of a clip are decided.
  """
  if shift <= 0:
    raise ValueError(f"shift={shift} must be positive")
  if steps < 1:
    raise ValueError(f"steps={steps} must be at least 1")
  return flow.shift_times(np.linspace(1.0, 0.0, steps + 1), shift).astype(np.float32)


MAX_GUIDANCE = 50.0  # far past any useful scale: larger values only saturate the videos


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


def check_temperature(temperature: float, name: str = "temperature") -> None:
  """Sampling starts from noise scaled by `temperature`: 1 is the model's own prior; lower values
  keep nearer the most likely sample, with less variety between seeds."""
  if not 0.0 < temperature <= 1.0:
    raise ValueError(f"{name}={temperature} is out of range; use (0, 1]: 1 samples from the full "
                     "noise, lower values stay nearer the most likely clip")


def _check_start(start: int, steps: int) -> None:
  if not 0 <= start < steps:
    raise ValueError(f"start={start} must be in [0, steps={steps})")


def edit_start(steps: int, strength: float) -> int:
  """The first grid index for an SDEdit-style edit of `strength` in (0, 1]: the last
  round(strength * steps) steps (at least one) are run, so 1 is a full generation that keeps only
  the source's size, and small strengths keep its layout and colors."""
  if not 0.0 < strength <= 1.0:
    raise ValueError(f"strength={strength} must be in (0, 1]; 1 ignores the source, small values "
                     "keep more of it")
  return steps - max(1, round(strength * steps))


def _clean_frames(noise, given, given_latents):
  """Start point and the (batch, frames, 1, ...) mask of frames held clean, or (noise, None)."""
  if (given is None) != (given_latents is None):
    raise ValueError("pass both given and given_latents, or neither")
  if given is None:
    return noise, None
  if given.shape != noise.shape[:2] or given_latents.shape != noise.shape:
    raise ValueError(f"given {given.shape} / given_latents {given_latents.shape} must be "
                     f"{noise.shape[:2]} / {noise.shape}")
  keep = given.reshape(given.shape + (1,) * (noise.ndim - 2))
  return jnp.where(keep, given_latents, noise), keep


def _velocity_at(velocity_fn, x, t, guidance, given, given_time=0.0):
  """Guided velocity at the clip time t (a scalar); given frames are seen at `given_time`."""
  times = jnp.full((x.shape[0],), t, x.dtype)
  if given is not None:
    times = flow.frame_times(times, given, given_time)
  return guided_velocity(velocity_fn, x, times, guidance)


def euler(velocity_fn: VelocityFn, noise: jax.Array, steps: int, guidance: float = 1.0,
          shift: float = 1.0, given: jax.Array | None = None,
          given_latents: jax.Array | None = None, start: int = 0,
          given_time: float = 0.0) -> jax.Array:
  """First-order integration of dx/dt = v from t=1 to t=0 under `lax.fori_loop`; one velocity
  call per step.

  With `given` (batch, frames) bool, those frames of `given_latents` (shaped like `noise`) are held
  fixed throughout while the others are generated around them; the model sees them at time
  `given_time` (0: clean; > 0: the caller has noised them to that time, flow.given_noise).

  With `start` > 0 the integration begins at `time_grid(steps, shift)[start]`
  and `noise` is the point there, e.g. a source clip noised to that time (SDEdit; `edit_start`).
  Every sampler takes these arguments.
  """
  grid = jnp.asarray(time_grid(steps, shift))
  x, keep = _clean_frames(noise, given, given_latents)
  _check_start(start, steps)

  def body(i, x):
    t, t_next = grid[i], grid[i + 1]
    x_next = x + (t_next - t) * _velocity_at(velocity_fn, x, t, guidance, given, given_time)
    return x_next if keep is None else jnp.where(keep, x, x_next)

  return jax.lax.fori_loop(start, steps, body, x)


def heun(velocity_fn: VelocityFn, noise: jax.Array, steps: int, guidance: float = 1.0,
         shift: float = 1.0, given: jax.Array | None = None,
         given_latents: jax.Array | None = None, start: int = 0,
         given_time: float = 0.0) -> jax.Array:
  """Second-order trapezoidal steps (Heun, as in EDM): an Euler guess, then the mean of the
  velocities at both ends. The last step, into t=0, stays Euler: 2 * steps - 1 velocity calls."""
  grid = jnp.asarray(time_grid(steps, shift))
  x, keep = _clean_frames(noise, given, given_latents)
  _check_start(start, steps)
  hold = (lambda old, new: new) if keep is None else (lambda old, new: jnp.where(keep, old, new))

  def body(i, x):
    t, t_next = grid[i], grid[i + 1]
    v = _velocity_at(velocity_fn, x, t, guidance, given, given_time)
    guess = hold(x, x + (t_next - t) * v)
    v_next = _velocity_at(velocity_fn, guess, t_next, guidance, given, given_time)
    return hold(x, x + (t_next - t) * 0.5 * (v + v_next))

  x = jax.lax.fori_loop(start, steps - 1, body, x)
  v = _velocity_at(velocity_fn, x, grid[steps - 1], guidance, given, given_time)
  return hold(x, x + (grid[steps] - grid[steps - 1]) * v)


def _dpm_solver_2m_coefficients(steps: int, shift: float) -> np.ndarray:
  """(steps, 4) float64 rows (a, b, c_now, c_before): x_next = a x + b D, D = c_now x0_now +
  c_before x0_before, for DPM-Solver++(2M) (Lu et al. 2022) on the path alpha = 1 - t, sigma = t.

  With lambda = log(alpha / sigma) and h the step in lambda, the exact exponential-integrator step
  for a constant data prediction D is x_next = (sigma'/sigma) x + alpha' (1 - e^-h) D, and
  e^-h = sigma' alpha / (alpha' sigma), so a and b stay finite at t=1 and t=0. The second-order D
  extrapolates the last two data predictions by r = h_before / h; steps whose h (or h_before) is
  infinite, the first two and the last, take first-order D = x0_now.
  """
  t = time_grid(steps, shift).astype(np.float64)  # exactly 1 and 0 at the ends
  with np.errstate(divide="ignore"):
    lam = np.log1p(-t) - np.log(t)
  h = np.diff(lam)
  rows = []
  for i in range(steps):
    a = t[i + 1] / t[i]
    b = (1.0 - t[i + 1]) - t[i + 1] * (1.0 - t[i]) / t[i]
    c_now, c_before = 1.0, 0.0
    if i > 0 and np.isfinite(h[i - 1]) and np.isfinite(h[i]):
      half_inverse_r = 0.5 * h[i] / h[i - 1]
      c_now, c_before = 1.0 + half_inverse_r, -half_inverse_r
    rows.append((a, b, c_now, c_before))
  return np.asarray(rows)


def dpm_solver_2m(velocity_fn: VelocityFn, noise: jax.Array, steps: int, guidance: float = 1.0,
                  shift: float = 1.0, given: jax.Array | None = None,
                  given_latents: jax.Array | None = None, start: int = 0,
                  given_time: float = 0.0) -> jax.Array:
  """DPM-Solver++(2M): a multistep second-order solver that reuses the previous step's data
  prediction x0 = x - t v, so it costs one velocity call per step, like Euler."""
  table = jnp.asarray(_dpm_solver_2m_coefficients(steps, shift), jnp.float32)
  grid = jnp.asarray(time_grid(steps, shift))
  x, keep = _clean_frames(noise, given, given_latents)
  _check_start(start, steps)

  def body(i, carry):
    x, x0_before = carry
    t = grid[i]
    x0_now = x - t * _velocity_at(velocity_fn, x, t, guidance, given, given_time)
    a, b, c_now, c_before = table[i]
    # The first step taken has no previous prediction: first order, whatever `start` is.
    c_now, c_before = jnp.where(i == start, 1.0, c_now), jnp.where(i == start, 0.0, c_before)
    x_next = a * x + b * (c_now * x0_now + c_before * x0_before)
    return (x_next if keep is None else jnp.where(keep, x, x_next)), x0_now

  x, _ = jax.lax.fori_loop(start, steps, body, (x, jnp.zeros_like(x)))
  return x


SAMPLERS = {"euler": euler, "heun": heun, "dpm_solver_2m": dpm_solver_2m}


def get_sampler(name: str):
  """The sampler function for a config name (all share `euler`'s signature)."""
  if name not in SAMPLERS:
    raise ValueError(f"sampler={name!r} is unknown; valid: {', '.join(SAMPLERS)}")
  return SAMPLERS[name]


def velocity_calls(name: str, steps: int) -> int:
  """Model evaluations per sample (each a doubled batch under guidance): Heun needs two per step
  but one in its last."""
  return 2 * steps - 1 if name == "heun" else steps
