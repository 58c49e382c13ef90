"""Text -> video with a trained DiT workdir: per-sample seeded noise, a sampler + CFG, VAE decode.

Decoding is chunked (models/vae_chunked.py): DECODE_CHUNK latent frames at a time, so a long clip
decodes in the memory of a short one.

Each sample's noise comes from its own seed, so a video depends on (prompt, seed, settings) and not
on which batch or device produced it.

Staged sampling (`sample.stage_frames = k > 0`): sample the clip from text and keep its first k
latent frames, then sample it again with those frames given and keep k more, until every frame is
fixed. k = 1 on a 2-frame latent clip is text -> image -> video (Emu Video's factorisation); in
general it is autoregressive generation in chunks of k frames, the way long clips are made. It needs
a run trained to continue a prefix (`flow.given_frames.prefix > 0`, or `.first` when only the first
frame is ever given).
"""
from __future__ import annotations

import functools
import os
import uuid

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sorajax.configuration import ConfigError
from sorajax.diffusion import flow, samplers
from sorajax.models import vae_chunked
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import dit_objective
from sorajax.training import objectives
from sorajax.training import vae_objective


DECODE_CHUNK = 8  # latent frames per decoded piece (32 video frames at 4x temporal compression)


def stage_prefixes(frames: int, stage_frames: int) -> list[int]:
  """How many leading latent frames are given to each stage after the first: k, 2k, ... < frames."""
  return list(range(stage_frames, frames, stage_frames)) if stage_frames > 0 else []


def _checked_shift(objective, shift: float, latent_shape) -> float:
  try:
    return objective.time_shift(shift, latent_shape)
  except ValueError as e:
    raise ConfigError(str(e)) from e


class VideoGenerator:
  """Loads a DiT run (and the VAE it names) once; `generate` many times."""

  def __init__(self, workdir: str, mesh=None, decoder: str | None = None):
    """`decoder`: a VAE run fine-tuned from this run's VAE with its encoder kept
    (configs/shapes/vae.py, "decoder fine-tune"), whose decoder draws the videos instead."""
    if mesh is None:
      mesh = mesh_lib.make_mesh({"data": -1})
    self.mesh = mesh
    self.config, self.objective, self.params, self.step = objectives.restore_run(workdir, mesh)
    if self.config.objective != "dit":
      raise ConfigError(f"{workdir!r} holds a {self.config.objective!r} run; "
                        "sampling needs a DiT run")
    self.rules = mesh_lib.logical_rules(self.config.logical_rules)
    self.objective.prepare(workdir, training=False)
    if decoder:
      self.objective.frozen["vae"] = vae_objective.with_decoder_of(
          decoder, self.objective.vae_config, self.objective.frozen["vae"], mesh,
          f"the VAE at {self.config.vae_workdir}, step {self.objective.vae_step}")
    self.frozen = jax.device_put(self.objective.frozen, mesh_lib.replicated(mesh))
    self.coder = vae_chunked.ChunkedCoder(self.objective.vae, self.frozen["vae"], DECODE_CHUNK)
    if self.objective.text_encoder is not None:
      # Prompts embedded once per run folder: later calls and later jobs look them up. Only the
      # first process writes, and only where it may (a read-only run folder still samples).
      directory = os.path.join(workdir, dit_objective.PROMPTS_DIR)
      self.prompts = self.objective.prompt_table  # the run's stored embeddings
      writable = os.access(workdir, os.W_OK) and (not os.path.exists(directory)
                                                  or os.access(directory, os.W_OK))
      self._prompts_dir = directory if writable and jax.process_index() == 0 else None
      self._prompts_tag = f"sampling-{uuid.uuid4().hex[:12]}"  # one file per generator

  # `temperature` is traced, so a sweep over it reuses one compiled sampler.
  @functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8, 9, 10, 11, 12))
  def _generate(self, params, frozen, prompt, null_prompt, latent_shape, sampler, steps, guidance,
                shift, stage_frames, start, given_time, temperature, seeds, given, given_latents,
                source, anchor):
    """`prompt` and `null_prompt`: (text embeddings, mask) of the captions and of the empty one;
    `anchor` (n, 1, h, w, C) or None, shown to both."""
    def noise(stage):  # sample i's first stage draws from key(seed_i), later ones from folds of it
      key = lambda s: (jax.random.key(s) if stage == 0
                       else jax.random.fold_in(jax.random.key(s), stage))
      correlation = self.objective.frame_noise_correlation  # the prior the run was trained from
      return jax.vmap(lambda s: flow.frame_noise(key(s), latent_shape, correlation, frame_axis=0))(
          seeds)

    def velocity(x, t, conditional):  # conditional (n,): prompt or null prompt, per example
      repeat = x.shape[0] // prompt[1].shape[0]  # 2 when guidance doubles the batch

      def pick(real, null):
        rest = (1,) * (real.ndim - 1)
        return jnp.where(conditional.reshape((-1,) + rest), jnp.tile(real, (repeat,) + rest), null)
      shown = () if anchor is None else (jnp.tile(anchor, (repeat,) + (1,) * (anchor.ndim - 1)),)
      return self.objective.velocity(params, x, t, *map(pick, prompt, null_prompt), *shown)

    solve = samplers.get_sampler(sampler)

    def solve_around(x, stage_noise, held, clean, first=0):
      """Samples from x with the `held` frames of `clean` given: seen noised to `given_time`
      (by this stage's noise) and put back clean afterwards."""
      if held is None:
        return solve(velocity, x, steps, guidance, shift, start=first)
      seen = clean
      if given_time:
        seen = flow.interpolate(clean, stage_noise, jnp.full(clean.shape[:1], given_time))
      out = solve(velocity, x, steps, guidance, shift, held, seen, first, given_time)
      return jnp.where(held.reshape(held.shape + (1,) * (out.ndim - 2)), clean, out)

    first_noise = noise(0)
    x = temperature * first_noise
    if source is not None:  # an edit starts from the source clip noised to the start time
      x = flow.interpolate(source, x,
                           jnp.full(x.shape[:1], samplers.time_grid(steps, shift)[start]))
    latents = solve_around(x, first_noise, given, given_latents, start)
    for stage, fixed in enumerate(stage_prefixes(latent_shape[0], stage_frames), start=1):
      staged = jnp.broadcast_to(jnp.arange(latent_shape[0]) < fixed, latents.shape[:2])
      if given is not None:
        staged = staged | given
      fresh = noise(stage)  # the stage starts from it and shows its given frames noised by it
      latents = solve_around(temperature * fresh, fresh, staged, latents)
    return latents

  def encode(self, videos: np.ndarray) -> jax.Array:
    """uint8 videos (N, 1+f*k, H, W, 3) -> the DiT's unit-scale latents, coded in pieces."""
    mean, _ = self.coder.encode(vae_objective.pixels_to_unit(jnp.asarray(videos)))
    return self.objective.normalize(self.frozen, mean)

  def decode_pieces(self, latents: jax.Array):
    """Yields uint8 video pieces of unit-scale latents (N, T, h, w, C), frame 0 first."""
    vae_latents = self.objective.denormalize(self.frozen, latents)
    for piece in self.coder.decode_pieces(vae_latents):
      yield np.asarray(vae_objective.unit_to_pixels(piece))

  def decode(self, latents: jax.Array) -> np.ndarray:
    return np.concatenate(list(self.decode_pieces(latents)), axis=1)

  def sample_latents(self, captions: list[str], seeds: list[int], latent_shape, *,
                     steps: int | None = None, guidance: float | None = None,
                     shift: float | None = None, stage_frames: int | None = None,
                     sampler: str | None = None, given: np.ndarray | None = None,
                     given_latents: jax.Array | None = None, source: jax.Array | None = None,
                     strength: float = 1.0, given_noise: float | None = None,
                     anchor: jax.Array | None = None, temperature: float = 1.0) -> jax.Array:
    """Unit-scale latents (N, *latent_shape), one per (caption, seed) pair.

    `given` (N, T) bool with `given_latents` (N, *latent_shape) holds those latent frames fixed,
    shown to the model noised to the time `given_noise` (at most the run's flow.given_noise) and
    returned clean; `source` latents with `strength` < 1 start from the source noised part of the
    way (SDEdit). `anchor` (N, 1, h, w, C): a clean latent frame of the same video at another
    time (a rollout's first frame), for runs trained with flow.anchor > 0. `temperature` in
    (0, 1] scales the noise sampling starts from: below 1 draws closer to the most likely clip,
    with less variety between seeds. Unset settings take the run's `config.sample` values.
    """
    if len(captions) != len(seeds):
      raise ValueError(f"{len(captions)} captions but {len(seeds)} seeds")
    steps = steps or self.config.sample.steps
    guidance = self.config.sample.guidance if guidance is None else guidance
    if not 0.0 <= guidance <= samplers.MAX_GUIDANCE:
      raise ConfigError(f"guidance={guidance} is out of range; use 0 (the null prompt only) to "
                        f"{samplers.MAX_GUIDANCE:g} (1: no guidance)")
    shift = self.config.sample.get("shift", 1.0) if shift is None else shift
    sampler = sampler or self.config.sample.get("sampler", "euler")
    if sampler not in samplers.SAMPLERS:
      raise ConfigError(f"sampler={sampler!r} is unknown; valid: {', '.join(samplers.SAMPLERS)}")
    if stage_frames is None:
      stage_frames = self.config.sample.get("stage_frames", 0)
    shift = _checked_shift(self.objective, float(shift), latent_shape)
    try:
      start = samplers.edit_start(steps, strength)
    except ValueError as e:
      raise ConfigError(str(e)) from e
    if start and source is None:
      raise ValueError("strength < 1 edits a source clip; pass source latents")
    try:
      samplers.check_temperature(temperature)
    except ValueError as e:
      raise ConfigError(str(e)) from e
    if given_noise is None:
      given_noise = self.config.sample.get("given_noise", 0.0)
    self.check_given_noise(given_noise)
    prefixes = stage_prefixes(latent_shape[0], stage_frames)
    trained = self.objective.given_frames
    if prefixes and not (trained.get("prefix", 0.0) > 0
                         or (prefixes == [1] and trained.get("first", 0.0) > 0)):
      raise ConfigError(f"staged sampling (stage_frames={stage_frames}) needs a run trained with "
                        "flow.given_frames.prefix > 0 (or .first, for one given frame); "
                        "sample with --stage_frames=0")
    if given is not None:
      given = jnp.asarray(given, bool)
    if anchor is not None and not self.objective.anchor:
      raise ConfigError("this run was not trained with anchor frames (flow.anchor = 0); sample "
                        "without one")
    prompt, null_prompt = self.prompt_context(captions), self.prompt_context([""])
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return self._generate(self.params, self.frozen, prompt, null_prompt,
                            tuple(latent_shape), sampler, steps, float(guidance), shift,
                            int(stage_frames), start, float(given_noise),
                            jnp.asarray(temperature, jnp.float32),
                            jnp.asarray(seeds, jnp.uint32), given,
                            given_latents, source, anchor)

  def prompt_context(self, captions: list[str]) -> tuple[jax.Array, jax.Array]:
    """(text embeddings (N, L, D), mask (N, L)) of `captions`: a frozen encoder's from the
    prompt-embedding cache (encoding only captions it has not seen), the learned one's computed."""
    if self.objective.text_encoder is None:
      tokens, mask = self.objective.tokenizer.encode_batch(captions)
      with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
        context = self._learned_context(self.params, jnp.asarray(tokens), jnp.asarray(mask))
      return context, jnp.asarray(mask)
    self.objective.tokenizer.warn_long(captions)
    if self.prompts.add(captions, self.objective.encode_prompts) and self._prompts_dir:
      self.prompts.save(self._prompts_dir, self._prompts_tag)
    context, mask = self.prompts.lookup(captions)
    return jnp.asarray(context), jnp.asarray(mask)

  @functools.partial(jax.jit, static_argnums=0)
  def _learned_context(self, params, tokens, mask):
    return self.objective.text_context(params, None, tokens, mask)

  def check_given_noise(self, level: float) -> None:
    """Given frames can be shown noised only up to the level the run was trained with."""
    trained = self.objective.given_noise
    if not 0.0 <= level <= trained:
      raise ConfigError(f"given_noise={level} is out of range; this run was trained with given "
                        f"frames noised up to flow.given_noise={trained:g}: use 0 to {trained:g}")

  def generate(self, captions: list[str], seeds: list[int], *, frames: int | None = None,
               height: int | None = None, width: int | None = None, steps: int | None = None,
               guidance: float | None = None, shift: float | None = None,
               stage_frames: int | None = None, sampler: str | None = None,
               given_noise: float | None = None) -> np.ndarray:
    """uint8 videos (N, frames, height, width, 3), one per (caption, seed) pair.

    Unset settings take the run's `config.sample` values. `shift` is the time shift at the run's
    `flow.shift_reference_tokens` (when set), scaled to this clip size's token count.
    """
    d = self.config.data
    frames, height, width = frames or d.frames, height or d.height, width or d.width
    self.objective.check_shape(frames, height, width)
    latent_shape = self.objective.latent_shape(frames, height, width)
    latents = self.sample_latents(captions, seeds, latent_shape, steps=steps, guidance=guidance,
                                  shift=shift, stage_frames=stage_frames, sampler=sampler,
                                  given_noise=given_noise)
    return self.decode(latents)
