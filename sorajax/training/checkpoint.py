"""Orbax checkpoints of the train state and the data iterator, resumed automatically from a workdir.

Load order (written once, here): an existing checkpoint in the workdir -> a fresh initialisation.
Saving is asynchronous; a preemption signal (when the platform sends one) forces a save at the next step.
"""
from __future__ import annotations

import os

import grain.python as grain
import orbax.checkpoint as ocp

from sorajax.configuration import ConfigError
from sorajax.training.metrics import is_time


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:
  """Saves {state, data} every `every` steps and at the last, keeps the newest `keep`, restores
  the latest. A preemption notice (on platforms that send one) also triggers a save."""

  def __init__(self, workdir: str, every: int, keep: int | None, last_step: int | None = None):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=options)
    self._every, self._last_step = every, last_step

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def maybe_save(self, step: int, state, data_iterator=None) -> bool:
    """Saves when it is time (the shared `is_time` rule) or when the job is being preempted."""
    if is_time(step, self._every, self._last_step) or self._manager.reached_preemption(step):
      return self.save(step, state, data_iterator)
    return False

  def save(self, step: int, state, data_iterator=None) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.PyGrainCheckpointSave(data_iterator)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract_state, data_iterator=None):
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.PyGrainCheckpointRestore(data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError) as e:
      raise ConfigError(f"checkpoint at step {step} does not match this config: "
                        f"{str(e).splitlines()[0][:300]}") from e
    return restored["state"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def require_checkpoint(workdir: str) -> int:
  """The latest step in `workdir`, or a one-line error saying there is nothing to load."""
  directory = checkpoint_dir(workdir)
  steps = []
  if os.path.isdir(directory):
    steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
  if not steps:
    raise ConfigError(f"no checkpoint in {directory!r}; train first with "
                      f"python -m sorajax.train --config ... --workdir {workdir}")
  return max(steps)
