r"""Submits one command as a multi-node GPU job to SLURM: one process per GPU.

  python launch/slurm.py --nodes 4 --gpus_per_node 8 --partition gpu --time 24:00:00 --dry_run -- \
      python -m sorajax.train --config configs/shapes/dit.py --workdir /shared/runs/dit

Writes the batch script to --script (default: slurm_<job name>.sh in the working directory) and
runs `sbatch` on it; --dry_run prints the script and the sbatch command instead. Inside the job,
`srun` starts one task per GPU and jax's SLURM detection (--distributed) connects them, giving
each task the GPU of its local rank.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

import command_line  # launch/, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def batch_script(command: list[str], *, job_name: str, nodes: int, gpus_per_node: int,
                 partition: str | None, time: str, account: str | None) -> str:
  directives = [f"--job-name={job_name}", f"--nodes={nodes}",
                f"--ntasks-per-node={gpus_per_node}", f"--gpus-per-node={gpus_per_node}",
                "--exclusive", f"--time={time}",
                f"--output={job_name}-%j.out"]
  if partition:
    directives.append(f"--partition={partition}")
  if account:
    directives.append(f"--account={account}")
  lines = ["#!/bin/bash"] + [f"#SBATCH {d}" for d in directives] + [
      "set -euo pipefail",
      f"cd {shlex.quote(ROOT)}",
      "export PATH=$PWD/.venv/bin:$PATH",
      # jax's SLURM detection gives each task the GPU of its SLURM_LOCALID.
      "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
      f"srun {shlex.join(command + ['--distributed'])}",
  ]
  return "\n".join(lines) + "\n"


def write_atomic(path: str, text: str) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--nodes", type=int, required=True)
  parser.add_argument("--gpus_per_node", type=int, default=8)
  parser.add_argument("--partition", default=None)
  parser.add_argument("--account", default=None)
  parser.add_argument("--time", default="24:00:00")
  parser.add_argument("--job_name", default="sorajax")
  parser.add_argument("--script", default=None)
  command_line.add_command(parser)
  args = parser.parse_args()
  command = command_line.command(parser, args)
  if args.nodes < 1 or args.gpus_per_node < 1:
    parser.error("--nodes and --gpus_per_node must be at least 1")
  script = batch_script(command, job_name=args.job_name, nodes=args.nodes,
                        gpus_per_node=args.gpus_per_node, partition=args.partition,
                        time=args.time, account=args.account)
  path = args.script or f"slurm_{args.job_name}.sh"
  if args.dry_run:
    print(script + f"# then: sbatch {shlex.quote(path)}")
    return 0
  write_atomic(path, script)
  print(f"sbatch {path}", flush=True)
  return subprocess.call(["sbatch", path])


if __name__ == "__main__":
  sys.exit(main())
