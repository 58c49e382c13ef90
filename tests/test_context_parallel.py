"""Context-parallel attention (Ulysses, ring) on 8 fake devices against plain attention."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sorajax.models import attention
from sorajax.parallel import context
from sorajax.parallel import mesh as mesh_lib

RULES = mesh_lib.logical_rules(mesh_lib.DEFAULT_LOGICAL_RULES)


def _inputs(batch=2, length=48, heads=8, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v, w = (jnp.asarray(rng.standard_normal((batch, length, heads, dim)), jnp.float32)
                for _ in range(4))
  padding = jnp.asarray(np.arange(length)[None, :] < np.array([[length - 13], [length]]))
  return q, k, v, w, padding[:, None, None, :]


def _value_and_grads(fn, q, k, v, w, mask):
  loss = lambda q, k, v: jnp.sum(fn(q, k, v, mask) * w)
  return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize("strategy", context.STRATEGIES)
@pytest.mark.parametrize("shape", [{"context": 8}, {"context": 4, "tensor": 2},
                                   {"data": 2, "context": 2, "tensor": 2}])
@pytest.mark.parametrize("masked", [False, True])
def test_context_parallel_equals_plain_attention(strategy, shape, masked):
  q, k, v, w, mask = _inputs()
  mask = mask if masked else None
  expected = jax.jit(lambda *a: _value_and_grads(attention._xla, *a))(q, k, v, w, mask)
  mesh = mesh_lib.make_mesh(shape)
  fn = lambda q, k, v, mask: context.attend(q, k, v, mask, strategy=strategy)
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    got = jax.jit(lambda *a: _value_and_grads(fn, *a))(q, k, v, w, mask)
    program = str(jax.make_jaxpr(lambda *a: _value_and_grads(fn, *a))(q, k, v, w, mask))
  assert ("ppermute" if strategy == "ring" else "all_to_all") in program  # it did split
  np.testing.assert_allclose(got[0], expected[0], rtol=1e-5)
  for a, b in zip(got[1], expected[1]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_outside_a_context_mesh_it_is_plain_attention():
  q, k, v, _, mask = _inputs()
  with jax.set_mesh(mesh_lib.make_mesh({"data": -1})), nn.logical_axis_rules(RULES):
    out = jax.jit(lambda *a: context.attend(*a, strategy="ring"))(q, k, v, mask)
  np.testing.assert_allclose(out, attention._xla(q, k, v, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("length, heads, strategy, shape, needle", [
    (44, 8, "ring", {"context": 8}, "44 tokens does not split over context=8; use a context "
                                    "size that divides it (e.g. 4)"),
    (48, 6, "ulysses", {"context": 4, "tensor": 2}, "use context_parallel='ring'"),
    (48, 8, "stripes", {"context": 8}, "valid: ulysses, ring"),
])
def test_bad_splits_name_a_valid_alternative(length, heads, strategy, shape, needle):
  q, k, v, _, _ = _inputs(length=length, heads=heads)
  with jax.set_mesh(mesh_lib.make_mesh(shape)), nn.logical_axis_rules(RULES):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
      jax.jit(lambda *a: context.attend(*a, strategy=strategy))(q, k, v)
