r"""Runs one command as an N-process jax job on this machine (CPU collectives, or one GPU each).

  python launch/local.py --processes 2 --devices_per_process 4 -- \
      python -m sorajax.train --config configs/shapes/vae.py:variant=tiny --workdir /tmp/vae2

Each process gets --coordinator_address/--num_processes/--process_id appended (see
sorajax/parallel/distributed.py) and, on CPU, that many fake devices. Output lines are prefixed with
the process index. If one process fails, the others are stopped and its exit status is returned.
--dry_run prints the commands and environments instead.
"""
from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import threading

import command_line  # launch/, beside this file


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_commands(command: list[str], processes: int, devices: int, platform: str, port: int):
  """(argv, extra environment) for each process of the job."""
  jobs = []
  for index in range(processes):
    argv = command + [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
                      f"--process_id={index}"]
    if platform == "cpu":
      env = {"JAX_PLATFORMS": "cpu",
             "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    else:  # one slice of the machine's GPUs per process
      visible = ",".join(str(index * devices + d) for d in range(devices))
      env = {"CUDA_VISIBLE_DEVICES": visible}
    jobs.append((argv, env))
  return jobs


def _relay(index: int, stream, out) -> None:
  for line in iter(stream.readline, ""):
    out.write(f"[{index}] {line}")
    out.flush()


def run(jobs) -> int:
  procs = []
  for argv, env in jobs:
    extra = dict(env)
    if "XLA_FLAGS" in extra:  # keep the caller's other XLA flags
      kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
              if not f.startswith("--xla_force_host_platform_device_count")]
      extra["XLA_FLAGS"] = " ".join(kept + [extra["XLA_FLAGS"]])
    procs.append(subprocess.Popen(argv, env={**os.environ, **extra}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  relays = [threading.Thread(target=_relay, args=(i, p.stdout, sys.stdout), daemon=True)
            for i, p in enumerate(procs)]
  for thread in relays:
    thread.start()
  status = 0
  try:
    pending = list(procs)
    while pending:
      for proc in list(pending):
        try:
          code = proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
          continue
        pending.remove(proc)
        if code and not status:  # the first failure stops the rest: they would wait forever
          status = code if code > 0 else 128 - code  # killed by signal N: 128 + N, as shells do
          _stop(pending)
  except KeyboardInterrupt:
    _stop(procs)
    status = 130
  for thread in relays:
    thread.join(timeout=5)
  return status


def _stop(procs, grace: float = 10.0) -> None:
  """SIGTERM (a trainer saves and exits), then SIGKILL for any still running after `grace`
  seconds: one stuck in a collective with a dead peer never exits by itself."""
  for proc in procs:
    proc.terminate()
  for proc in procs:
    try:
      proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
      proc.kill()


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=4,
                      help="fake CPU devices (or GPUs) per process")
  parser.add_argument("--platform", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  command_line.add_command(parser)
  args = parser.parse_args()
  command = command_line.command(parser, args)
  if args.processes < 1 or args.devices_per_process < 1:
    parser.error("--processes and --devices_per_process must be at least 1")
  jobs = process_commands(command, args.processes, args.devices_per_process, args.platform,
                          args.port or free_port())
  if args.dry_run:
    for argv, env in jobs:
      print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(argv))
    return 0
  return run(jobs)


if __name__ == "__main__":
  sys.exit(main())
