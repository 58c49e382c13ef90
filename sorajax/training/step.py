"""The jitted training step: loss, gradients, optimizer update and EMA for one global batch."""
from __future__ import annotations

import jax
import optax

from sorajax.parallel import mesh as mesh_lib
from sorajax.training import state as state_lib


def make_train_step(objective, optimizer, ema_decay: float):
  """loss + grad + update (+ EMA) for one global batch; norms are computed inside the step."""

  def train_step(state: state_lib.TrainState, batch, frozen, rng):
    step_rng = jax.random.fold_in(rng, state.step)
    (loss, aux), grads = jax.value_and_grad(objective.loss, has_aux=True)(
        state.params, frozen, batch, step_rng, state.step)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
      ema = state_lib.ema_update(ema, params, ema_decay, state.step)
    metrics = {"train/loss": loss,
               "train/grad_norm": optax.tree.norm(grads),
               "train/param_norm": optax.tree.norm(params),
               "train/update_norm": optax.tree.norm(updates),
               **{f"train/{name}": value for name, value in aux.items()}}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         ema_params=ema), metrics

  return train_step


def jit_train_step(objective, optimizer, ema_decay: float, shardings, mesh, donate: bool = True):
  """The step, jitted with explicit shardings (state as given, batch as it comes, rest copied)."""
  replicated = mesh_lib.replicated(mesh)
  return jax.jit(make_train_step(objective, optimizer, ema_decay),
                 in_shardings=(shardings, None, replicated, replicated),
                 out_shardings=(shardings, replicated),
                 donate_argnums=(0,) if donate else ())
