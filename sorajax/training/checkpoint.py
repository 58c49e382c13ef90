"""Orbax checkpoints of the train state and the data iterator, resumed automatically from a workdir.

Load order (written once, here): an existing checkpoint in the workdir -> a fresh initialisation.
Saving is asynchronous; a preemption signal (when the platform sends one) forces a save at the next
step.
"""
from __future__ import annotations

import logging
import os

import grain.python as grain
import jax
import orbax.checkpoint as ocp

from sorajax.configuration import ConfigError
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import state as state_lib
from sorajax.training.metrics import is_time

# Orbax has the replicas of a replicated array each write a slice of it. Every slice is an eager
# op compiled per shape and device: for a DiT's hundreds of small leaves (norms, biases, scalars)
# that is seconds of compiling per process, for writes that take microseconds. Only arrays whose
# slices reach 1 MiB are split; smaller ones are written whole by the first replica.
_MIN_REPLICA_SLICE_BYTES = 1 << 20


def _register_array_handler():
  default = ocp.type_handlers.get_type_handler(jax.Array)
  handler = None
  # Someone else's handler, or an orbax whose handler has changed, is left in place: saves stay
  # correct, only slower. (The store records which arrays are PRNG keys; it must carry over.)
  if (type(default) is ocp.type_handlers.ArrayHandler  # pylint: disable=unidiomatic-typecheck
      and hasattr(default, "_array_metadata_store")):
    try:
      handler = ocp.type_handlers.ArrayHandler(
          min_slice_bytes_for_replica_parallel=_MIN_REPLICA_SLICE_BYTES,
          array_metadata_store=default._array_metadata_store)  # pylint: disable=protected-access
    except TypeError:
      pass
  if handler is None:
    logging.info("orbax's jax.Array handler (%s) left in place: small replicated arrays are "
                 "saved in per-replica slices", type(default).__name__)
    return
  orbax_log = logging.getLogger("absl")  # orbax warns of every override, this intended one too
  level = orbax_log.level
  orbax_log.setLevel(logging.ERROR)
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    orbax_log.setLevel(level)


_register_array_handler()


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

  def maybe_save(self, step: int, state, data_iterators=None) -> bool:
    """Saves when it is time (the shared `is_time` rule) or when the job is being preempted."""
    if is_time(step, self._every, self._last_step) or self._manager.reached_preemption(step):
      return self.save(step, state, data_iterators)
    return False

  def save(self, step: int, state, data_iterators=None) -> bool:
    """`data_iterators`: {item name: grain iterator}, one per input stream, saved with the state."""
    items = {"state": ocp.args.StandardSave(state)}
    for name, iterator in (data_iterators or {}).items():
      items[name] = grain.PyGrainCheckpointSave(iterator)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract_state, data_iterators=None):
    """The state at `step`, resharded onto `abstract_state`'s shardings (any mesh, any number of
    processes), with the data iterators' positions when they fit this job (same process count
    and batch shares); otherwise the data streams start afresh, with a warning."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    saved_processes = self._data_process_count(step)
    if data_iterators and saved_processes not in (None, jax.process_count()):
      logging.warning("checkpoint %d was written by %d processes and this job has %d: the model "
                      "state is resharded, the data streams start afresh", step, saved_processes,
                      jax.process_count())
      data_iterators = None
    for name, iterator in (data_iterators or {}).items():
      items[name] = grain.PyGrainCheckpointRestore(iterator)
    # Compare shapes first: a failed restore leaves orbax's async reads to fail noisily later.
    mismatch = self._mismatch(step, abstract_state)
    if mismatch is None:
      try:
        return self._manager.restore(step, args=ocp.args.Composite(**items))["state"]
      except (ValueError, KeyError) as e:
        mismatch = str(e).splitlines()[0][:300]
      if data_iterators:  # the state matched; grain refuses positions saved for other shares
        try:
          state = self._manager.restore(
              step, args=ocp.args.Composite(state=items["state"]))["state"]
        except (ValueError, KeyError):
          pass
        else:
          logging.warning("checkpoint %d: the data streams' positions do not fit this job (%s); "
                          "they start afresh", step, mismatch)
          return state
    raise ConfigError(f"checkpoint at step {step} does not match this config: {mismatch}; train it "
                      "with the config it was saved with (config.json in its workdir) or use a new "
                      "workdir")

  def _data_process_count(self, step: int) -> int | None:
    """How many processes wrote the data iterators' states (files process_I-of-N.json)."""
    folder = os.path.join(str(self._manager.directory), str(step), "data")
    if not os.path.isdir(folder):
      return None
    counts = {name.rsplit("-of-", 1)[1].split(".")[0] for name in os.listdir(folder)
              if name.startswith("process_") and "-of-" in name}
    return int(counts.pop()) if len(counts) == 1 else None

  def _mismatch(self, step: int, abstract_state) -> str | None:
    """The first parameter (then optimizer entry) whose shape differs from the saved one."""
    path = os.path.join(str(self._manager.directory), str(step), "state")
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # orbax warns about a metadata file it does not need here
    try:
      stored = ocp.StandardCheckpointer().metadata(path)
    except (OSError, ValueError):
      return None
    finally:
      absl_logger.setLevel(level)
    stored = getattr(getattr(stored, "item_metadata", stored), "tree", stored)
    return describe_mismatch(leaf_shapes(stored), leaf_shapes(abstract_state))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _key_name(key) -> str:
  for field in ("key", "name", "idx"):
    if hasattr(key, field):
      return str(getattr(key, field))
  return str(key)


def leaf_shapes(tree) -> dict[str, tuple[int, ...]]:
  """{"params/decoder/conv_in/kernel": shape, ...} for every array-like leaf of a pytree."""
  return {"/".join(_key_name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0] if hasattr(leaf, "shape")}


def describe_mismatch(stored: dict, wanted: dict) -> str | None:
  """Names the first entry (parameters first) a checkpoint lacks, has extra or shapes otherwise."""
  for name in sorted(wanted, key=lambda n: (not n.startswith("params"), n)):
    if name not in stored:
      return f"{name} is not in the checkpoint"
    if stored[name] != wanted[name]:
      return f"{name} has shape {stored[name]} in the checkpoint but {wanted[name]} in this config"
  extra = sorted(set(stored) - set(wanted), key=lambda n: (not n.startswith("params"), n))
  return f"the checkpoint has {extra[0]}, which this config's model lacks" if extra else None


def saved_steps(workdir: str) -> list[int]:
  """The steps `workdir` holds finished checkpoints of, oldest first."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def describe_steps(steps: list[int]) -> str:
  """Sorted steps for one line of an error: a long list keeps its ends."""
  if len(steps) <= 6:
    return ", ".join(map(str, steps))
  return (f"{', '.join(map(str, steps[:3]))}, ..., {', '.join(map(str, steps[-3:]))} "
          f"({len(steps)} steps)")


def require_checkpoint(workdir: str, step: int | None = None) -> int:
  """`step` (default: the latest) if `workdir` holds it, or a one-line error saying what it
  holds."""
  directory, steps = checkpoint_dir(workdir), saved_steps(workdir)
  if not steps:
    raise ConfigError(f"no checkpoint in {directory!r}; train first with "
                      f"python -m sorajax.train --config ... --workdir {workdir}")
  if step is not None and step not in steps:
    raise ConfigError(f"{directory!r} holds no step {step}, only {describe_steps(steps)}")
  return steps[-1] if step is None else step


def restore_model_params(workdir: str, config, objective, mesh, rules=None,
                         step: int | None = None):
  """(the weights `objective` samples with, their step) from the run at `workdir`, saved with
  `config`, at `step` (default: the latest), sharded on `mesh` by `rules` (default: the run's)."""
  step = require_checkpoint(workdir, step)
  rules = rules if rules is not None else mesh_lib.logical_rules(config.logical_rules)
  optimizer = state_lib.make_optimizer(config.train)
  target, _ = state_lib.abstract_state(objective.init_params, optimizer, config.train.ema_decay,
                                       mesh, rules)
  checkpointer = Checkpointer(workdir, every=1, keep=None)
  try:
    state = checkpointer.restore(step, target)
  finally:
    checkpointer.close()
  return objective.model_params(state.inference_params), step
