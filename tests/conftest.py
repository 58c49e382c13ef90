"""Every test sees 8 fake CPU devices, so sharded paths run on one machine.

Tests run few steps of tiny models, so XLA's compile time dominates: the flags below trade
generated-code speed for a 3-5x faster compile, and one persistent compilation cache per test run,
shared by the pytest-xdist workers and the subprocesses they start, compiles each program once
(tests build many runs of the same tiny models; a subprocess starts with an empty in-memory cache).
It starts empty each run (unless JAX_COMPILATION_CACHE_DIR names one already), so no program
compiled by an earlier run is reused.
"""
import os
import shutil
import subprocess
import sys
import tempfile

# XLA's CPU fusion emitters compile the tiny models' programs up to twice as slowly as the older
# code generator (the tiny DiT's train step: 16 s against 7.5 s on 2 cores). XLA aborts on a flag
# it does not know, so a jaxlib that may have dropped this one is asked first, once per test run
# (the xdist workers inherit the answer through XLA_FLAGS).
_LEGACY_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def _xla_accepts(flag: str) -> bool:
  probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"],
                         env=dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu"),
                         capture_output=True, timeout=120)
  return probe.returncode == 0


_flags = os.environ.get("XLA_FLAGS", "").split()
_flags += ["--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0",
           "--xla_llvm_disable_expensive_passes=true"]
if _LEGACY_EMITTERS not in _flags and _xla_accepts(_LEGACY_EMITTERS):
  _flags.append(_LEGACY_EMITTERS)
os.environ["XLA_FLAGS"] = " ".join(dict.fromkeys(_flags))  # once each: workers re-run this
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # pylint: disable=wrong-import-position

_CACHE = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
  """The first process (xdist's controller, or the only one) makes the run's cache; workers
  started after this inherit it through the environment."""
  if _CACHE in os.environ:
    return
  config.sorajax_cache = os.environ[_CACHE] = tempfile.mkdtemp(prefix="sorajax-xla-cache-")
  # Every program, however quick to compile: the tiny models' programs each take well under the
  # default second, yet there are hundreds of them.
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


def pytest_unconfigure(config):
  if getattr(config, "sorajax_cache", None):
    shutil.rmtree(config.sorajax_cache, ignore_errors=True)
    os.environ.pop(_CACHE, None)
    os.environ.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)


@pytest.fixture(scope="session")
def vae_workdir(tmp_path_factory):
  """A tiny VAE run, trained once per test process and shared by the DiT tests."""
  from sorajax import train  # pylint: disable=import-outside-toplevel
  from tiny import VAE_CONFIG, tiny_config  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("vae"))
  train.train_and_evaluate(tiny_config(VAE_CONFIG), workdir)
  return workdir


@pytest.fixture(scope="session")
def decoder_workdir(tmp_path_factory, vae_workdir):
  """The tiny VAE's decoder fine-tuned on noised latents, its encoder kept (vae.init_workdir)."""
  from sorajax import train  # pylint: disable=import-outside-toplevel
  from tiny import VAE_CONFIG, tiny_config  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("decoder"))
  train.train_and_evaluate(tiny_config(VAE_CONFIG, **{
      "vae.init_workdir": vae_workdir, "vae.train_encoder": False, "vae.latent_noise": 0.5}),
      workdir)
  return workdir


@pytest.fixture(scope="session")
def dit_workdir(tmp_path_factory, vae_workdir):
  """A tiny DiT run on the tiny VAE, trained to continue a prefix; shared by sampling tests."""
  from sorajax import train  # pylint: disable=import-outside-toplevel
  from tiny import DIT_CONFIG, tiny_config  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("dit"))
  config = tiny_config(DIT_CONFIG)
  config.vae_workdir = vae_workdir
  config.sample.steps = 3
  config.flow.given_frames.prefix = 0.5  # so the run can also sample frame by frame
  config.sample.stage_frames = 1
  config.flow.frame_noise_correlation = 0.5  # sampling draws the same correlated prior
  config.sample.rollout_refresh = 0.5  # rollouts redraw their chunks unless a test says not to
  config.flow.anchor = 0.5  # rollouts show later chunks an anchor frame unless a test says not to
  train.train_and_evaluate(config, workdir)
  return workdir
