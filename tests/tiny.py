"""Tiny configs shared by the tests that train: small models, 5x16x16 clips, a few steps."""
import os

from sorajax import configuration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAE_CONFIG = os.path.join(ROOT, "configs/shapes/vae.py")
DIT_CONFIG = os.path.join(ROOT, "configs/shapes/dit.py")


def tiny_config(path: str, steps: int = 2, **overrides):
  """The config file at `path` shrunk for tests; overrides are {"section.name": value}."""
  config = configuration.load_config_file(f"{path}:variant=tiny,frames=5,size=16,steps={steps},batch=8")
  config.train.log_every = 1
  config.train.warmup_steps = 1
  config.train.checkpoint_every = 2
  config.data.max_objects = 2
  if "latent_cache" in config.data:
    config.data.latent_cache = 0  # tests that want one ask for it
  if "flow" in config:
    config.flow.latent_stats_batches = 1
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  return config
