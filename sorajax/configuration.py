"""Config files, command-line overrides and the one-line errors users see when either is wrong.

Configs are big_vision-style Python files with `get_config(arg)`; the arg is a comma-separated list
of `key=value` pairs (`configs/shapes/dit.py:variant=tiny,frames=17`). Overrides come as absl flags
(`--config.train.num_steps=100`); ml_collections applies them, but an unknown key there ends in a
traceback, so `check_argv` looks at them first and names the closest valid keys.
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import os
import sys
import uuid
from collections.abc import Callable, Sequence

import ml_collections
from absl import app
from absl import logging as absl_logging


class ConfigError(ValueError):
  """A problem with the user's config, flags or inputs: reported in one line, no traceback."""


def checked(check, *args) -> None:
  """Runs a check of config values and reports its ValueError as a ConfigError (one line, no
  traceback)."""
  try:
    check(*args)
  except ValueError as e:
    raise ConfigError(str(e)) from e


def parse_arg(arg: str | None, **defaults):
  """Parses 'a=1,b=x' over typed defaults: values take the type of their default."""
  values = dict(defaults)
  if not arg:
    return ml_collections.ConfigDict(values)
  for item in arg.split(","):
    if not item:
      continue
    key, sep, raw = item.partition("=")
    if key not in defaults:
      raise ConfigError(f"config arg {key!r} is unknown; valid: {', '.join(sorted(defaults))}")
    default = defaults[key]
    if isinstance(default, bool):
      values[key] = raw.lower() in ("1", "true", "yes") if sep else True
    elif default is None:
      values[key] = raw
    else:
      values[key] = type(default)(raw)
  return ml_collections.ConfigDict(values)


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for key, value in config.items():
    path = f"{prefix}{key}"
    keys.append(path)
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(flat_keys(value, path + "."))
  return keys


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads 'path/to/config.py[:arg]' the way `--config` does."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist; "
                      "pass e.g. --config configs/shapes/dit.py")
  module_spec = importlib.util.spec_from_file_location("sorajax_user_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def check_overrides(config: ml_collections.ConfigDict, keys: Sequence[str]) -> None:
  valid = flat_keys(config)
  for key in keys:
    if key not in valid:
      close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
      hint = (f"did you mean {' or '.join(close)}?" if close
              else "see the config file for valid keys")
      raise ConfigError(f"unknown config key {key!r}; {hint}")


def check_argv(argv: Sequence[str], flag: str = "config") -> None:
  """Validates `--config` and its `--config.key=value` overrides before absl parses them."""
  spec, overrides = None, []
  args = list(argv[1:])
  for i, arg in enumerate(args):
    if arg in (f"--{flag}", f"-{flag}") and i + 1 < len(args):
      spec = args[i + 1]
    elif arg.startswith(f"--{flag}="):
      spec = arg.split("=", 1)[1]
    elif arg.startswith(f"--{flag}."):
      overrides.append(arg[len(flag) + 3:].split("=", 1)[0])
  if spec is None:
    return
  config = load_config_file(spec)
  check_overrides(config, overrides)


def run(main: Callable[[Sequence[str]], None], check_config_flag: bool = True) -> None:
  """`absl.app.run` that turns ConfigErrors into a single 'error: ...' line and exit status 2."""
  def guarded(argv):
    # Library INFO logs (Orbax, absl) drown the progress line; --verbosity=0 brings them back.
    if not any(arg.startswith(("--verbosity", "-v")) for arg in sys.argv[1:]):
      absl_logging.set_verbosity(absl_logging.WARNING)
    try:
      main(argv)
    except ConfigError as e:
      sys.stderr.write(f"error: {e}\n")
      sys.exit(2)

  try:
    if check_config_flag:
      check_argv(sys.argv)
  except ConfigError as e:
    sys.stderr.write(f"error: {e}\n")
    sys.exit(2)
  app.run(guarded)


def dataset_fields() -> dict:
  """The data fields of the prepared-dataset and TFDS sources (data.source "records" or "tfds"),
  at their defaults, for every config whose run reads clips from them."""
  return dict(
      # "records": a folder written by `python -m sorajax.prepare` (data/records.py), sampled
      # every frame_stride-th frame (or at fps > 0), cropped to each bucket (data/video_source.py).
      records="",
      eval_records="",  # held-out clips; "" uses data.records
      frame_stride=1,
      fps=0.0,
      # "tfds": a TFDS dataset prepared as ArrayRecord (tfds build NAME
      # --file_format=array_record), read by random access (data/tfds_source.py); nothing is
      # downloaded at training time.
      tfds_name="",
      tfds_split="train",
      tfds_eval_split="",  # held-out clips; "" uses data.tfds_split
      tfds_data_dir="",  # "": TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets)
      tfds_video_key="video",
      tfds_caption_key="caption",  # a Text, texts (the first) or ClassLabel feature
      tfds_fps=0.0,  # the videos' frame rate (TFDS stores none); 0: unknown
  )


def write_json_atomic(path: str, payload) -> None:
  """Writes JSON to a temporary name, then renames, so a reader never sees half a file. The
  name is unique across hosts too, whose process ids often coincide."""
  tmp = f"{path}.tmp-{uuid.uuid4().hex}"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=str)
    f.write("\n")
  os.replace(tmp, path)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the fully resolved config to `workdir/config.json`."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  write_json_atomic(path, config.to_dict())
  return path


# Where a DiT run's VAE is, relative to the run: written at training, read back by samplers.
VAE_RUN_FILE = "vae_run.json"


def load_saved_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved, with a relative `vae_workdir` made to name the same VAE run from
  any working directory (`find_vae_run`)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise ConfigError(f"{workdir!r} holds no config.json; is it a sorajax.train workdir?")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.get("vae_workdir"):
    config.vae_workdir = find_vae_run(config.vae_workdir, workdir)
  return config


def record_vae_run(workdir: str, vae_workdir: str) -> None:
  """Stores the VAE run's path relative to the DiT run `workdir` (symlinks resolved), so that
  the two can move together and be read from anywhere."""
  relative = os.path.relpath(os.path.realpath(vae_workdir), os.path.realpath(workdir))
  write_json_atomic(os.path.join(workdir, VAE_RUN_FILE), {"relative_to_run": relative})


def _holds_run(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, "config.json"))


def find_vae_run(saved: str, workdir: str) -> str:
  """The VAE run a DiT run at `workdir` was trained on, whose config saved `saved` as given
  (`runs/demo/vae`, relative to where training started).

  An absolute path is kept. Otherwise the run's own record (`record_vae_run`) names it; runs
  saved before that record are searched for it: `saved` is tried against each directory above
  the run, nearest first (a DiT run at `/x/runs/demo/dit` finds `/x/runs/demo/vae`). Where none
  holds a run, `saved` comes back unchanged: read against the current directory, or named by
  the caller's error."""
  if os.path.isabs(saved):
    return saved
  run = os.path.realpath(workdir)
  record = os.path.join(workdir, VAE_RUN_FILE)
  if os.path.isfile(record):
    with open(record) as f:
      recorded = os.path.normpath(os.path.join(run, json.load(f)["relative_to_run"]))
    return recorded if _holds_run(recorded) else saved
  if saved.split(os.sep)[0] == os.pardir:  # above the start: no tree to search
    return saved
  directory = os.path.dirname(run)
  while True:
    if _holds_run(os.path.join(directory, saved)):
      return os.path.join(directory, saved)
    parent = os.path.dirname(directory)
    if parent == directory:
      return saved
    directory = parent
