"""Training objectives: what the one trainer optimises, chosen by `config.objective`.

An objective owns its model(s) and exposes
  tokenizer             None, or what turns captions into tokens in the input pipeline
  init_params(rng)      boxed (logically named) parameters of the trainable model
  starting_params(params)  what a new run starts from, given its initialised (sharded) params:
                        those, or trained weights put in their place (a VAE's vae.init_workdir)
  frozen                a pytree of fixed inputs to the loss (e.g. a trained VAE), passed to the
                        step
  loss(params, frozen, batch, rng, step) -> (scalar loss, dict of scalar metrics)
  model_params(params)  the weights inference needs, out of the trained parameters
  train_flops(bucket)   analytic matmul FLOPs of one training step on a bucket's global batch (0 if
                        not counted), for the throughput and MFU logs
  prepare(workdir)      one-off work before training (e.g. measuring latent statistics)
  evaluate(params, step, workdir) -> dict of "eval/..." scalars; every train.eval_every steps and
                        at the last step
  finish(params, workdir)  one-off work after the last step (e.g. storing latent statistics)
"""
from __future__ import annotations

import ml_collections

from sorajax.configuration import ConfigError, load_saved_config
from sorajax.training import checkpoint as checkpoint_lib
from sorajax.training.dit_objective import DiTObjective
from sorajax.training.vae_objective import VAEObjective


def restore_inference_params(workdir: str, mesh, rules=None, step: int | None = None):
  """(saved config, the weights to sample with, their step) from a trained workdir at `step`
  (default: the latest), sharded on `mesh`."""
  config, _, params, step = restore_run(workdir, mesh, rules, step)
  return config, params, step


def restore_run(workdir: str, mesh, rules=None, step: int | None = None):
  """`restore_inference_params` with the run's objective after the config: built once, with the
  frozen weights it loads (a DiT's VAE and text encoder)."""
  config = load_saved_config(workdir)
  # Before the objective loads what it freezes (a DiT's VAE): a run with no checkpoint says so.
  step = checkpoint_lib.require_checkpoint(workdir, step)
  objective = build_objective(config, mesh)
  params, step = checkpoint_lib.restore_model_params(workdir, config, objective, mesh, rules, step)
  return config, objective, params, step


OBJECTIVES = {"vae": VAEObjective, "dit": DiTObjective}


def build_objective(config: ml_collections.ConfigDict, mesh, **kwargs):
  if config.objective not in OBJECTIVES:
    raise ConfigError(f"objective={config.objective!r} is unknown; valid: {', '.join(OBJECTIVES)}")
  return OBJECTIVES[config.objective](config, mesh, **kwargs)
