"""Samplers on a 2D Gaussian mixture, whose exact rectified-flow velocity is known in closed
form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sorajax.diffusion import samplers

MEANS = jnp.asarray([[2.0, 0.0], [-1.0, 1.5], [-0.5, -2.0]])
STDS = jnp.asarray([0.3, 0.5, 0.2])
WEIGHTS = jnp.asarray([0.5, 0.3, 0.2])


def mixture_velocity(x, t, conditional=None):
  """E[noise - x0 | x_t] for x0 from the mixture, x_t = (1 - t) x0 + t noise; x (n, 2), t (n,).

  Given component k, (x0, x_t) is jointly Gaussian: x_t has mean (1-t) mu_k and per-dim variance
  S = (1-t)^2 s_k^2 + t^2, Cov(x0, x_t) = (1-t) s_k^2 and Cov(noise, x_t) = t.
  """
  del conditional
  t = t[:, None, None]
  centred = x[:, None, :] - (1 - t) * MEANS[None]  # (n, K, 2)
  variance = (1 - t) ** 2 * STDS[None, :, None] ** 2 + t ** 2
  log_w = jnp.log(WEIGHTS)[None] - jnp.sum(centred ** 2 / variance, -1) / 2 \
      - jnp.log(variance[..., 0])  # 2 dims: -2 * 0.5 log S
  posterior = jax.nn.softmax(log_w, axis=-1)[..., None]
  x0 = MEANS[None] + (1 - t) * STDS[None, :, None] ** 2 / variance * centred
  noise = t / variance * centred
  return jnp.sum(posterior * (noise - x0), axis=1)


@pytest.fixture(scope="module")
def noise_and_reference():
  noise = jax.random.normal(jax.random.key(0), (256, 2))
  # Far more steps than the samplers under test get: the ODE solution to about 1e-6.
  reference = jax.jit(lambda n: samplers.heun(mixture_velocity, n, 2000))(noise)
  return noise, reference


def test_exact_velocity_carries_noise_onto_the_mixture(noise_and_reference):
  _, samples = noise_and_reference
  nearest = jnp.argmin(jnp.sum((samples[:, None] - MEANS[None]) ** 2, -1), axis=1)
  distance = jnp.sqrt(jnp.sum((samples - MEANS[nearest]) ** 2, -1))
  assert float(jnp.max(distance / STDS[nearest])) < 5.0  # every sample lands in a component


@pytest.mark.parametrize("steps", [12, 24])
def test_second_order_samplers_beat_euler_at_equal_steps(noise_and_reference, steps):
  noise, reference = noise_and_reference
  error = {}
  for name in samplers.SAMPLERS:
    out = jax.jit(
        lambda n, name=name: samplers.get_sampler(name)(mixture_velocity, n, steps))(noise)
    error[name] = float(jnp.mean(jnp.linalg.norm(out - reference, axis=-1)))
  assert error["heun"] < 0.5 * error["euler"], error
  assert error["dpm_solver_2m"] < 0.5 * error["euler"], error


def test_samplers_keep_given_frames_and_share_one_signature():
  x0 = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 4)), jnp.float32)
  noise = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, 4)), jnp.float32)
  given = jnp.asarray([[True, False, False], [False, False, True]])
  calls = []

  def straight(x, t, conditional):  # the exact velocity towards x0 from this noise
    calls.append(t.shape)
    return jnp.broadcast_to(noise - x0, x.shape)

  for name in samplers.SAMPLERS:
    calls.clear()
    out = samplers.get_sampler(name)(straight, noise, 5, given=given, given_latents=x0)
    np.testing.assert_allclose(out, x0, atol=1e-5)  # straight paths are exact for every sampler
    assert all(shape == (2, 3) for shape in calls)  # given frames make the times per frame
    assert len(calls) == (1 if name != "heun" else 3)  # traced once per call site
  assert samplers.velocity_calls("heun", 5) == 9 and samplers.velocity_calls("euler", 5) == 5
  with pytest.raises(ValueError, match="valid: euler, heun, dpm_solver_2m"):
    samplers.get_sampler("ddim")


def test_dpm_solver_coefficients_are_finite_and_first_order_at_the_ends():
  table = samplers._dpm_solver_2m_coefficients(8, shift=3.0)
  assert np.all(np.isfinite(table))
  np.testing.assert_allclose(table[[0, 1, -1], 2:], [[1, 0]] * 3)  # first-order steps
  assert np.all(table[2:-1, 3] < 0)  # the others extrapolate from the previous prediction
  np.testing.assert_allclose(table[-1, :2], [0.0, 1.0])  # the last step lands on D
