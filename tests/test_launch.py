"""The launchers' dry runs: the commands each would run, without running them."""
import subprocess
import sys

from tiny import ROOT

TRAIN = ["--", "python", "-m", "sorajax.train", "--config", "configs/shapes/dit.py",
         "--workdir", "runs/x y"]


def _dry_run(script, *flags):
  result = subprocess.run([sys.executable, f"launch/{script}", *flags, "--dry_run", *TRAIN],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  return result.stdout.strip().splitlines()


def test_local_launcher_gives_each_process_its_index_and_devices():
  lines = _dry_run("local.py", "--processes", "3", "--devices_per_process", "2", "--port", "4321")
  assert len(lines) == 3
  for index, line in enumerate(lines):
    assert "--xla_force_host_platform_device_count=2" in line
    assert line.endswith(f"--coordinator_address=localhost:4321 --num_processes=3 "
                         f"--process_id={index}")
    assert "'runs/x y'" in line  # arguments stay quoted


def test_tpu_pod_launcher_ships_committed_code_installs_and_runs_on_every_worker():
  lines = _dry_run("tpu_pod.py", "--tpu", "pod", "--zone", "us-east5-a", "--project", "p")
  assert len(lines) == 6
  assert "archive --format=tar.gz" in lines[1] and lines[1].endswith("HEAD")
  assert all("--worker=all" in line for line in lines[2:])
  assert lines[2].startswith("gcloud compute tpus tpu-vm scp ")
  assert "rm -rf sorajax && mkdir -p sorajax && tar -xzf" in lines[3]
  assert "make install EXTRAS=tpu" in lines[4]
  assert "--distributed" in lines[5] and "sorajax.train" in lines[5]


def test_slurm_launcher_writes_one_task_per_gpu():
  text = "\n".join(_dry_run("slurm.py", "--nodes", "4", "--gpus_per_node", "8", "--partition",
                            "gpu"))
  for needle in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "srun python -m sorajax.train", "--distributed",
                 "sbatch slurm_sorajax.sh"):
    assert needle in text, needle


def test_launchers_refuse_an_empty_command():
  for script, flags in (("local.py", []), ("tpu_pod.py", ["--tpu", "t", "--zone", "z"]),
                        ("slurm.py", ["--nodes", "1"])):
    result = subprocess.run([sys.executable, f"launch/{script}", *flags], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "give the command after --" in result.stderr
