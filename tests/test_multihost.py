"""Multi-process jobs through launch/local.py and checkpoints resumed on another mesh and device
count. Each run is a subprocess: the device count is fixed when jax starts.

The runs are few and shared, for speed: one single-process run is the reference the others are
checked against, and both resumed runs use one 4-device mesh and step count, so the second finds
its program in the test run's compilation cache.
"""
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from sorajax.parallel import mesh as mesh_lib
from sorajax.training import objectives
from tiny import ROOT, VAE_CONFIG

# The resumed runs' mesh: 4 devices, another layout than any run they resume.
_RESUMED_MESH = ["--config.mesh.fsdp=2", "--config.mesh.tensor=2"]


def _tiny_vae(steps=6):
  """The trainer's command for the tiny VAE; it evaluates and measures latent statistics on one
  batch of clips (the defaults, 64 and 256 clips, only cost time here)."""
  return [sys.executable, "-m", "sorajax.train",
          f"--config={VAE_CONFIG}:variant=tiny,frames=5,size=16,steps={steps},batch=8",
          "--config.train.checkpoint_every=2", "--config.train.log_every=1",
          "--config.vae.eval_clips=8", "--config.vae.latent_stats_clips=8"]


def _run(argv, devices=8, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  kept = [f for f in env.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])
  return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _two_processes(argv):
  return [sys.executable, "launch/local.py", "--processes", "2", "--devices_per_process", "4",
          "--", *argv]


def _params(workdir):
  mesh = mesh_lib.make_mesh({"data": -1})
  return jax.device_get(objectives.restore_inference_params(workdir, mesh)[1])


def _losses(output, prefix=""):
  return [line.split("| loss ")[1].split()[0] for line in output.splitlines()
          if line.startswith(f"{prefix}step ") and "| loss " in line]


# Session scope: once per xdist worker (a module fixture is rebuilt when the worker runs another
# module in between); a second worker's run finds its programs in the compilation cache.
@pytest.fixture(scope="session")
def one_process(tmp_path_factory):
  """(workdir, stdout) of 6 steps on one process with 8 devices, tensor x data parallel;
  checkpoints at steps 4 and 6 are kept."""
  workdir = str(tmp_path_factory.mktemp("one_process"))
  run = _run(_tiny_vae() + ["--config.mesh.tensor=2", "--config.mesh.data=4",
                            f"--workdir={workdir}"])
  assert run.returncode == 0, run.stderr[-3000:]
  assert len(_losses(run.stdout)) == 6
  return workdir, run.stdout


def test_two_process_job_trains_checkpoints_and_resumes_on_one_process(tmp_path):
  workdir = str(tmp_path / "vae")
  # Data parallel across the processes as across slices (DCN), FSDP within each (ICI).
  job = _run(_two_processes(_tiny_vae(steps=4) + [
      "--config.dcn_mesh.data=2", "--config.mesh.data=1", "--config.mesh.fsdp=4",
      f"--workdir={workdir}"]))
  assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
  assert "[0] step 4/4" in job.stdout and "[1] " in job.stdout
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  # The same checkpoint on one process with 4 devices and another mesh: it continues.
  resumed = _run(_tiny_vae() + _RESUMED_MESH + [f"--workdir={workdir}"], devices=4)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from step 4" in resumed.stdout and "step 6/6" in resumed.stdout
  assert "data streams start afresh" in resumed.stderr


def test_saved_on_8_devices_resumed_on_4_with_another_mesh(one_process, tmp_path):
  straight, split = one_process[0], str(tmp_path / "split")
  # The straight run's checkpoint at step 4 (model and data stream), alone in another workdir,
  # continued to step 6 on 4 devices with another mesh.
  step_4 = os.path.join("checkpoints", "4")
  shutil.copytree(os.path.join(straight, step_4), os.path.join(split, step_4))
  rest = _run(_tiny_vae() + _RESUMED_MESH + [f"--workdir={split}"], devices=4)
  assert rest.returncode == 0, rest.stderr[-3000:]
  assert "resumed from step 4" in rest.stdout and "start afresh" not in rest.stderr
  # One process throughout, so the data stream resumed too: the weights match the straight run's
  # up to the float reordering of other shardings. (Adam turns that reordering into updates of
  # up to ~2e-5 on biases whose gradients are nearly zero; another batch would move every weight
  # by about the learning rate, 1e-3 a step.)
  resumed, reference = jax.tree.leaves(_params(split)), jax.tree.leaves(_params(straight))
  for a, b in zip(resumed, reference):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  flat = lambda leaves: np.concatenate([x.ravel() for x in leaves])
  difference = flat(resumed) - flat(reference)
  assert np.linalg.norm(difference) <= 1e-4 * np.linalg.norm(flat(reference))


def test_processes_that_share_batch_rows_read_the_same_examples(one_process, tmp_path):
  """Tensor parallelism across the two processes: both hold every batch row, so both must read
  the same share of the data; the losses then equal one process's on the same mesh shape."""
  job = _run(_two_processes(_tiny_vae() + [
      "--config.dcn_mesh.tensor=2", "--config.mesh.data=4", f"--workdir={tmp_path / 'two'}"]))
  assert job.returncode == 0, job.stdout[-3000:]
  assert _losses(job.stdout, "[0] ") == _losses(one_process[1])
