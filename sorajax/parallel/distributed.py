"""Joining a multi-process job: one process per host (TPU VM, GPU node) or several on one machine.

Every process runs the same command. Before jax touches a device, `initialize` connects it to the
others, after which `jax.devices()` lists every device of the job, meshes span all of them, and
each process feeds its own share of every batch (data/pipeline.py) and writes its own shards of
every checkpoint (Orbax).

  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
      an explicit job (launch/local.py)
  --distributed
      ask jax's cluster detection (TPU pods, SLURM, Open MPI, k8s)
  neither
      one process
"""
from __future__ import annotations

import jax
from absl import flags

from sorajax.configuration import ConfigError

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 in a multi-process job.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index, 0 to num_processes-1.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join a multi-process job that jax's cluster detection finds (TPU pod "
    "workers, SLURM tasks, Open MPI, Kubernetes).")


def initialize() -> None:
  """Connects this process to its job, as the flags above describe; one process without them."""
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(value is not None for value in explicit):
    if any(value is None for value in explicit):
      raise ConfigError("a multi-process job needs all of --coordinator_address, --num_processes "
                        "and --process_id (or --distributed to detect them)")
    count, index = _NUM_PROCESSES.value, _PROCESS_ID.value
    if not 0 <= index < count:
      raise ConfigError(f"--process_id={index} is out of range; use 0 to {count - 1}")
    jax.distributed.initialize(_COORDINATOR.value, num_processes=count, process_id=index)
  elif _DISTRIBUTED.value:
    try:
      jax.distributed.initialize()
    except ValueError as e:  # nothing detected: say what would have been needed
      raise ConfigError(f"--distributed found no cluster to join ({e}); pass "
                        "--coordinator_address, --num_processes and --process_id") from e
