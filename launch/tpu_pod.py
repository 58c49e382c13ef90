r"""Runs one command on every worker of a Cloud TPU VM (a pod slice), as one jax job.

  python launch/tpu_pod.py --tpu my-v5p-128 --zone us-east5-a --dry_run -- \
      python -m sorajax.train --config configs/shapes/dit.py --workdir gs://bucket/runs/dit

Steps, each printed before it runs (--dry_run prints them only):
  1. pack the committed code (`git archive HEAD`: no virtualenvs, runs or uncommitted edits);
  2. copy it to every worker and unpack it into a fresh --remote_dir;
  3. install it with the TPU extra (jax with libtpu) there, unless --skip_install;
  4. run the command on all workers at once with --distributed appended, so each process finds
     the others through jax's TPU cluster detection (sorajax/parallel/distributed.py).
The workdir must be on a filesystem every worker sees (a mounted bucket or NFS path).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

import command_line  # launch/, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


ARCHIVE = "sorajax-code.tar.gz"


def gcloud_commands(tpu: str, zone: str, project: str | None, remote_dir: str, command: list[str],
                    install: bool) -> list[list[str]]:
  where = ["--zone", zone] + (["--project", project] if project else [])
  ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, *where, "--worker=all", "--command"]
  local_archive = os.path.join(ROOT, "build", ARCHIVE)
  directory = shlex.quote(remote_dir)
  steps = [["mkdir", "-p", os.path.dirname(local_archive)],
           ["git", "-C", ROOT, "archive", "--format=tar.gz", "-o", local_archive, "HEAD"],
           ["gcloud", "compute", "tpus", "tpu-vm", "scp", local_archive, f"{tpu}:{ARCHIVE}", *where,
            "--worker=all"],
           ssh + [f"rm -rf {directory} && mkdir -p {directory} && "
                  f"tar -xzf {ARCHIVE} -C {directory}"]]
  cd = f"cd {directory}"
  if install:
    steps.append(ssh + [f"{cd} && make install EXTRAS=tpu"])
  # The venv's python, whatever the command names; --distributed joins the pod-wide job.
  run = shlex.join(command + ["--distributed"])
  steps.append(ssh + [f"{cd} && PATH=$PWD/.venv/bin:$PATH {run}"])
  return steps


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tpu", required=True, help="TPU VM name")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", default=None)
  parser.add_argument("--remote_dir", default="sorajax", help="checkout location on the workers")
  parser.add_argument("--skip_install", action="store_true")
  command_line.add_command(parser)
  args = parser.parse_args()
  command = command_line.command(parser, args)
  for step in gcloud_commands(args.tpu, args.zone, args.project, args.remote_dir, command,
                              not args.skip_install):
    print(shlex.join(step), flush=True)
    if not args.dry_run:
      code = subprocess.call(step)
      if code:
        return code
  return 0


if __name__ == "__main__":
  sys.exit(main())
