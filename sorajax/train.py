r"""The one trainer: trains the VAE or the DiT, whichever the config's `objective` names.

  python -m sorajax.train --config configs/shapes/vae.py --workdir runs/demo/vae
  python -m sorajax.train --config configs/shapes/dit.py:variant=tiny \
      --config.train.num_steps=100 --config.vae_workdir=runs/demo/vae --workdir runs/demo/dit

Rerunning with the same workdir resumes from its latest checkpoint, on any mesh. Several processes
(hosts) run the same command with --distributed or an explicit job
(sorajax/parallel/distributed.py); launch/ starts them.
"""
from __future__ import annotations

import copy
import logging
import os
import signal

import flax.linen as nn
import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from sorajax import configuration
from sorajax.data import pipeline
from sorajax.parallel import distributed
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import checkpoint as checkpoint_lib
from sorajax.training import dit_objective
from sorajax.training import metrics as metrics_lib
from sorajax.training import objectives
from sorajax.training import state as state_lib
from sorajax.training import step as step_lib
from sorajax.training import vae_objective

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and config.json go.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> state_lib.TrainState:
  # ---------------------------------------------------------------------------------------------
  # Logging and the resolved config.
  # ---------------------------------------------------------------------------------------------
  workdir = os.path.abspath(workdir)
  if config.objective == "dit":  # saved settled, so samplers load the VAE step it trained on
    config = copy.deepcopy(config)
    with config.unlocked():
      config.vae_step = dit_objective.vae_step_to_train_on(config, workdir)
  elif config.objective == "vae":  # where a fine-tune starts, settled as the DiT's VAE step is
    config = copy.deepcopy(config)
    with config.unlocked():
      config.vae.init_step = vae_objective.init_step_to_start_from(config, workdir)
  logging.info("devices: %s", jax.devices())

  # ---------------------------------------------------------------------------------------------
  # Mesh and logical axis rules.
  # ---------------------------------------------------------------------------------------------
  try:
    mesh = mesh_lib.make_mesh(config.mesh.to_dict(), dcn_shape=config.get("dcn_mesh", {}))
  except ValueError as e:
    raise configuration.ConfigError(str(e)) from e
  rules = mesh_lib.logical_rules(config.logical_rules)

  # ---------------------------------------------------------------------------------------------
  # Objective (model + loss) and input.
  # ---------------------------------------------------------------------------------------------
  objective = objectives.build_objective(config, mesh)
  if jax.process_index() == 0:  # once the config has passed the objective's checks
    configuration.save_config(config, workdir)
  objective.prepare(workdir)
  batches = pipeline.train_batches(config, mesh, objective.tokenizer, objective.train_sources,
                                  objective.prompt_table)
  frozen = jax.device_put(objective.frozen, mesh_lib.replicated(mesh))

  # ---------------------------------------------------------------------------------------------
  # Optimizer and state: resume from the workdir's checkpoint, else initialise (sharded).
  # ---------------------------------------------------------------------------------------------
  optimizer = state_lib.make_optimizer(config.train)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  checkpointer = checkpoint_lib.Checkpointer(
      workdir, every=config.train.checkpoint_every, keep=config.train.keep_checkpoints,
      last_step=config.train.num_steps)
  latest = checkpointer.latest_step()
  if latest is None:
    state, shardings = state_lib.init_sharded_state(
        objective.init_params, optimizer, config.train.ema_decay, init_rng, mesh, rules)
    state = state_lib.with_params(state, objective.starting_params(state.params))
  else:
    target, shardings = state_lib.abstract_state(
        objective.init_params, optimizer, config.train.ema_decay, mesh, rules)
    state = checkpointer.restore(latest, target, batches.iterators)
    print(f"resumed from step {latest} in {workdir}", flush=True)

  # ---------------------------------------------------------------------------------------------
  # The jitted step: explicit shardings, state donated.
  # ---------------------------------------------------------------------------------------------
  train_step = step_lib.jit_train_step(objective, optimizer, config.train.ema_decay,
                                       shardings, mesh)

  # ---------------------------------------------------------------------------------------------
  # Loop.
  # ---------------------------------------------------------------------------------------------
  num_steps = config.train.num_steps
  # MFU needs the accelerator's peak: train.peak_tflops per device (0: log achieved TFLOP/s only).
  peak_flops = config.train.get("peak_tflops", 0.0) * 1e12 * mesh.size
  writer = metrics_lib.MetricsWriter(workdir, num_steps, peak_flops)
  first_step = int(state.step)
  batches.resume_at(first_step)
  last_logged, examples, flops = first_step, 0, 0
  step_flops = {bucket: objective.train_flops(bucket) for bucket in batches.buckets}
  stop_requested = []
  previous_handler = signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      for step in range(first_step + 1, num_steps + 1):
        state, metrics = train_step(state, next(batches), frozen, train_rng)
        examples += batches.last_bucket.batch_size
        flops += step_flops[batches.last_bucket]
        if metrics_lib.is_time(step, config.train.log_every, num_steps):
          scalars = {name: float(value) for name, value in jax.device_get(metrics).items()}
          metrics_lib.check_finite(scalars["train/loss"], step, last_logged)
          last_logged = step
          writer.write(step, scalars, examples, flops)
          examples, flops = 0, 0
        if metrics_lib.is_time(step, config.train.get("eval_every", 0), num_steps):
          scores = objective.evaluate(state.inference_params, step, workdir)
          if scores:
            writer.write_eval(step, scores)
        saved = checkpointer.maybe_save(step, state, batches.iterators)
        if stop_requested:  # SIGTERM: save what we have, then exit cleanly
          if not saved:
            checkpointer.save(step, state, batches.iterators)
          logging.warning("SIGTERM at step %d: checkpoint saved, exiting", step)
          break
      else:  # the run is complete (also when resumed after its last step)
        checkpointer.wait()
        objective.finish(state.inference_params, workdir)
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
    checkpointer.close()
    writer.close()
  return state


def main(argv):
  del argv
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise configuration.ConfigError("pass both --config <file.py[:arg]> and --workdir <dir>")
  distributed.initialize()
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  configuration.run(main)
