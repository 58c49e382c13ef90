"""The command lines a user types: each bad input ends in one clear line, not a traceback."""
import json
import os
import subprocess
import sys

import pytest

from sorajax import configuration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, cwd=ROOT):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def assert_one_line_error(result, *needles):
  assert result.returncode == 2, result.stderr
  lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]


def test_mistyped_config_key_names_the_closest(tmp_path):
  result = run("sorajax.train", "--config", "configs/shapes/vae.py", "--workdir", str(tmp_path),
               "--config.train.num_step=3")
  assert_one_line_error(result, "train.num_step", "train.num_steps")


def test_unknown_config_arg_names_valid_ones(tmp_path):
  result = run("sorajax.train", "--config", "configs/shapes/vae.py:varaint=tiny",
               "--workdir", str(tmp_path))
  assert_one_line_error(result, "varaint", "variant")


def test_missing_config_file(tmp_path):
  result = run("sorajax.train", "--config", "configs/nope.py", "--workdir", str(tmp_path))
  assert_one_line_error(result, "configs/nope.py")


def test_bad_frame_count_names_nearest_valid(tmp_path):
  result = run("sorajax.train", "--config", "configs/shapes/vae.py:variant=tiny,frames=7",
               "--workdir", str(tmp_path))
  assert_one_line_error(result, "frames=7", "5 or 9")


def test_bad_size_names_nearest_valid(tmp_path):
  result = run("sorajax.train", "--config", "configs/shapes/vae.py:variant=tiny,size=30",
               "--workdir", str(tmp_path))
  assert_one_line_error(result, "30", "24 or 32")


def test_text_length_that_truncates_captions(tmp_path):
  result = run("sorajax.train", "--config", "configs/shapes/dit.py:variant=tiny",
               "--workdir", str(tmp_path), "--config.data.max_objects=3",
               "--config.data.text_max_length=16",
               f"--config.vae_workdir={tmp_path / 'no_vae'}")
  # The demo's captions: MiniLM tokens, half of them reworded (shapes.REWORDINGS).
  assert_one_line_error(result, "data.text_max_length=16", "text_max_length=38")


def test_sampling_without_checkpoint(tmp_path):
  configuration.save_config(configuration.load_config_file("configs/shapes/dit.py"), str(tmp_path))
  result = run("sorajax.sample", "--workdir", str(tmp_path), "--prompt", "a red square moving up")
  assert_one_line_error(result, "no checkpoint")


def test_sampling_from_a_folder_that_is_not_a_run(tmp_path):
  result = run("sorajax.sample", "--workdir", str(tmp_path), "--prompt", "a red square moving up")
  assert_one_line_error(result, "config.json")


def _runs(root, vae_workdir, *names):
  """Folders that look like runs (a config.json), under `root`; with `vae_workdir`, the last is
  a DiT run that names it."""
  for name in names:
    (root / name).mkdir(parents=True)
    configuration.write_json_atomic(str(root / name / "config.json"),
                                    {"vae_workdir": vae_workdir} if vae_workdir and
                                    name == names[-1] else {})
  return str(root / names[-1])


def test_a_dit_run_finds_its_vae_from_the_record_training_leaves(tmp_path, monkeypatch):
  # Trained from /x with --config.vae_workdir=vae, the DiT at /x/runs/a/dit, and a decoy VAE
  # nearer to the DiT than its own.
  dit = _runs(tmp_path / "x", "vae", "vae", "runs/a/vae", "runs/a/dit")
  monkeypatch.chdir(tmp_path / "x")
  configuration.record_vae_run(dit, "vae")
  monkeypatch.chdir(tmp_path)
  assert configuration.load_saved_config(dit).vae_workdir == str(tmp_path / "x/vae")
  (tmp_path / "link").symlink_to(tmp_path / "x/runs/a")  # the run reached through a link
  assert configuration.load_saved_config(str(tmp_path / "link/dit")).vae_workdir == str(
      tmp_path / "x/vae")
  (tmp_path / "x").rename(tmp_path / "moved")  # moved together
  assert configuration.load_saved_config(
      str(tmp_path / "moved/runs/a/dit")).vae_workdir == str(tmp_path / "moved/vae")


def test_an_older_dit_run_finds_its_relative_vae_from_any_directory(tmp_path, monkeypatch):
  # `make demo` trains the DiT with --config.vae_workdir=runs/demo/vae from the checkout; runs
  # saved before the record are searched for it above the run.
  dit = _runs(tmp_path / "repo", "runs/demo/vae", "runs/demo/vae", "runs/demo/dit")
  monkeypatch.chdir(tmp_path)
  found = configuration.load_saved_config(dit).vae_workdir
  assert found == str(tmp_path / "repo/runs/demo/vae")
  _runs(tmp_path / "other", "", "runs/demo/vae")  # another checkout's demo VAE
  monkeypatch.chdir(tmp_path / "other")  # the DiT's own tree wins over the current directory's
  assert configuration.load_saved_config(dit).vae_workdir == found
  (tmp_path / "repo/runs/demo/vae/config.json").unlink()  # not in the DiT's tree: as saved
  assert configuration.load_saved_config(dit).vae_workdir == "runs/demo/vae"


def test_parse_arg_types():
  arg = configuration.parse_arg("steps=5,variant=tiny,flag", steps=1, variant="demo", flag=False)
  assert arg.steps == 5 and arg.variant == "tiny" and arg.flag is True
  with pytest.raises(configuration.ConfigError, match="valid: flag, steps"):
    configuration.parse_arg("stpes=5", steps=1, flag=False)


def test_prompted_sampling_reads_files_and_streams_a_rollout(dit_workdir, tmp_path):
  out = tmp_path / "rollout"
  result = run("sorajax.sample", "--workdir", dit_workdir, "--prompt", "a red square moving up",
               "--mode", "rollout", "--seconds", "2", "--fps", "8", "--frames", "9", "--steps", "2",
               "--out", str(out))
  assert result.returncode == 0, result.stderr
  from sorajax.data import video_io  # pylint: disable=import-outside-toplevel
  mp4s = sorted(out.glob("*.mp4"))
  assert len(mp4s) == 1 and video_io.read_video(str(mp4s[0])).shape[0] == 16
  assert not list(out.glob("*.tmp-*"))


def test_evaluate_writes_accuracy_and_pace(dit_workdir, tmp_path):
  result = run("sorajax.evaluate", "--workdir", dit_workdir, "--out", str(tmp_path), "--seeds", "1",
               "--steps", "2", "--nomodes")
  assert result.returncode == 0, result.stderr
  report = json.loads((tmp_path / "report.json").read_text())
  assert set(report["summary"]) == {"color", "shape", "motion", "color_and_motion"}
  assert set(report["info"]["pace"]) == {"median_travel", "median_evenness"}
  assert all(isinstance(row["travel"], list) for row in report["samples"])
  assert "median travel" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("flags, needles", [
    (["--rollout_seeds", "0"], ["--rollout_seeds=0", "1 or more"]),
    (["--loop_strength", "0"], ["--loop_strength=0", "(0, 1]"]),
    (["--rollout_refresh", "1"], ["--rollout_refresh=1", "[0, 1)"]),
])
def test_bad_evaluate_flags_fail_before_judging(dit_workdir, tmp_path, flags, needles):
  result = run("sorajax.evaluate", "--workdir", dit_workdir, "--out", str(tmp_path), *flags)
  assert_one_line_error(result, *needles)
  assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("flags, needles", [
    (["--mode", "animate", "--input", "nope.png"], ["nope.png", "does not exist"]),
    (["--mode", "edit"], ["--mode=edit needs --input"]),
    (["--mode", "edit", "--input", "{video}", "--strength", "1.5"], ["strength=1.5", "(0, 1]"]),
    (["--mode", "extend_back", "--input", "{image}"], ["extend_back needs a clip of at least 4"]),
    (["--mode", "animate", "--input", "{image}", "--given_noise", "0.3"],
     ["given_noise=0.3 is out of range", "use 0 to 0"]),
    (["--mode", "rollout", "--seconds", "1", "--refresh", "1.5"], ["refresh=1.5", "[0, 1)"]),
    (["--mode", "rollout", "--seconds", "1", "--temperature", "0"],
     ["temperature=0.0 is out of range", "(0, 1]"]),
    (["--decoder", "{video}"], ["clip.mp4' holds no config.json", "sorajax.train workdir"]),
])
def test_bad_prompting_input_is_one_line(dit_workdir, tmp_path, flags, needles):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from sorajax.data import video_io  # pylint: disable=import-outside-toplevel
  video_io.write_mp4(str(tmp_path / "clip.mp4"), np.zeros((5, 16, 16, 3), np.uint8))
  video_io.write_png(str(tmp_path / "still.png"), np.zeros((16, 16, 3), np.uint8))
  flags = [f.format(video=tmp_path / "clip.mp4", image=tmp_path / "still.png") for f in flags]
  result = run("sorajax.sample", "--workdir", dit_workdir, "--prompt", "a red square moving up",
               "--steps", "2", "--out", str(tmp_path / "out"), *flags)
  assert_one_line_error(result, *needles)
