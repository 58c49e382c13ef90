"""The DiT's loss and gradients on every kind of mesh equal one device's (float32, 8 fake CPUs)."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from sorajax import configuration
from sorajax.data import pipeline
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import objectives
from sorajax.training import state as state_lib
from tiny import DIT_CONFIG, tiny_config

# (mesh, context strategy): the tiny DiT has 2 heads and 8 tokens per clip, so Ulysses can split
# over at most 2 devices and ring over all 8.
MESHES = {
    "data": ({"data": 8}, "ulysses"),
    "fsdp": ({"fsdp": 8}, "ulysses"),
    "tensor": ({"data": 4, "tensor": 2}, "ulysses"),
    "context-ulysses": ({"data": 4, "context": 2}, "ulysses"),
    "context-ring": ({"context": 8}, "ring"),
    "fsdp2-tensor2-context2": ({"fsdp": 2, "tensor": 2, "context": 2}, "ring"),
}


def _config(vae_workdir, strategy):
  config = tiny_config(DIT_CONFIG)
  config.vae_workdir = vae_workdir
  config.dit.context_parallel = strategy
  return config


def loss_and_grads(config, mesh, workdir):
  objective = objectives.build_objective(config, mesh)
  objective.prepare(workdir)
  rules = mesh_lib.logical_rules(config.logical_rules)
  optimizer = state_lib.make_optimizer(config.train)
  state, _ = state_lib.init_sharded_state(objective.init_params, optimizer, 0.0,
                                          jax.random.key(0), mesh, rules)
  batch = next(pipeline.train_batches(config, mesh, objective.tokenizer))
  frozen = jax.device_put(objective.frozen, mesh_lib.replicated(mesh))
  loss = lambda params: objective.loss(params, frozen, batch, jax.random.key(1), 0)[0]
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    value, grads = jax.jit(jax.value_and_grad(loss))(state.params)
  return float(value), jax.device_get(grads)


@pytest.fixture(scope="module")
def single_device(vae_workdir, tmp_path_factory):
  mesh = mesh_lib.make_mesh({"data": 1}, devices=jax.devices()[:1])
  return loss_and_grads(_config(vae_workdir, "ulysses"), mesh, str(tmp_path_factory.mktemp("one")))


@pytest.mark.parametrize("name", list(MESHES))
def test_loss_and_gradients_equal_one_device(name, single_device, vae_workdir, tmp_path):
  shape, strategy = MESHES[name]
  loss, grads = loss_and_grads(_config(vae_workdir, strategy), mesh_lib.make_mesh(shape),
                               str(tmp_path))
  loss_1, grads_1 = single_device
  assert abs(loss - loss_1) <= 1e-5 * abs(loss_1)
  paths = jax.tree_util.tree_flatten_with_path(grads_1)[0]
  for (path, g1), g in zip(paths, jax.tree.leaves(grads)):
    error = np.linalg.norm(g - g1) / max(np.linalg.norm(g1), 1e-12)
    assert error <= 1e-5, (jax.tree_util.keystr(path), error)


def test_a_context_axis_that_cannot_split_the_clip_is_a_config_error(vae_workdir):
  config = _config(vae_workdir, "ulysses")
  with pytest.raises(configuration.ConfigError, match="ulysses attention needs the 2 heads"):
    objectives.build_objective(config, mesh_lib.make_mesh({"data": 2, "context": 4}))
  config.dit.context_parallel = "ring"  # ring splits the 8 tokens over 4 whatever the heads
  objectives.build_objective(config, mesh_lib.make_mesh({"data": 2, "context": 4}))
  with pytest.raises(configuration.ConfigError, match=r"num_heads=2 does not split over "
                     r"tensor=4; use a tensor size that divides it \(e.g. 2\)"):
    objectives.build_objective(config, mesh_lib.make_mesh({"data": 2, "tensor": 4}))
