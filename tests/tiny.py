"""Tiny configs (and a tiny VAE) shared by the tests: small models, 5x16x16 clips, a few steps."""
import os

import jax
import jax.numpy as jnp

from sorajax import configuration
from sorajax.models import vae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAE_CONFIG = os.path.join(ROOT, "configs/shapes/vae.py")
DIT_CONFIG = os.path.join(ROOT, "configs/shapes/dit.py")


def tiny_config(path: str, steps: int = 2, **overrides):
  """The config file at `path` shrunk for tests; overrides are {"section.name": value}."""
  config = configuration.load_config_file(
      f"{path}:variant=tiny,frames=5,size=16,steps={steps},batch=8")
  config.train.log_every = 1
  config.train.warmup_steps = 1
  config.train.checkpoint_every = 2
  config.data.max_objects = 2
  if "latent_cache" in config.data:
    config.data.latent_cache = 0  # tests that want one ask for it
  if "buckets" in config.data:
    config.data.buckets = ""  # one clip size (one compile per test run) unless a test asks
  if "text" in config:
    config.text.encoder = "learned"  # tests of the pretrained encoders ask for them
  if "flow" in config:
    config.flow.latent_stats_batches = 1
    for mode in config.flow.given_frames:  # 5-frame clips have 2 latent frames: tests ask for modes
      config.flow.given_frames[mode] = 0.0
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  return config



def perturbed_tiny_vae(scale: float = 0.05, **overrides):
  """(the tiny VAE, its params with noise on every leaf): zero-initialised biases hide no path."""
  model = vae.get_vae("tiny", **overrides)
  params = model.init(jax.random.key(0), jnp.zeros((1, 5, 16, 16, 3)))["params"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return model, jax.tree.unflatten(
      tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
