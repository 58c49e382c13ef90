"""Train state, optimizer, and the abstract-first way both are created and sharded."""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from sorajax.parallel import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any  # None when config.train.ema_decay == 0

  @property
  def inference_params(self):
    """The weights samplers use: the EMA when there is one."""
    return self.params if self.ema_params is None else self.ema_params


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train.learning_rate, warmup_steps=train.warmup_steps,
      decay_steps=max(train.num_steps, train.warmup_steps + 1), end_value=0.1 * train.learning_rate)
  return optax.chain(
      optax.clip_by_global_norm(train.grad_clip),
      optax.adamw(schedule, b1=0.9, b2=0.99, weight_decay=train.weight_decay))


def ema_update(ema, params, decay: float, step: jax.Array):
  """EMA with warm-up: early on the average follows the weights closely, later it smooths them."""
  decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def create_state(init_params, optimizer: optax.GradientTransformation, ema_decay: float, rng):
  """Builds the (boxed) initial state; run under `jax.eval_shape` first, then jitted and sharded."""
  boxed = init_params(rng)
  params = nn.meta.unbox(boxed)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=boxed,
      opt_state=optimizer.init(params),
      ema_params=boxed if ema_decay > 0 else None)


def with_params(state: TrainState, params) -> TrainState:
  """A fresh `state` starting from `params` (placed as its own are); its EMA starts there too."""
  if params is state.params:
    return state
  # The EMA gets copies: the step donates the state, and one buffer cannot be donated twice.
  ema = None if state.ema_params is None else jax.tree.map(lambda x: x.copy(), params)
  return state.replace(params=params, ema_params=ema)


def state_shardings(abstract_boxed_state: TrainState, mesh, rules) -> TrainState:
  """Shardings for every leaf: params and EMA from their logical names (and over fsdp wherever
  it divides), optimizer moments like the params they track, scalars replicated."""
  # Every leaf split over fsdp, even those whose logical axes do not name it (biases, scales).
  param_shardings = mesh_lib.logical_shardings(abstract_boxed_state.params, mesh, rules,
                                               spread_over="fsdp")
  params_struct = jax.tree.structure(param_shardings)

  def opt_leaf_shardings(subtree):
    # Optimizer moments mirror the params tree; anything else (counts) is replicated.
    if jax.tree.structure(subtree) == params_struct:
      return param_shardings
    return jax.tree.map(lambda _: mesh_lib.replicated(mesh), subtree)

  opt_state = abstract_boxed_state.opt_state
  opt_shardings = jax.tree.map(
      opt_leaf_shardings, opt_state,
      is_leaf=lambda x: x is not opt_state and jax.tree.structure(x) == params_struct)
  return TrainState(
      step=mesh_lib.replicated(mesh),
      params=param_shardings,
      opt_state=opt_shardings,
      ema_params=None if abstract_boxed_state.ema_params is None else param_shardings)


def init_sharded_state(init_params, optimizer, ema_decay: float, rng, mesh, rules):
  """eval_shape -> shardings -> jit(init, out_shardings): nothing large is built on one host."""
  def init(rng):
    state = create_state(init_params, optimizer, ema_decay, rng)
    return state.replace(params=nn.meta.unbox(state.params),
                         ema_params=nn.meta.unbox(state.ema_params))

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(lambda r: create_state(init_params, optimizer, ema_decay, r), rng)
    shardings = state_shardings(abstract, mesh, rules)
    state = jax.jit(init, out_shardings=shardings)(rng)
  return state, shardings


def abstract_state(init_params, optimizer, ema_decay: float, mesh, rules):
  """ShapeDtypeStructs with shardings: the restore target for a checkpoint."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    # The key is made inside the trace too: the mesh may be an abstract TPU topology (aot.py)
    # on which nothing can run.
    abstract = jax.eval_shape(
        lambda: create_state(init_params, optimizer, ema_decay, jax.random.key(0)))
    shardings = state_shardings(abstract, mesh, rules)
  unboxed = abstract.replace(params=mesh_lib.strip_boxes(abstract.params),
                             ema_params=mesh_lib.strip_boxes(abstract.ema_params))
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        unboxed, shardings)
  return target, shardings
