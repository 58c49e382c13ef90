"""Every test sees 8 fake CPU devices, so sharded paths run on one machine.

Tests run few steps of tiny models, so XLA's compile time dominates: the flags below trade
generated-code speed for a 3-5x faster compile.
"""
import os

os.environ["XLA_FLAGS"] = " ".join([
    os.environ.get("XLA_FLAGS", ""),
    "--xla_force_host_platform_device_count=8",
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def vae_workdir(tmp_path_factory):
  """A tiny VAE run, trained once per test process and shared by the DiT tests."""
  from sorajax import train  # pylint: disable=import-outside-toplevel
  from tiny import VAE_CONFIG, tiny_config  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("vae"))
  train.train_and_evaluate(tiny_config(VAE_CONFIG), workdir)
  return workdir
