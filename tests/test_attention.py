"""The blockwise (online-softmax) and splash attention paths against plain attention."""

import jax
import jax.extend.core  # noqa: F401 (jaxprs_in_params)
import jax.numpy as jnp
import numpy as np
import pytest

from sorajax.models import attention


def _qkv(batch=2, lq=40, lk=37, heads=2, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.standard_normal((batch, lq, heads, dim)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((batch, lk, heads, dim)), jnp.float32) for _ in range(2))
  return q, k, v


def _masks(batch, heads, lq, lk):
  rng = np.random.default_rng(1)
  padding = np.arange(lk)[None, :] < np.array([[lk - 9], [lk]])[:batch]
  full = rng.uniform(size=(batch, heads, lq, lk)) < 0.7
  full[..., 0] = True
  empty_row = np.ones((batch, 1, lq, lk), bool)
  empty_row[0, 0, 3] = False  # a row with every key masked: both paths average all real keys
  return {"none": None, "padding": jnp.asarray(padding)[:, None, None, :],
          "full": jnp.asarray(full), "empty_row": jnp.asarray(empty_row)}


@pytest.mark.parametrize("mask_kind", ["none", "padding", "full", "empty_row"])
def test_blockwise_equals_plain_attention_values_and_gradients(mask_kind):
  q, k, v = _qkv()
  mask = _masks(2, 2, 40, 37)[mask_kind]
  weights = jnp.asarray(np.random.default_rng(2).standard_normal(q.shape), jnp.float32)

  def loss(fn, q, k, v):
    return jnp.sum(fn(q, k, v, mask) * weights)

  blockwise = lambda q, k, v, mask: attention._blockwise(q, k, v, mask,
                                                         block=16)  # 3 blocks, padded
  for fn_a, fn_b in [(attention._xla, blockwise)]:
    np.testing.assert_allclose(jax.jit(fn_b)(q, k, v, mask), jax.jit(fn_a)(q, k, v, mask),
                               atol=1e-5, rtol=1e-5)
    grad_a = jax.jit(jax.grad(lambda *a: loss(fn_a, *a), argnums=(0, 1, 2)))(q, k, v)
    grad_b = jax.jit(jax.grad(lambda *a: loss(fn_b, *a), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(grad_a, grad_b):
      np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)


def test_blockwise_never_builds_a_full_logits_matrix():
  """Forward and backward hold one (Lq, block) slab of logits at a time, never (Lq, Lk)."""
  q, k, v = _qkv(batch=1, lq=512, lk=512, heads=1, dim=8)
  full_logits = 512 * 512

  def largest_intermediate(fn):
    jaxpr = jax.make_jaxpr(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, None))))(q, k, v)
    sizes = []

    def walk(jaxpr):
      for eqn in jaxpr.eqns:
        sizes.extend(int(np.prod(var.aval.shape)) for var in eqn.outvars
                     if hasattr(var.aval, "shape"))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
          walk(sub)

    walk(jaxpr.jaxpr)
    return max(sizes)

  assert largest_intermediate(attention._xla) >= full_logits  # the check can see a full matrix
  blockwise = lambda q, k, v, mask: attention._blockwise(q, k, v, mask, block=64)
  assert largest_intermediate(blockwise) <= 512 * 64


def test_blockwise_through_the_dispatch_point_in_bfloat16():
  q, k, v = (a.astype(jnp.bfloat16) for a in _qkv(lq=600, lk=600))
  out = jax.jit(attention.attend, static_argnames="implementation")(
      q, k, v, implementation="blockwise")
  assert out.dtype == jnp.bfloat16
  expected = attention._xla(q, k, v, None)
  np.testing.assert_allclose(out.astype(jnp.float32), expected.astype(jnp.float32), atol=2e-2)


@pytest.mark.parametrize("mask_kind", ["none", "padding"])
def test_splash_kernel_in_interpret_mode_equals_plain_attention(mask_kind):
  q, k, v = _qkv(lq=40, lk=37, dim=128)
  mask = _masks(2, 2, 40, 37)[mask_kind]
  out = jax.jit(lambda q, k, v: attention.splash(q, k, v, mask, interpret=True))(q, k, v)
  np.testing.assert_allclose(out, attention._xla(q, k, v, mask), atol=1e-5, rtol=1e-5)


def test_splash_rejects_other_masks_and_other_backends():
  q, k, v = _qkv(dim=128)
  with pytest.raises(ValueError, match="key-padding mask"):
    attention.splash(q, k, v, _masks(2, 2, 40, 37)["full"], interpret=True)
  if jax.default_backend() != "tpu":
    with pytest.raises(ValueError, match="needs a TPU.*use 'blockwise'"):
      attention.attend(q, k, v, implementation="splash")


@pytest.mark.parametrize("mask_kind", ["none", "padding"])
def test_pallas_kernels_run_per_device_on_a_mesh(mask_kind):
  """XLA cannot partition a Pallas kernel; `per_device` runs it on each device's examples and
  heads (here splash in interpret mode on 8 fake devices: batch over data, heads over tensor)."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from sorajax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  q, k, v = _qkv(batch=4, lq=40, lk=40, heads=2, dim=128)
  mask = jnp.asarray(np.arange(40)[None, :] < np.array([[31], [40], [12], [40]]))[:, None, None, :]
  mask = None if mask_kind == "none" else mask
  mesh = mesh_lib.make_mesh({"data": 4, "tensor": 2})
  kernel = lambda q, k, v, m: attention.splash(q, k, v, m, interpret=True)
  with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.DEFAULT_LOGICAL_RULES):
    out = jax.jit(lambda q, k, v, m: mesh_lib.per_device(kernel, mesh, q, k, v, m))(q, k, v, mask)
  np.testing.assert_allclose(out, attention._xla(q, k, v, mask), atol=1e-5, rtol=1e-5)
