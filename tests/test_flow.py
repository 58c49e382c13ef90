"""Rectified flow objective and the Euler/CFG sampler against closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sorajax.diffusion import flow, samplers


def test_logit_normal_timesteps_in_open_interval_with_median_half():
  t = flow.sample_timesteps(jax.random.key(0), 20000)
  assert float(t.min()) > 0 and float(t.max()) < 1
  np.testing.assert_allclose(np.median(np.asarray(t)), 0.5, atol=0.02)
  shifted = flow.sample_timesteps(jax.random.key(0), 20000, logit_mean=1.0)
  assert np.median(np.asarray(shifted)) > 0.7


def test_interpolation_endpoints_and_velocity():
  x0, noise = jnp.full((2, 3), 2.0), jnp.full((2, 3), -1.0)
  np.testing.assert_allclose(flow.interpolate(x0, noise, jnp.zeros(2)), x0)
  np.testing.assert_allclose(flow.interpolate(x0, noise, jnp.ones(2)), noise)
  # d/dt of the path is the target velocity.
  eps = 1e-3
  t = jnp.array([0.3, 0.7])
  numeric = (flow.interpolate(x0, noise, t + eps) - flow.interpolate(x0, noise, t)) / eps
  np.testing.assert_allclose(numeric, flow.velocity_target(x0, noise), rtol=1e-2)


def test_perfect_predictor_has_zero_loss_and_wrong_one_does_not():
  x0 = jax.random.normal(jax.random.key(1), (4, 8))

  def oracle(x_t, t):  # recovers noise - x0 from x_t, knowing x0
    t = t[:, None]
    noise = (x_t - (1 - t) * x0) / t
    return noise - x0

  loss, _ = flow.flow_matching_loss(oracle, x0, jax.random.key(2))
  assert float(loss) < 1e-8
  bad, _ = flow.flow_matching_loss(lambda x_t, t: jnp.zeros_like(x_t), x0, jax.random.key(2))
  assert float(bad) > 0.5


def test_euler_with_exact_velocity_lands_on_data():
  x0 = jnp.array([[1.0, -2.0, 0.5]])
  noise = jnp.array([[0.3, 0.1, -0.7]])
  # The straight path's velocity is constant, so Euler is exact at any step count.
  out = samplers.euler(lambda x, t, c: jnp.broadcast_to(noise - x0, x.shape), noise, steps=3)
  np.testing.assert_allclose(out, x0, atol=1e-6)


def test_shifted_time_grid_keeps_ends_and_favours_high_noise():
  plain, shifted = samplers.time_grid(10), samplers.time_grid(10, shift=3.0)
  np.testing.assert_allclose([shifted[0], shifted[-1]], [1.0, 0.0], atol=1e-7)
  assert bool(jnp.all(jnp.diff(shifted) < 0))
  # More of the steps happen above t=0.5 than with the uniform grid.
  assert int(jnp.sum(shifted > 0.5)) > int(jnp.sum(plain > 0.5))
  # Euler on a straight path stays exact on any grid.
  x0, noise = jnp.array([[1.0, -2.0]]), jnp.array([[0.3, 0.1]])
  out = samplers.euler(lambda x, t, c: jnp.broadcast_to(noise - x0, x.shape), noise, steps=4,
                       shift=3.0)
  np.testing.assert_allclose(out, x0, atol=1e-6)
  with pytest.raises(ValueError, match="shift"):
    samplers.time_grid(4, shift=0.0)


def test_guidance_extrapolates_from_unconditional_in_one_batched_call():
  calls = []

  def velocity(x, t, conditional):
    calls.append(x.shape[0])
    return jnp.where(conditional[:, None], 3.0, 1.0) * jnp.tanh(x + t[:, None])

  x = jax.random.normal(jax.random.key(0), (3, 2))
  t = jnp.array([0.2, 0.5, 0.9])
  v = samplers.guided_velocity(velocity, x, t, guidance=2.0)
  assert calls == [6]  # both halves in one call
  np.testing.assert_allclose(v, 5.0 * jnp.tanh(x + t[:, None]), rtol=1e-6)  # 1 + 2 * (3 - 1)
  calls.clear()
  plain = samplers.guided_velocity(velocity, x, t, guidance=1.0)
  assert calls == [3]  # no unconditional half
  np.testing.assert_allclose(plain, 3.0 * jnp.tanh(x + t[:, None]), rtol=1e-6)

def test_given_frames_are_clean_at_time_zero_and_outside_the_loss():
  x0 = jax.random.normal(jax.random.key(1), (3, 4, 2, 2))  # (batch, frames, ...)
  given = jnp.array([[True, False, False, False], [False] * 4, [True, True, False, False]])
  seen = {}

  def oracle(x_t, t):  # exact for generated frames; records what the model was shown
    seen["x_t"], seen["t"] = x_t, t
    tt = t[:, :, None, None]
    noise = (x_t - (1 - tt) * x0) / jnp.maximum(tt, 1e-6)
    return noise - x0

  loss, metrics = flow.flow_matching_loss(oracle, x0, jax.random.key(2), given=given)
  assert float(loss) < 1e-8
  assert seen["t"].shape == (3, 4)
  np.testing.assert_array_equal(np.asarray(seen["t"])[np.asarray(given)], 0.0)
  assert bool(jnp.all(seen["t"][~given] > 0))
  np.testing.assert_allclose(seen["x_t"][0, 0], x0[0, 0])
  np.testing.assert_allclose(float(metrics["given_frames"]), 3 / 12)

  def wrong_on_given(x_t, t):  # garbage on given frames must not count
    return jnp.where(given[:, :, None, None], 100.0, oracle(x_t, t))

  loss, _ = flow.flow_matching_loss(wrong_on_given, x0, jax.random.key(2), given=given)
  assert float(loss) < 1e-8

  def wrong_on_frame_3(x_t, t):  # a generated frame's error counts
    return oracle(x_t, t).at[:, 3].add(1.0)

  loss, _ = flow.flow_matching_loss(wrong_on_frame_3, x0, jax.random.key(2), given=given)
  # Each example averages over the frames it generates: 1/3, 1/4 and 1/2 of them are wrong by 1.
  np.testing.assert_allclose(float(loss), (1 / 3 + 1 / 4 + 1 / 2) / 3, rtol=1e-5)


def test_given_noise_shows_given_frames_noised_to_a_small_time_and_keeps_them_out_of_the_loss():
  x0 = jax.random.normal(jax.random.key(1), (64, 3, 2, 2))
  given = jnp.zeros((64, 3), bool).at[:, 0].set(True)
  seen = {}

  def oracle(x_t, t):  # exact everywhere: recovers the noise from x_t, knowing x0
    seen["x_t"], seen["t"] = x_t, t
    tt = t[:, :, None, None]
    return (x_t - (1 - tt) * x0) / jnp.maximum(tt, 1e-6) - x0

  loss, _ = flow.flow_matching_loss(oracle, x0, jax.random.key(2), given=given, given_noise=0.2)
  assert float(loss) < 1e-6
  given_t = np.asarray(seen["t"])[:, 0]
  assert 0.0 <= given_t.min() and given_t.max() <= 0.2
  assert given_t.std() > 0.03  # drawn per example, not one level for the batch
  assert float(jnp.abs(seen["x_t"][:, 0] - x0[:, 0]).max()) > 0.01  # really noised
  # The generated frames see exactly what they would without it.
  flow.flow_matching_loss(oracle, x0, jax.random.key(2), given=given)
  clean_x_t = seen["x_t"]
  flow.flow_matching_loss(oracle, x0, jax.random.key(2), given=given, given_noise=0.2)
  np.testing.assert_array_equal(seen["x_t"][:, 1:], clean_x_t[:, 1:])
  with pytest.raises(ValueError, match=r"flow.given_noise=1.5 must be in \[0, 1\)"):
    flow.flow_matching_loss(oracle, x0, jax.random.key(2), given=given, given_noise=1.5)


def test_self_context_shows_a_share_of_examples_the_models_own_estimate_of_their_given_frames():
  x0 = jax.random.normal(jax.random.key(1), (64, 3, 2, 2))
  given = jnp.zeros((64, 3), bool).at[:, 0].set(True)
  calls = []

  def model(x_t, t):  # off by 7 at clip-level times (the estimate), exact per frame
    calls.append((x_t, t))
    if t.ndim == 1:
      return (x_t - (x0 + 7.0)) / t[:, None, None, None]  # its estimate of the clean clip: x0 + 7
    tt = t[:, :, None, None]
    return (x_t - (1 - tt) * x0) / jnp.maximum(tt, 1e-6) - x0

  loss, _ = flow.flow_matching_loss(model, x0, jax.random.key(2), given=given, self_context=0.5,
                                    self_context_time=0.4)
  assert float(loss) < 1e-6  # the generated frames are still scored against the true clip
  (_, estimate_t), (x_t, _) = calls
  assert 0.0 < float(estimate_t.min()) and float(estimate_t.max()) <= 0.4
  shown = np.asarray(x_t[:, 0] - x0[:, 0])  # given frames sit at time 0: what they show
  swapped = np.all(np.isclose(shown, 7.0, atol=1e-4), axis=(1, 2))
  assert np.all(swapped | np.all(np.abs(shown) < 1e-6, axis=(1, 2)))  # the estimate or the truth
  assert 0.25 < swapped.mean() < 0.75
  calls.clear()  # the generated frames see exactly what they would without it
  flow.flow_matching_loss(model, x0, jax.random.key(2), given=given)
  np.testing.assert_array_equal(x_t[:, 1:], calls[0][0][:, 1:])
  # No gradient flows through the estimate, though the prediction reads what the given frames
  # show: a weight only the estimate uses gets none.
  def loss_of(w):
    def reads_given(x_t, t):
      if t.ndim == 1:
        return (x_t - w * (x0 + 7.0)) / t[:, None, None, None]  # estimate: w * (x0 + 7)
      return model(x_t, t) + x_t[:, :1]
    return flow.flow_matching_loss(reads_given, x0, jax.random.key(2), given=given,
                                   self_context=1.0)[0]
  assert float(loss_of(1.0)) > 1.0  # the shown frames do reach the loss
  assert float(jax.grad(loss_of)(1.0)) == 0.0
  with pytest.raises(ValueError, match=r"flow.self_context=1.5 must be in \[0, 1\]"):
    flow.flow_matching_loss(model, x0, jax.random.key(2), given=given, self_context=1.5)
  with pytest.raises(ValueError, match=r"flow.self_context_time=1.0 must be in \(0, 1\)"):
    flow.flow_matching_loss(model, x0, jax.random.key(2), given=given, self_context=0.5,
                            self_context_time=1.0)


def test_euler_keeps_given_frames_and_lands_the_rest_on_data():
  x0 = jax.random.normal(jax.random.key(0), (2, 3, 4))
  noise = jax.random.normal(jax.random.key(1), (2, 3, 4))
  given = jnp.array([[True, False, False], [False, False, True]])
  times = []

  def velocity(x, t, c):
    times.append(t)
    return jnp.broadcast_to(noise - x0, x.shape)  # straight path: Euler is exact

  out = samplers.euler(velocity, noise, steps=3, given=given, given_latents=x0 + 5.0)
  np.testing.assert_allclose(out[0, 0], x0[0, 0] + 5.0)  # held exactly as given
  np.testing.assert_allclose(out[1, 2], x0[1, 2] + 5.0)
  np.testing.assert_allclose(out[0, 1:], x0[0, 1:], atol=1e-5)
  np.testing.assert_allclose(out[1, :2], x0[1, :2], atol=1e-5)
  assert times[0].shape == (2, 3)
  with pytest.raises(ValueError, match="both"):
    samplers.euler(velocity, noise, steps=2, given=given)
  # Given frames noised by the caller (flow.given_noise) are shown at their time, not at 0.
  times.clear()
  with jax.disable_jit():  # concrete times from inside the sampler's loop
    out = samplers.euler(velocity, noise, steps=3, given=given, given_latents=x0, given_time=0.1)
  np.testing.assert_allclose(out[0, 0], x0[0, 0])
  shown = np.asarray(times[0])
  np.testing.assert_allclose(shown[np.asarray(given)], 0.1)
  assert np.all(shown[~np.asarray(given)] == 1.0)


def test_frame_noise_has_unit_variance_and_the_asked_correlation_between_frames():
  rng = jax.random.key(3)
  plain = flow.frame_noise(rng, (2, 3, 4))
  np.testing.assert_array_equal(plain, jax.random.normal(rng, (2, 3, 4)))  # c=0: i.i.d. noise
  noise = np.asarray(flow.frame_noise(rng, (4000, 3, 8), correlation=0.6))
  np.testing.assert_allclose(noise.var(), 1.0, atol=0.03)
  corr = np.corrcoef(noise[:, 0].ravel(), noise[:, 2].ravel())[0, 1]
  np.testing.assert_allclose(corr, 0.6, atol=0.03)
  # Another frame axis: (frames, ...) noise for one sample, as the sampler draws it.
  single = np.asarray(flow.frame_noise(rng, (3, 4000), correlation=0.6, frame_axis=0))
  np.testing.assert_allclose(np.corrcoef(single[0], single[1])[0, 1], 0.6, atol=0.05)
  with pytest.raises(ValueError, match=r"frame_noise_correlation=1.0 must be in \[0, 1\)"):
    flow.frame_noise(rng, (2, 3), correlation=1.0)


def test_loss_with_correlated_noise_still_has_an_exact_oracle():
  x0 = jax.random.normal(jax.random.key(1), (4, 3, 8))
  shown_noise = []

  def oracle(x_t, t):  # recovers the noise from x_t, knowing x0
    t = t[:, None, None]
    noise = (x_t - (1 - t) * x0) / t
    shown_noise.append(noise)
    return noise - x0

  loss, _ = flow.flow_matching_loss(oracle, x0, jax.random.key(2), frame_correlation=0.9)
  assert float(loss) < 1e-8
  noise = np.asarray(shown_noise[0])  # the training noise: its frames nearly agree
  assert np.corrcoef(noise[:, 0].ravel(), noise[:, 1].ravel())[0, 1] > 0.7


def test_contrastive_term_subtracts_the_error_against_another_examples_flow():
  x0 = jax.random.normal(jax.random.key(1), (4, 3, 8))
  targets = []

  def oracle(x_t, t):
    t = t[:, None, None]
    target = (x_t - (1 - t) * x0) / t - x0
    targets.append(target)
    return target

  loss, _ = flow.flow_matching_loss(oracle, x0, jax.random.key(2), contrast_weight=0.05)
  target = np.asarray(targets[0])
  other = np.roll(target, 1, axis=0)  # example i is pushed away from example i-1's flow
  np.testing.assert_allclose(float(loss), -0.05 * np.square(target - other).mean(), rtol=1e-5)
  plain, _ = flow.flow_matching_loss(oracle, x0, jax.random.key(2))
  assert float(plain) < 1e-8 < -float(loss)


def test_motion_term_adds_the_error_of_the_frame_to_frame_change():
  x0 = jax.random.normal(jax.random.key(1), (4, 3, 8))
  bias = jnp.array([0.0, 1.0, -1.0])[None, :, None]  # a per-frame error: changes between frames
  seen = []

  def biased_oracle(x_t, t):
    t = t.reshape(t.shape + (1,) * (3 - t.ndim))  # (B,) or per frame (B, T)
    t = jnp.where(t > 0, t, 1.0)  # given frames (t=0) are outside the loss; keep them finite
    target = (x_t - (1 - t) * x0) / t - x0
    seen.append(target)
    return target + bias

  loss, metrics = flow.flow_matching_loss(biased_oracle, x0, jax.random.key(2), motion_weight=0.5)
  # Plain error: mean of 0, 1, 1 = 2/3; changes 1 and -2 square to 1 and 4, mean 2.5.
  np.testing.assert_allclose(float(loss), 2 / 3 + 0.5 * 2.5, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["motion_error"]), 2.5, rtol=1e-5)
  # A constant error does not change between frames, so the motion term adds nothing.
  constant, _ = flow.flow_matching_loss(lambda x_t, t: biased_oracle(x_t, t) - bias + 1.0, x0,
                                        jax.random.key(2), motion_weight=0.5)
  np.testing.assert_allclose(float(constant), 1.0, rtol=1e-5)
  # With frame 1 given, its error counts as 0 (its clean frame is known) and both steps next to
  # it are scored: errors 0, [0], -1 change by 0 and -1; the plain error averages frames 0 and 2.
  given = jnp.zeros((4, 3), bool).at[:, 1].set(True)
  loss, _ = flow.flow_matching_loss(biased_oracle, x0, jax.random.key(2), given=given,
                                    motion_weight=0.5)
  np.testing.assert_allclose(float(loss), 0.5 + 0.5 * 0.5, rtol=1e-5)


def test_time_shift_grows_with_sequence_length_and_moves_training_times_to_noise():
  assert flow.length_shift(3.0, 1000, 0) == 3.0  # no reference: the shift as given
  np.testing.assert_allclose(flow.length_shift(1.5, 1024, 256), 3.0)  # 4x tokens: 2x shift
  np.testing.assert_allclose(flow.shift_times(np.array([0.0, 0.5, 1.0]), 3.0), [0.0, 0.75, 1.0])
  with pytest.raises(ValueError, match="must be >= 0"):
    flow.length_shift(1.0, 10, -1)
  x0 = jnp.zeros((4096, 2))
  predict = lambda x_t, t: jnp.zeros_like(x_t)
  _, plain = flow.flow_matching_loss(predict, x0, jax.random.key(0))
  _, shifted = flow.flow_matching_loss(predict, x0, jax.random.key(0), time_shift=3.0)
  np.testing.assert_allclose(plain["t_mean"], 0.5, atol=0.02)
  assert float(shifted["t_mean"]) > 0.65
  seen = []
  record = lambda x_t, t: seen.append(np.asarray(t)) or jnp.zeros_like(x_t)
  flow.flow_matching_loss(record, x0, jax.random.key(0), time_sampling="uniform")
  flow.flow_matching_loss(record, x0, jax.random.key(0))
  uniform, logit_normal = seen
  # Uniform times fill (0, 1) evenly: a tenth below 0.1, where logit-normal puts about 1.4%.
  np.testing.assert_allclose(np.mean(uniform < 0.1), 0.1, atol=0.015)
  assert np.mean(logit_normal < 0.1) < 0.03
  with pytest.raises(ValueError, match="valid: logit_normal, uniform"):
    flow.flow_matching_loss(predict, x0, jax.random.key(0), time_sampling="cosine")
