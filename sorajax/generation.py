"""Text -> video with a trained DiT workdir: per-sample seeded noise, Euler + CFG, VAE decode.

Each sample's noise comes from its own seed, so a video depends on (prompt, seed, settings) and not
on which batch or device produced it.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sorajax.configuration import ConfigError
from sorajax.diffusion import samplers
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import objectives


class VideoGenerator:
  """Loads a DiT run (and the VAE it names) once; `generate` many times."""

  def __init__(self, workdir: str, mesh=None):
    if mesh is None:
      mesh = mesh_lib.make_mesh({"data": -1})
    self.mesh = mesh
    self.config, self.params, self.step = objectives.restore_inference_params(workdir, mesh)
    if self.config.objective != "dit":
      raise ConfigError(f"{workdir!r} holds a {self.config.objective!r} run; sampling needs a DiT run")
    self.rules = mesh_lib.logical_rules(self.config.logical_rules)
    self.objective = objectives.build_objective(self.config, mesh)
    self.objective.prepare(workdir)
    self.frozen = jax.device_put(self.objective.frozen, mesh_lib.replicated(mesh))

  @functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8))
  def _generate(self, params, frozen, tokens, token_mask, seeds_shape, steps, guidance, shift,
                seeds):
    latent_shape = seeds_shape
    noise = jax.vmap(lambda s: jax.random.normal(jax.random.key(s), latent_shape))(seeds)
    null_tokens, null_mask = (jnp.asarray(a) for a in self.objective.null_tokens)

    def velocity(x, t, conditional):  # conditional (n,): prompt or null prompt, per example
      repeat = x.shape[0] // tokens.shape[0]  # 2 when guidance doubles the batch
      pick = lambda real, null: jnp.where(conditional[:, None], jnp.tile(real, (repeat, 1)), null)
      return self.objective.velocity(params, x, t, pick(tokens, null_tokens),
                                     pick(token_mask, null_mask))

    latents = samplers.euler(velocity, noise, steps, guidance, shift)
    return self.objective.decode(frozen, latents)

  def generate(self, captions: list[str], seeds: list[int], *, frames: int | None = None,
               height: int | None = None, width: int | None = None, steps: int | None = None,
               guidance: float | None = None, shift: float | None = None) -> np.ndarray:
    """uint8 videos (N, frames, height, width, 3), one per (caption, seed) pair."""
    if len(captions) != len(seeds):
      raise ValueError(f"{len(captions)} captions but {len(seeds)} seeds")
    d = self.config.data
    frames, height, width = frames or d.frames, height or d.height, width or d.width
    self.objective.check_shape(frames, height, width)
    steps = steps or self.config.sample.steps
    guidance = self.config.sample.guidance if guidance is None else guidance
    shift = self.config.sample.get("shift", 1.0) if shift is None else shift
    tokens, mask = self.objective.tokenizer.encode_batch(captions)
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      videos = self._generate(self.params, self.frozen, jnp.asarray(tokens), jnp.asarray(mask),
                              self.objective.latent_shape(frames, height, width), steps,
                              float(guidance), float(shift), jnp.asarray(seeds, jnp.uint32))
    return np.asarray(videos)
