"""Rectified flow: straight paths from data (t=0) to noise (t=1), learned as a velocity field.

x_t = (1 - t) * x0 + t * noise, and the model predicts v = dx_t/dt = noise - x0. Training times are
logit-normal (SD3), which spends most steps in the middle of the path where the target is hardest.

The noise may be correlated across frames (PYoCo's mixed prior, Ge et al. 2023): every frame's
noise shares a common part, so the starting noise already agrees between frames the way video
frames agree, and the model does not have to make each frame's layout agree from scratch.

The loss may also score the frame-to-frame change of the error (`motion_weight`): the plain
per-value error is dominated by appearance, which a model gets from the color and shape words
early, while the direction words only pay off in how the frames differ.

Frames may be *given*: they stay clean at t=0 while the rest of the clip is noised, the model sees
per-frame times, and the loss counts only the frames it has to generate. With `given_noise` > 0 each
example's given frames are noised a little, to a time drawn from [0, given_noise], and the model is
told that time: it learns to continue frames that are only nearly right (its own earlier output,
re-encoded), the usual cure for a chunk-by-chunk rollout's drift (noise augmentation, as in
GameNGen). On the demo it helped connect more than rollouts (bench/RESULTS.md).

With `self_context` > 0 that share of examples is given the model's own estimate of its given
frames instead of the true ones: the whole clip noised to a time in [0, self_context_time], the
clean clip read off one velocity prediction (x0 = x_s - s v, no gradient), and its given frames
handed over. The generated frames are still scored against the true clip, so the model learns to
continue a context with its own kind of errors (soft edges, smeared shapes) into clean frames
rather than copy them forward, which is what a rollout's drift is made of. It is a one-step
stand-in for training on the model's own rollouts (scheduled sampling; Self Forcing, Huang et al.
2025), at the cost of one more forward pass per step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


# "logit_normal": t = sigmoid(Normal(mean, std)), most steps mid-path (SD3); "uniform": t ~ U(0, 1),
# the original rectified flow.
TIME_SAMPLING = ("logit_normal", "uniform")


def check_time_sampling(name: str) -> None:
  if name not in TIME_SAMPLING:
    raise ValueError(f"flow.time_sampling={name!r} is unknown; valid: {', '.join(TIME_SAMPLING)}")


def sample_timesteps(rng: jax.Array, batch: int, logit_mean: float = 0.0,
                     logit_std: float = 1.0) -> jax.Array:
  """t = sigmoid(n), n ~ Normal(logit_mean, logit_std): shape (batch,), strictly inside (0, 1)."""
  return jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(rng, (batch,)))


def shift_times(t, shift: float):
  """SD3's time shift, t -> shift * t / (1 + (shift - 1) * t), for numpy or jax arrays: both ends
  stay fixed and shift > 1 moves times towards noise."""
  return shift * t / (1.0 + (shift - 1.0) * t)


def length_shift(shift: float, num_tokens: int, reference_tokens: int) -> float:
  """The time shift for a sequence of `num_tokens`: `shift` at `reference_tokens`, growing with the
  square root of the length (SD3's resolution rule: n times more tokens of the same content keep
  about sqrt(n) times more signal at a given noise level); reference_tokens 0 means no scaling."""
  if shift <= 0:
    raise ValueError(f"shift={shift} must be positive")
  if reference_tokens < 0:
    raise ValueError(f"shift_reference_tokens={reference_tokens} must be >= 0 (0: no scaling)")
  return shift if reference_tokens == 0 else shift * (num_tokens / reference_tokens) ** 0.5


def check_frame_correlation(correlation: float) -> None:
  if not 0.0 <= correlation < 1.0:
    raise ValueError(f"flow.frame_noise_correlation={correlation} must be in [0, 1) "
                     "(0: independent noise per frame)")


def check_given_noise(level: float, name: str = "flow.given_noise") -> None:
  if not 0.0 <= level < 1.0:
    raise ValueError(f"{name}={level} must be in [0, 1) (0: given frames stay clean)")


def check_self_context(share: float, time: float) -> None:
  if not 0.0 <= share <= 1.0:
    raise ValueError(f"flow.self_context={share} must be in [0, 1] (0: given frames are the true "
                     "ones)")
  if not 0.0 < time < 1.0:
    raise ValueError(f"flow.self_context_time={time} must be in (0, 1): the highest noise level "
                     "the model's own estimate of the given frames is made from")


def check_anchor(share: float, temporal_patch: int) -> None:
  if not 0.0 <= share <= 1.0:
    raise ValueError(f"flow.anchor={share} must be in [0, 1]: the share of video examples shown "
                     "an anchor frame (0: none)")
  if share and temporal_patch != 1:
    raise ValueError(f"flow.anchor needs dit.patch[0] == 1 (an anchor is one latent frame), not "
                     f"{temporal_patch}; set --config.flow.anchor=0 or a temporal patch of 1")


def check_motion_weight(weight: float) -> None:
  if weight < 0:
    raise ValueError(f"flow.motion_weight={weight} must be >= 0 (0: off); a negative weight "
                     "rewards errors that change between frames")


def frame_noise(rng: jax.Array, shape: tuple[int, ...], correlation: float = 0.0,
                frame_axis: int = 1, dtype=jnp.float32) -> jax.Array:
  """Unit-variance Gaussian noise whose frames (along `frame_axis`) correlate by `correlation`.

  noise = sqrt(1 - c) * independent + sqrt(c) * shared, the shared part drawn once per clip; c = 0
  is plain i.i.d. noise (the same draw as `jax.random.normal(rng, shape)`).
  """
  check_frame_correlation(correlation)
  if correlation == 0.0:
    return jax.random.normal(rng, shape, dtype)
  own_rng, shared_rng = jax.random.split(rng)
  shared_shape = shape[:frame_axis] + (1,) + shape[frame_axis + 1:]
  own = jax.random.normal(own_rng, shape, dtype)
  shared = jax.random.normal(shared_rng, shared_shape, dtype)
  return (1.0 - correlation) ** 0.5 * own + correlation ** 0.5 * shared


def _broadcast_time(t: jax.Array, like: jax.Array) -> jax.Array:
  return t.reshape(t.shape + (1,) * (like.ndim - t.ndim))


def interpolate(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """x_t for times t of shape (B,) or per frame (B, T)."""
  t = _broadcast_time(t, x0)
  return (1.0 - t) * x0 + t * noise


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
  return noise - x0


def frame_times(t: jax.Array, given: jax.Array, given_time=0.0) -> jax.Array:
  """Per-frame times (B, T): the clip's time t (B,), and `given_time` (a scalar or (B,)) where a
  frame is given (B, T)."""
  given_time = jnp.asarray(given_time, t.dtype)
  return jnp.where(given, given_time[..., None] if given_time.ndim else given_time, t[:, None])


def _own_estimate(predict_velocity, x0, given, rng, share: float, max_time: float,
                  frame_correlation: float) -> jax.Array:
  """x0 with the given frames of a `share` of examples replaced by the model's one-step estimate
  of them from the clip noised (by the run's prior) to a time uniform in [0, max_time]."""
  pick_rng, time_rng, noise_rng = jax.random.split(rng, 3)
  s = max_time * jax.random.uniform(time_rng, (x0.shape[0],))
  x_s = interpolate(x0, frame_noise(noise_rng, x0.shape, frame_correlation, dtype=x0.dtype), s)
  estimate = jax.lax.stop_gradient(
      x_s - _broadcast_time(s, x0) * predict_velocity(x_s, s).astype(x0.dtype))
  swap = given & jax.random.bernoulli(pick_rng, share, (x0.shape[0],))[:, None]
  return jnp.where(_broadcast_time(swap, x0), estimate, x0)


def flow_matching_loss(predict_velocity, x0: jax.Array, rng: jax.Array, logit_mean: float = 0.0,
                       logit_std: float = 1.0,
                       given: jax.Array | None = None,
                       frame_correlation: float = 0.0,
                       contrast_weight: float = 0.0,
                       motion_weight: float = 0.0,
                       time_shift: float = 1.0,
                       time_sampling: str = "logit_normal",
                       given_noise: float = 0.0,
                       self_context: float = 0.0,
                       self_context_time: float = 0.5,
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean squared velocity error; `predict_velocity(x_t, t)` closes over the conditioning.

  x0 is (B, T, ...). `given` (B, T) bool marks frames handed to the model clean; they are not
  part of the loss, and t is then passed per frame. Each example's error is averaged over the
  frames it generates, so conditioned and unconditioned examples weigh the same.
  `frame_correlation` correlates the noise across frames (`frame_noise`). `contrast_weight` > 0
  subtracts that much of the error against the next example's target (contrastive flow matching,
  Stoica et al. 2025), pushing each prediction away from other captions' flows.
  `motion_weight` > 0 adds that much of the squared error of the frame-to-frame change (the error's
  difference between consecutive frames, a given frame's error counting as 0, so the steps into
  and out of given frames are scored): a positive quadratic form in the error, so the
  best predictor stays the same, but motion, which a per-value error weighs little next to
  appearance, gets a larger share of the gradient. Training times come from `time_sampling`
  (TIME_SAMPLING), then `shift_times(t, time_shift)`. `given_noise` > 0 noises each example's given
  frames to a time uniform in [0, given_noise]; `self_context` > 0 gives that share of examples the
  model's own estimate of their given frames (module docstring).
  """
  time_rng, noise_rng = jax.random.split(rng)
  check_time_sampling(time_sampling)
  if time_sampling == "uniform":
    t = jax.random.uniform(time_rng, (x0.shape[0],))
  else:
    t = sample_timesteps(time_rng, x0.shape[0], logit_mean, logit_std)
  t = shift_times(t, time_shift)
  noise = frame_noise(noise_rng, x0.shape, frame_correlation, dtype=x0.dtype)
  check_given_noise(given_noise)
  given_time = 0.0
  if given is not None and given_noise:  # its own key: runs without it keep their random stream
    given_time = given_noise * jax.random.uniform(jax.random.fold_in(rng, 1), (x0.shape[0],))
  check_self_context(self_context, self_context_time)
  shown = x0  # what the given frames show the model
  if given is not None and self_context:
    shown = _own_estimate(predict_velocity, x0, given, jax.random.fold_in(rng, 2), self_context,
                          self_context_time, frame_correlation)
  # A clip-level t keeps the model's cheap path.
  times = t if given is None else frame_times(t, given, given_time)
  prediction = predict_velocity(interpolate(shown, noise, times), times).astype(jnp.float32)
  target = velocity_target(x0, noise)
  miss = prediction - target
  error = jnp.square(miss)
  if contrast_weight:
    other = jnp.roll(target, 1, axis=0)  # another example's flow (another caption, place, noise)
    error = error - contrast_weight * jnp.square(prediction - other)
  if given is None:
    given = jnp.zeros(x0.shape[:2], bool)
  generated = _broadcast_time(~given, error).astype(jnp.float32)
  axes = tuple(range(1, error.ndim))
  per_example = (error * generated).sum(axes) / jnp.maximum(
      generated.sum(axes) * error[0, 0].size, 1.0)
  metrics = {"t_mean": t.mean(), "given_frames": given.mean()}
  if motion_weight and x0.shape[1] > 1:
    # A given frame's implied clean frame (x_t - t v at t=0) is exact, so its miss counts as 0 and
    # the step into or out of it is scored too: the frames next to given ones must lead into them.
    miss = miss * generated
    pairs = _broadcast_time(~given[:, 1:] | ~given[:, :-1], error[:, 1:]).astype(jnp.float32)
    change = jnp.square(miss[:, 1:] - miss[:, :-1]) * pairs
    motion_error = change.sum(axes) / jnp.maximum(pairs.sum(axes) * error[0, 0].size, 1.0)
    per_example = per_example + motion_weight * motion_error
    metrics["motion_error"] = motion_error.mean()  # unweighted, to compare runs across weights
  return per_example.mean(), metrics
