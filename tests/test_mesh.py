"""Mesh construction and logical-name -> sharding mapping."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from sorajax.parallel import mesh as mesh_lib


def test_fill_axis_and_errors():
  assert mesh_lib.resolve_mesh_shape({"data": -1, "tensor": 2}, 8) == (4, 1, 2, 1)
  with pytest.raises(ValueError, match="needs 4 devices"):
    mesh_lib.resolve_mesh_shape({"data": 4}, 8)
  with pytest.raises(ValueError, match="valid axes"):
    mesh_lib.resolve_mesh_shape({"model": 2}, 8)
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": -1})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1, "context": 1}


def test_logical_shardings_follow_rules_and_replicate_what_does_not_divide():
  mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
  rules = mesh_lib.DEFAULT_LOGICAL_RULES

  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
      w = self.param("w", nn.with_logical_partitioning(nn.initializers.ones, ("embed", "mlp")),
                     (16, 6))
      odd = self.param("odd", nn.with_logical_partitioning(nn.initializers.ones, ("embed", None)),
                       (3, 5))
      return x @ w, odd

  abstract = jax.eval_shape(Tiny().init, jax.random.key(0), jnp.ones((1, 16)))["params"]
  shardings = mesh_lib.logical_shardings(abstract, mesh, rules)
  assert shardings["w"].spec == P("fsdp", "tensor")
  assert shardings["odd"].spec == P(None, None)  # 3 rows do not split over 4 devices


def test_spreading_over_fsdp_splits_the_leaves_the_rules_leave_whole():
  mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
  rules = mesh_lib.DEFAULT_LOGICAL_RULES

  class Biases(nn.Module):
    @nn.compact
    def __call__(self, x):
      part = lambda name, names, shape: self.param(
          name, nn.with_logical_partitioning(nn.initializers.ones, names), shape)
      return (part("mlp", ("mlp",), (24,)), part("norm", ("norm",), (8,)),
              part("embed_mlp", ("embed", "mlp"), (16, 6)), part("odd", ("norm",), (6,)),
              part("None_kv", (None, "kv"), (12, 8)))

  abstract = jax.eval_shape(Biases().init, jax.random.key(0), jnp.ones((1, 16)))["params"]
  shardings = mesh_lib.logical_shardings(abstract, mesh, rules, spread_over="fsdp")
  assert shardings["mlp"].spec == P(("tensor", "fsdp"))  # 24 = 2 x 4 x 3
  assert shardings["norm"].spec == P("fsdp")
  assert shardings["embed_mlp"].spec == P("fsdp", "tensor")  # already uses fsdp: unchanged
  assert shardings["None_kv"].spec == P("fsdp", None)  # the largest dimension it divides
  assert [s.spec for s in jax.tree.leaves(shardings)].count(P(None)) == 1  # 6 does not split


def test_dcn_mesh_needs_one_granule_per_unit():
  with pytest.raises(ValueError, match=r"dcn_mesh: .*over 1 slices, or processes"):
    mesh_lib.make_mesh({"data": -1}, dcn_shape={"data": 2})
  # All ones: a plain mesh.
  assert mesh_lib.make_mesh({"fsdp": -1}, dcn_shape={"data": 1}).shape["fsdp"] == 8
