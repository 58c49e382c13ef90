"""Training objectives: what the one trainer optimises, chosen by `config.objective`.

An objective owns its model(s) and exposes
  tokenizer             None, or what turns captions into tokens in the input pipeline
  init_params(rng)      boxed (logically named) parameters of the trainable model
  frozen                a pytree of fixed inputs to the loss (e.g. a trained VAE), passed to the step
  loss(params, frozen, batch, rng, step) -> (scalar loss, dict of scalar metrics)
  model_params(params)  the weights inference needs, out of the trained parameters
  train_flops(bucket)   analytic matmul FLOPs of one training step on a bucket's global batch (0 if
                        not counted), for the throughput and MFU logs
  prepare(workdir)      one-off work before training (e.g. measuring latent statistics)
  evaluate(params, step, workdir) -> dict of "eval/..." scalars; every train.eval_every steps and
                        at the last step
  finish(params, workdir)  one-off work after the last step (e.g. storing latent statistics)
"""
from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from sorajax.configuration import (ConfigError, load_saved_config, record_vae_run,
                                   write_json_atomic)
from sorajax.data import latent_cache, latent_records, pipeline, prompt_embeddings, shapes
from sorajax.data import video_io
from sorajax.models import discriminator as disc_lib
from sorajax.models import dit as dit_lib
from sorajax.models import factors
from sorajax.models import text as text_lib
from sorajax.models import text_encoders
from sorajax.models import vae as vae_lib
from sorajax.models.denoiser import TextToVideo
from sorajax.diffusion import flow
from sorajax.diffusion import frame_conditioning
from sorajax.parallel import context as context_lib
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import checkpoint as checkpoint_lib
from sorajax.training import reconstruction
from sorajax.training import state as state_lib

LATENT_STATS_FILE = "latent_stats.json"
PROMPTS_DIR = "prompt_embeddings"  # cached text embeddings of a frozen encoder, in a workdir


def prompt_table_path(directory: str, encoder, shard_base: str) -> str:
  """Where `sorajax.precompute` keeps one latent shard's caption embeddings of `encoder`."""
  return os.path.join(directory, f"{encoder.fingerprint}-{os.path.basename(shard_base)}.npz")


def pixels_to_unit(video: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return video.astype(jnp.float32) / 127.5 - 1.0


def unit_to_pixels(video: jax.Array) -> jax.Array:
  return jnp.clip(jnp.round((video + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def _dtype(config) -> jnp.dtype:
  return jnp.dtype(config.compute_dtype)


def _checked(check, *args) -> None:
  """Runs a shape check and reports its failure as a config problem (one line, no traceback)."""
  try:
    check(*args)
  except ValueError as e:
    raise ConfigError(str(e)) from e


# Architecture fields a config may set on top of its named VAE variant (absent: the variant's).
VAE_ARCHITECTURE_FIELDS = ("channels", "num_res_blocks", "factorized", "mid_attention",
                           "refine_features", "refine_width")


def build_vae(config: ml_collections.ConfigDict) -> vae_lib.CausalVideoVAE:
  v = config.vae
  overrides = {name: v[name] for name in VAE_ARCHITECTURE_FIELDS if name in v}
  if "channels" in overrides:
    overrides["channels"] = tuple(overrides["channels"])
  try:
    return vae_lib.get_vae(v.variant, temporal_factor=v.temporal_factor,
                           spatial_factor=v.spatial_factor, latent_channels=v.latent_channels,
                           dtype=_dtype(config), **overrides)
  except ValueError as e:
    raise ConfigError(str(e)) from e


class VAEObjective:
  """Reconstruction (L1 or L2) + a small KL pull toward the unit Gaussian + an optional hinge GAN,
  + an optional temporal term (vae.temporal_weight): the same norm of the error's change from
  frame to frame, so a still scene decodes still rather than flickering with the decoder's
  per-frame upsampling.

  Parameters are {"vae": ...}, plus {"discriminator": ...} when vae.adversarial_weight > 0. Both
  train in one step from one summed loss: the generator term sees the discriminator through
  stop_gradient and the discriminator term sees the reconstruction through stop_gradient, so each
  part's gradient is exactly that of its own objective. The adversarial terms switch on at step
  vae.adversarial_start, once reconstructions are good enough for the judge to learn from.
  """

  tokenizer = None
  frozen = {}
  train_sources = None  # the pipeline renders its own
  prompt_table = None

  def __init__(self, config: ml_collections.ConfigDict, mesh=None):
    self.mesh = mesh
    self.config = config
    v = config.vae
    self.model = build_vae(config)
    d = config.data
    _checked(factors.check_video_shape, d.frames, d.height, d.width, v.temporal_factor,
             v.spatial_factor)
    if v.recon_loss not in ("l1", "l2"):
      raise ConfigError(f"vae.recon_loss={v.recon_loss!r} is unknown; valid: l1, l2")
    # Runs saved before the adversarial term have no such fields: no discriminator.
    self.adversarial_weight = float(v.get("adversarial_weight", 0.0))
    self.adversarial_start = int(v.get("adversarial_start", 0))
    self.temporal_weight = float(v.get("temporal_weight", 0.0))  # 0 in runs saved before it
    if self.temporal_weight < 0:
      raise ConfigError(f"vae.temporal_weight={self.temporal_weight} must be >= 0 (0 turns the "
                        "temporal term off)")
    if self.adversarial_weight < 0 or self.adversarial_start < 0:
      raise ConfigError(f"vae.adversarial_weight={self.adversarial_weight} and "
                        f"vae.adversarial_start={self.adversarial_start} must be >= 0 "
                        "(weight 0 turns the discriminator off)")
    self.discriminator = None
    if self.adversarial_weight > 0:
      self.discriminator = disc_lib.PatchDiscriminator3D(
          tuple(v.get("discriminator_channels", (32, 64, 128))), dtype=_dtype(config))

  def prepare(self, workdir: str, training: bool = True) -> None:
    del workdir, training

  def init_params(self, rng):
    d = self.config.data
    vae_rng, disc_rng = jax.random.split(rng)
    video = jnp.zeros((1, d.frames, d.height, d.width, 3))
    params = {"vae": self.model.init(vae_rng, video)["params"]}
    if self.discriminator is not None:
      params["discriminator"] = self.discriminator.init(disc_rng, video)["params"]
    return params

  def train_flops(self, bucket) -> int:
    del bucket
    return 0  # convolutions are not counted

  def model_params(self, params):
    """The VAE's own weights (what encoding and decoding need) out of the trained parameters."""
    return params["vae"]

  def loss(self, params, frozen, batch, rng, step):
    del frozen
    video = pixels_to_unit(batch["video"])
    out = self.model.apply({"params": params["vae"]}, video, sample_rng=rng)
    recon_video = out["recon"].astype(jnp.float32)
    error = recon_video - video
    norm = jnp.abs if self.config.vae.recon_loss == "l1" else jnp.square
    recon = norm(error).mean()
    kl = vae_lib.kl_divergence(out["mean"], out["logvar"]).mean()
    mse = jnp.square(error).mean()
    psnr = 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))  # peak-to-peak range of [-1, 1] is 2
    # An error the frames share is a still image's error; one that changes between them is flicker.
    temporal = norm(jnp.diff(error, axis=1)).mean() if video.shape[1] > 1 else jnp.zeros(())
    total = recon + self.config.vae.kl_weight * kl + self.temporal_weight * temporal
    metrics = {"recon": recon, "kl": kl, "psnr": psnr, "temporal": temporal}
    if self.discriminator is not None:
      judge = lambda p, v: self.discriminator.apply({"params": p}, v)
      disc = params["discriminator"]
      generator = disc_lib.hinge_generator_loss(judge(jax.lax.stop_gradient(disc), recon_video))
      discriminator = disc_lib.hinge_discriminator_loss(
          judge(disc, video), judge(disc, jax.lax.stop_gradient(recon_video)))
      on = jnp.asarray(step >= self.adversarial_start, jnp.float32)
      total = total + on * (self.adversarial_weight * generator + discriminator)
      metrics.update(generator=generator, discriminator=discriminator)
    return total, metrics

  # -- evaluation and the statistics the DiT needs, from the trainer's hooks.
  def _reconstructor(self):
    if not hasattr(self, "_reconstruct"):
      def reconstruct(vae_params, video_uint8):
        video = pixels_to_unit(video_uint8)
        mean, _ = self.model.apply({"params": vae_params}, video, method=self.model.encode)
        recon = self.model.apply({"params": vae_params}, mean, method=self.model.decode)
        scores = reconstruction.psnr(recon, video)
        # Frames too small for the SSIM window get NaN, which `evaluate` leaves out.
        ssim = (reconstruction.ssim(recon, video) if reconstruction.fits_ssim(*video.shape[2:4])
                else jnp.full_like(scores, jnp.nan))
        return recon, mean, scores, ssim
      # Replicated outputs: every process of a multi-host job can read them whole.
      self._reconstruct = jax.jit(reconstruct, out_shardings=(
          None if self.mesh is None else mesh_lib.replicated(self.mesh)))
    return self._reconstruct

  def _examples(self, split: str, count: int) -> list[dict]:
    source = pipeline.make_source(self.config.data, split, self.config.seed)
    return [source[i] for i in range(min(count, len(source)))]

  def _clips(self, split: str, count: int) -> np.ndarray:
    return np.stack([example["video"] for example in self._examples(split, count)])

  def _in_batches(self, vae_params, clips: np.ndarray):
    """Runs the jitted reconstruction over `clips` in train-batch-sized pieces; numpy outputs."""
    size = self.config.train.batch_size
    pieces = [jax.device_get(self._reconstructor()(vae_params, clips[i:i + size]))
              for i in range(0, len(clips), size)]
    return [np.concatenate(parts) for parts in zip(*pieces)]

  def evaluate(self, params, step: int, workdir: str) -> dict[str, float]:
    """Held-out PSNR, SSIM and flicker (the mean change of the error from frame to frame, in gray
    levels of 0-255) of the posterior mean, and on the built-in world what its judge reads in
    the reconstructions (reconstruction.judged_shapes); also writes an original | reconstruction
    video of the first clips to workdir/reconstructions."""
    count = self.config.vae.get("eval_clips", 64)
    if count <= 0:
      return {}
    examples = self._examples("heldout", count)
    clips = np.stack([example["video"] for example in examples])
    recon, _, psnr, ssim = self._in_batches(self.model_params(params), clips)
    recon_pixels = np.asarray(unit_to_pixels(recon))
    if jax.process_index() == 0:
      out_dir = os.path.join(workdir, "reconstructions")
      os.makedirs(out_dir, exist_ok=True)
      shown = min(4, count)
      video = reconstruction.side_by_side(clips[:shown], recon_pixels[:shown])
      video_io.write_mp4(os.path.join(out_dir, f"step_{step:06d}.mp4"), video, scale=4)
    scores = {"eval/psnr": float(psnr.mean()), "eval/psnr_min": float(psnr.min())}
    if "prompt" in examples[0]:  # the built-in world: can the judge still read the shapes?
      scores.update(reconstruction.judged_shapes(recon_pixels, [e["prompt"] for e in examples]))
    if clips.shape[1] > 1:
      error = recon_pixels.astype(np.float32) - clips.astype(np.float32)
      scores["eval/flicker"] = float(np.abs(np.diff(error, axis=1)).mean())
    if not np.isnan(ssim).any():
      scores["eval/ssim"] = float(ssim.mean())
    return scores

  def finish(self, params, workdir: str) -> None:
    """Stores per-channel latent mean and std with the checkpoint, so a DiT trains on unit-scale
    latents without measuring them again."""
    step = checkpoint_lib.require_checkpoint(workdir)
    clips = self._clips("train", self.config.vae.get("latent_stats_clips", 256))
    latents = self._in_batches(self.model_params(params), clips)[1]
    latents = latents.reshape(-1, latents.shape[-1]).astype(np.float64)
    if jax.process_index() == 0:
      write_json_atomic(os.path.join(workdir, LATENT_STATS_FILE),
                        {"step": step, "clips": len(clips), "mean": latents.mean(axis=0).tolist(),
                         "std": (latents.std(axis=0) + 1e-6).tolist()})


def restore_inference_params(workdir: str, mesh, rules=None, step: int | None = None):
  """(saved config, the weights to sample with, their step) from a trained workdir at `step`
  (default: the latest), sharded on `mesh`."""
  config, _, params, step = restore_run(workdir, mesh, rules, step)
  return config, params, step


def restore_run(workdir: str, mesh, rules=None, step: int | None = None):
  """`restore_inference_params` with the run's objective after the config: built once, with the
  frozen weights it loads (a DiT's VAE and text encoder)."""
  config = load_saved_config(workdir)
  step = checkpoint_lib.require_checkpoint(workdir, step)
  objective = build_objective(config, mesh)
  rules = rules if rules is not None else mesh_lib.logical_rules(config.logical_rules)
  optimizer = state_lib.make_optimizer(config.train)
  target, _ = state_lib.abstract_state(objective.init_params, optimizer, config.train.ema_decay,
                                       mesh, rules)
  checkpointer = checkpoint_lib.Checkpointer(workdir, every=1, keep=None)
  try:
    state = checkpointer.restore(step, target)
  finally:
    checkpointer.close()
  return config, objective, objective.model_params(state.inference_params), step


def vae_step_to_train_on(config: ml_collections.ConfigDict, workdir: str) -> int:
  """The VAE checkpoint a DiT run at `workdir` trains on, settled once before the run's config
  is saved (so samplers load that step, not one the VAE saves later): on a resumed run the one
  it began with; else `config.vae_step`, or with 0 the VAE's latest, as process 0 finds it."""
  asked = config.get("vae_step", 0)
  if checkpoint_lib.saved_steps(workdir) and os.path.isfile(os.path.join(workdir, "config.json")):
    began = load_saved_config(workdir)
    if (os.path.isdir(began.get("vae_workdir", ""))
        and os.path.realpath(began.vae_workdir) != os.path.realpath(config.vae_workdir)):
      raise ConfigError(f"{workdir} was trained on the VAE at {began.vae_workdir}; resume with "
                        f"--config.vae_workdir={began.vae_workdir}")
    if began.get("vae_step"):
      if asked and asked != began.vae_step:
        raise ConfigError(f"{workdir} was trained on its VAE at step {began.vae_step}; resume "
                          f"with --config.vae_step={began.vae_step} (or 0)")
      return began.vae_step
    logging.warning("%s was saved before runs recorded their VAE step; resuming on the VAE's "
                    "latest", workdir)
  held = checkpoint_lib.saved_steps(config.vae_workdir)
  if asked or not held:  # no VAE checkpoint: the objective says so, after checking the config
    return asked
  return int(multihost_utils.broadcast_one_to_all(np.int32(held[-1])))


class DiTObjective:
  """Rectified flow on normalised VAE latents, conditioned on caption tokens.

  The VAE comes from `config.vae_workdir` and stays frozen; captions are dropped (replaced by the
  empty caption) with probability `flow.caption_dropout` so the model also learns the unconditional
  velocity that classifier-free guidance needs. `flow.given_frames` maps frame-conditioning modes
  (diffusion/frame_conditioning.py) to the share of examples that get those frames clean.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh, vae=None, text_params=None):
    """`vae`: (VAE config, VAE params, step) in place of restoring `config.vae_workdir`, and
    `text_params` in place of loading a pretrained text encoder's weights; ahead-of-time compiles
    pass abstract params (sorajax/aot.py)."""
    self.config = config
    d = config.data
    # Runs saved before pretrained encoders trained their own ("learned").
    self.text_encoder = None  # a frozen pretrained encoder, or None for the learned one
    kind = config.text.get("encoder", "learned")
    if kind == "learned":
      reworded = d.get("caption_rewording", 0.0) > 0  # 0 in runs saved before it
      self.tokenizer = text_lib.WordTokenizer(shapes.caption_vocabulary(reworded),
                                              d.text_max_length)
      self.text_module = text_lib.TextEncoder(
          vocab_size=self.tokenizer.vocab_size, hidden=config.text.hidden, depth=config.text.depth,
          num_heads=config.text.num_heads, max_length=d.text_max_length, dtype=_dtype(config))
      self.text_width = config.text.hidden
    else:
      try:
        self.text_encoder = text_encoders.pretrained(kind, config.text.get("weights", ""),
                                                     d.text_max_length, _dtype(config))
      except ValueError as e:
        raise ConfigError(str(e)) from e
      self.tokenizer, self.text_width = self.text_encoder.tokenizer, self.text_encoder.width
    if d.source == "shapes":
      needed = self.tokenizer.count(shapes.longest_caption(
          d.max_objects, self.tokenizer.count, d.get("caption_rewording", 0.0) > 0))
      if d.text_max_length < needed:
        # Truncation would drop objects from captions while the videos still show them.
        raise ConfigError(f"data.text_max_length={d.text_max_length} truncates captions of up to "
                          f"{d.max_objects} objects ({needed} tokens); set "
                          f"--config.data.text_max_length={needed} or more")
    self.null_tokens = self.tokenizer.encode("")
    vae_step = config.get("vae_step", 0) or None  # runs saved before it: the latest
    held = checkpoint_lib.saved_steps(config.vae_workdir)
    if vae is None and vae_step and held and vae_step not in held:
      raise ConfigError(f"the VAE run {config.vae_workdir} holds no step {vae_step} (vae_step), "
                        f"only {checkpoint_lib.describe_steps(held)}; a DiT decodes with the VAE "
                        "step it trained on: keep that checkpoint (the VAE's "
                        "train.keep_checkpoints), or train the DiT on another")
    self.vae_config, vae_params, self.vae_step = vae or restore_inference_params(
        config.vae_workdir, mesh, step=vae_step)
    self.vae = build_vae(self.vae_config)
    self.temporal_factor = self.vae_config.vae.temporal_factor
    self.spatial_factor = self.vae_config.vae.spatial_factor
    self.latent_channels = self.vae_config.vae.latent_channels
    self.mesh, self.rules = mesh, mesh_lib.logical_rules(config.logical_rules)
    self.dit = dit_lib.get_dit(config.dit.variant, patch=tuple(config.dit.patch),
                               out_channels=self.latent_channels, attention=config.dit.attention,
                               positions=config.dit.get("positions", "sincos"),  # runs before rope
                               pooled_text=config.dit.get("pooled_text", False),
                               text_attention=config.dit.get("text_attention", "cross"),
                               remat=config.dit.get("remat", "none"),
                               scan_unroll=config.dit.get("scan_unroll", 1),
                               context_parallel=config.dit.get("context_parallel", "ulysses"),
                               anchor_frame=float(config.flow.get("anchor", 0.0)) > 0,
                               dtype=_dtype(config))
    self.check_shape(d.frames, d.height, d.width)
    self.buckets = pipeline.train_buckets(config)
    for bucket in self.buckets:
      self.check_shape(*bucket.size)
    # Runs saved before frame conditioning have no flow.given_frames: text-only training. A mode
    # needs the longest bucket to have room for it; shorter buckets (images) train without it.
    self.given_frames = {m: float(p) for m, p in config.flow.get("given_frames", {}).items()}
    _checked(frame_conditioning.check_probabilities, self.given_frames,
             max(self.latent_shape(*b.size)[0] for b in self.buckets))
    # Runs saved before correlated noise have no flow.frame_noise_correlation: i.i.d. noise.
    self.frame_noise_correlation = float(config.flow.get("frame_noise_correlation", 0.0))
    _checked(flow.check_frame_correlation, self.frame_noise_correlation)
    self.motion_weight = float(config.flow.get("motion_weight", 0.0))  # 0 in runs saved before it
    _checked(flow.check_motion_weight, self.motion_weight)
    self.given_noise = float(config.flow.get("given_noise", 0.0))  # 0 in runs saved before it
    _checked(flow.check_given_noise, self.given_noise)
    # Share of video examples shown an anchor frame (flow.py `check_anchor`; 0 before it).
    self.anchor = float(config.flow.get("anchor", 0.0))
    _checked(flow.check_anchor, self.anchor, config.dit.patch[0])
    if self.anchor and d.get("latent_records", ""):
      raise ConfigError("flow.anchor needs an anchor frame per clip, which precomputed latents "
                        "(data.latent_records) do not hold yet; train from data.latent_cache, or "
                        "set --config.flow.anchor=0")
    self.self_context = float(config.flow.get("self_context", 0.0))  # 0 in runs saved before it
    self.self_context_time = float(config.flow.get("self_context_time", 0.5))
    _checked(flow.check_self_context, self.self_context, self.self_context_time)
    # Runs saved before the time shift trained on unshifted logit-normal times.
    self.time_sampling = config.flow.get("time_sampling", "logit_normal")
    _checked(flow.check_time_sampling, self.time_sampling)
    self.shift_reference_tokens = int(config.flow.get("shift_reference_tokens", 0))
    _checked(flow.length_shift, float(config.flow.get("time_shift", 1.0)), 1,
             self.shift_reference_tokens)
    self.frozen = {"vae": vae_params, "latent_mean": None, "latent_std": None}
    if self.text_encoder is not None:
      self.text_params = (self.text_encoder.load_params() if text_params is None
                          else text_params)  # host arrays, or shapes ahead of time
      self.frozen["text"] = self.text_params  # batches of tokens are encoded in the step
    self.train_sources = None  # per bucket, set by `prepare` when data.latent_cache > 0
    # Cached text embeddings (frozen encoders; set by `prepare`): the training captions' for
    # latent caches and precomputed latents, whose batches then carry embeddings, not tokens;
    # the run's stored table when sampling.
    self.prompt_table = None

  def check_shape(self, frames: int, height: int, width: int) -> None:
    """Pixels must fit the VAE's factors, the latent grid the DiT's patch, and its tokens the
    mesh's context axis."""
    pt, ph, pw = self.config.dit.patch
    _checked(factors.check_video_shape, frames, height, width, self.temporal_factor,
             self.spatial_factor * max(ph, pw), pt)
    self._check_context_split(frames, height, width)

  def _check_context_split(self, frames: int, height: int, width: int) -> None:
    """A clip's self-attention sequence must split over the mesh's context axis."""
    dit = self.dit
    shape = self.latent_shape(frames, height, width)
    tokens = self.num_tokens(shape)
    if dit.anchor_frame and frames > 1:  # an anchor frame's tokens join the sequence
      tokens += self.num_tokens((1,) + shape[1:])
    if dit.text_attention == "joint":
      tokens += self.config.data.text_max_length
    _checked(context_lib.check_mesh_split, self.mesh, self.rules, tokens, dit.num_heads,
             dit.context_parallel)

  def num_tokens(self, latent_shape: tuple[int, ...]) -> int:
    """DiT tokens per clip of latents (T, H, W, C)."""
    return int(np.prod([n // p for n, p in zip(latent_shape[:3], self.config.dit.patch)]))

  def time_shift(self, base_shift: float, latent_shape: tuple[int, ...]) -> float:
    """`base_shift` scaled to this clip size's token count (flow.length_shift)."""
    return flow.length_shift(base_shift, self.num_tokens(latent_shape), self.shift_reference_tokens)

  def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    return (1 + (frames - 1) // self.temporal_factor, height // self.spatial_factor,
            width // self.spatial_factor, self.latent_channels)

  # -- what a run needs before its first step or sample.
  def prepare(self, workdir: str, training: bool = True) -> None:
    """Latent statistics (measured once per run, so the DiT sees unit-scale latents). With
    `training`: the VAE run's place recorded next to the run, the training sources (latent cache
    or records) and their captions' embeddings. Sampling (training=False) looks prompts up in the
    run's stored embeddings and opens no latent cache or records, so a run whose training data
    moved still samples."""
    if training and jax.process_index() == 0 and os.path.isdir(self.config.vae_workdir):
      os.makedirs(workdir, exist_ok=True)
      record_vae_run(workdir, self.config.vae_workdir)
    path = os.path.join(workdir, LATENT_STATS_FILE)
    if not os.path.isfile(path):
      mean, std = self._vae_latent_stats()
      # Kept for the next reader; a sampler leaves a read-only run folder as it is.
      if jax.process_index() == 0 and (training or os.access(workdir, os.W_OK)):
        os.makedirs(workdir, exist_ok=True)
        write_json_atomic(path, {"mean": mean.tolist(), "std": std.tolist()})
    else:
      with open(path) as f:
        stats = json.load(f)
      mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
    self.frozen["latent_mean"] = jnp.asarray(mean, jnp.float32)
    self.frozen["latent_std"] = jnp.asarray(std, jnp.float32)
    if not training:
      if self.text_encoder is not None:
        self.prompt_table = self.prompt_embeddings(os.path.join(workdir, PROMPTS_DIR))
    elif self.config.data.get("latent_records", ""):
      self.train_sources = [self._latent_records(b) for b in self.buckets]
      if self.text_encoder is not None:
        self.prompt_table = self._precomputed_prompts()
    elif self.config.data.get("latent_cache", 0) > 0:
      self.train_sources = [self._latent_cache(workdir, b, len(self.buckets) > 1)
                            for b in self.buckets]
      if self.text_encoder is not None:
        directory = os.path.join(workdir, PROMPTS_DIR)
        self.prompt_table = self.prompt_embeddings(directory)
        new = sum(self.prompt_table.add(s.captions, self.encode_prompts)
                  for s in self.train_sources)
        if new and os.access(workdir, os.W_OK):  # a read-only run folder still samples
          self.prompt_table.save(directory, f"latent-cache-{jax.process_index()}")
    if self.text_encoder is not None:
      # The empty caption's embeddings, for caption dropout; with every caption's embeddings in a
      # table, the step runs no encoder and its weights need not sit on every device.
      null = self.encode_prompts(*(a[None] for a in self.null_tokens))
      self.frozen["null_context"] = jnp.asarray(null, jnp.float32)
      if self.prompt_table is not None:
        self.frozen.pop("text", None)

  # -- a frozen text encoder's embeddings, cached per caption (data/prompt_embeddings.py).
  def prompt_embeddings(self, directory: str | None = None) -> prompt_embeddings.PromptEmbeddings:
    """An empty table for this run's frozen encoder, filled from `directory`'s tables if given."""
    table = prompt_embeddings.PromptEmbeddings(self.text_encoder.fingerprint, self.tokenizer,
                                               self.text_width)
    if directory:
      try:
        table.load(directory)
      except ValueError as e:
        raise ConfigError(str(e)) from e
    return table

  def encode_prompts(self, ids: np.ndarray, mask: np.ndarray) -> jax.Array:
    """Token rows -> the frozen encoder's embeddings, on this process's first device."""
    if not hasattr(self, "_prompt_encoder"):
      device = jax.local_devices()[0]
      params = jax.device_put(self.text_params, device)
      encode = jax.jit(self.text_encoder.apply)
      self._prompt_encoder = lambda i, m: encode(params, jax.device_put(i, device),
                                                 jax.device_put(m, device))
    return self._prompt_encoder(ids, mask)

  def _precomputed_prompts(self) -> prompt_embeddings.PromptEmbeddings:
    """The embeddings `sorajax.precompute` stored for this encoder next to the latents, one table
    per shard; a shard without one would fail mid-training on its first caption."""
    directory = os.path.join(self.config.data.latent_records, PROMPTS_DIR)
    for source in self.train_sources:
      for base in source.shard_bases:
        if not os.path.isfile(prompt_table_path(directory, self.text_encoder, base)):
          raise ConfigError(f"{self.config.data.latent_records}: shard {os.path.basename(base)} "
                            "has no text embeddings of this run's encoder (text.encoder="
                            f"{self.config.text.encoder!r}); precompute again with this config")
    return self.prompt_embeddings(directory)

  def _latent_records(self, bucket) -> latent_records.LatentRecords:
    """One bucket of a latent dataset written by sorajax.precompute, checked against this run's
    VAE: latents of another VAE would train the DiT on codes its decoder does not read."""
    directory = self.config.data.latent_records
    try:
      source = latent_records.LatentRecords(directory, bucket.name)
    except ValueError as e:
      raise ConfigError(str(e)) from e
    vae = (os.path.realpath(self.config.vae_workdir), self.vae_step)
    if source.info["vae_workdir"] != vae[0]:
      raise ConfigError(f"{directory} was encoded with the VAE at {source.info['vae_workdir']}, "
                        f"this run uses {vae[0]}; precompute again with this run's config")
    if source.info["vae_step"] != vae[1]:
      raise ConfigError(f"{directory} was encoded with the VAE at step {source.info['vae_step']}, "
                        f"this run uses step {vae[1]}; train with "
                        f"--config.vae_step={source.info['vae_step']}, or precompute again")
    return source

  def _latent_cache(self, workdir: str, bucket, named: bool) -> latent_cache.LatentCache:
    """This process's pre-encoded training clips of one bucket (data/latent_cache.py), built on
    first use."""
    d = self.config.data
    anchor = pipeline.wants_anchor(self.config, bucket.frames)
    source = pipeline.make_source(d, "train", self.config.seed, bucket.size, anchor)
    data = {k: v for k, v in d.to_dict().items()
            if k not in ("worker_count", "latent_cache", "buckets")}
    data.update(frames=bucket.frames, height=bucket.height, width=bucket.width)
    fingerprint = dict(data=data, seed=self.config.seed, vae_step=self.vae_step,
                       vae_workdir=os.path.abspath(self.config.vae_workdir),
                       source=getattr(source, "fingerprint", None))  # a dataset's contents
    if anchor:  # only then, so caches built before anchors stay valid
      fingerprint["anchor"] = True
    try:
      return latent_cache.load_or_build(workdir, source, d.latent_cache,
                                        self.vae_latents, fingerprint,
                                        name=bucket.name if named else "",
                                        share=pipeline.batch_share(self.mesh))
    except ValueError as e:
      raise ConfigError(str(e)) from e

  def vae_latents(self, videos: np.ndarray) -> jax.Array:
    """uint8 clips (N, T, H, W, 3) -> the VAE posterior means, before normalisation, encoded on
    this process's first device (the latent cache and sorajax.precompute store these)."""
    if not hasattr(self, "_encoder"):
      self._encoder = self._raw_encoder()
    return self._encoder(self._local_vae(), videos)

  def _raw_encoder(self):
    """Jitted (vae params, uint8 videos) -> the VAE posterior means, before normalisation."""
    return jax.jit(lambda p, v: self.vae.apply({"params": p}, pixels_to_unit(v),
                                               method=self.vae.encode)[0])

  def _local_vae(self):
    """The VAE weights whole on this process's first device. Each process encodes its own clips
    (its latent-cache share); a program over the global mesh would take every process's clips
    for one shared input."""
    if not hasattr(self, "_local_vae_params"):
      whole = jax.device_put(self.frozen["vae"], mesh_lib.replicated(self.mesh))  # all processes
      device = jax.local_devices()[0]
      self._local_vae_params = jax.tree.map(
          lambda a: jax.device_put(a.addressable_data(0), device), whole)
    return self._local_vae_params

  def _vae_latent_stats(self) -> tuple[np.ndarray, np.ndarray]:
    """The statistics stored with the VAE checkpoint; VAE runs saved before they were stored (or a
    checkpoint newer than them) get them measured here."""
    path = os.path.join(self.config.vae_workdir, LATENT_STATS_FILE)
    if os.path.isfile(path):
      with open(path) as f:
        stats = json.load(f)
      if stats.get("step") == self.vae_step:
        return np.asarray(stats["mean"]), np.asarray(stats["std"])
    return self._measure_latent_stats()

  def _measure_latent_stats(self) -> tuple[np.ndarray, np.ndarray]:
    d, seed = self.config.data, self.config.seed
    # A fixed slice of the training world, identical on every process.
    source = pipeline.make_source(d, "train", seed)
    batch = 16
    latents = []
    for b in range(self.config.flow.latent_stats_batches):
      # A prepared dataset may hold fewer clips than the batches ask for: it comes round again.
      videos = np.stack([source[(b * batch + i) % len(source)]["video"] for i in range(batch)])
      latents.append(np.asarray(self.vae_latents(videos)))
    latents = np.concatenate(latents).reshape(-1, self.latent_channels)
    return latents.mean(axis=0), latents.std(axis=0) + 1e-6

  def encode(self, frozen, video_uint8: jax.Array) -> jax.Array:
    mean, _ = self.vae.apply({"params": frozen["vae"]}, pixels_to_unit(video_uint8),
                             method=self.vae.encode)
    return self.normalize(frozen, mean)

  def normalize(self, frozen, vae_latents: jax.Array) -> jax.Array:
    return (vae_latents - frozen["latent_mean"]) / frozen["latent_std"]

  def denormalize(self, frozen, latents: jax.Array) -> jax.Array:
    """The DiT's unit-scale latents back to the VAE's own scale (inverse of `normalize`)."""
    return latents * frozen["latent_std"] + frozen["latent_mean"]

  def init_params(self, rng):
    """{"text": ..., "dit": ...} with the learned encoder, {"dit": ...} with a frozen one."""
    d = self.config.data
    latents = jnp.zeros((1,) + self.latent_shape(d.frames, d.height, d.width))
    tokens, mask = (jnp.asarray(a)[None] for a in self.null_tokens)
    if self.text_encoder is None:  # one module, so a seed keeps giving the same weights
      return TextToVideo(self.text_module, self.dit).init(rng, latents, jnp.zeros((1,)), tokens,
                                                          mask)["params"]
    context = jnp.zeros(tokens.shape + (self.text_width,))
    return {"dit": self.dit.init(rng, latents, jnp.zeros((1,)), context, mask)["params"]}

  def train_flops(self, bucket) -> int:
    """3x the forward FLOPs (forward + backward) of the DiT and a learned text encoder per example,
    plus the DiT forward that estimates given frames under flow.self_context; a frozen encoder's
    forward is not counted (it is not trained, and mostly cached)."""
    latent_shape = self.latent_shape(*bucket.size)
    length = self.config.data.text_max_length
    per_frame = any(p > 0 for p in frame_conditioning.usable(self.given_frames,
                                                              latent_shape[0]).values())
    anchor = pipeline.wants_anchor(self.config, bucket.frames)
    forward = self.dit.forward_flops(latent_shape, length, self.text_width, per_frame, anchor)
    if self.text_encoder is None:
      forward += self.text_module.forward_flops(length)
    flops = 3 * forward
    if per_frame and self.self_context:
      flops += self.dit.forward_flops(latent_shape, length, self.text_width, False, anchor)
    return bucket.batch_size * flops

  def model_params(self, params):
    return params

  def evaluate(self, params, step: int, workdir: str) -> dict[str, float]:
    """Nothing during training: samples are judged by `python -m sorajax.evaluate`."""
    del params, step, workdir
    return {}

  def finish(self, params, workdir: str) -> None:
    del params, workdir

  def text_context(self, params, frozen, tokens, token_mask) -> jax.Array:
    """Caption tokens (B, L) -> the embeddings the DiT attends to (B, L, text_width), zero at
    padding: the learned encoder's (trained) or the frozen one's."""
    if self.text_encoder is None:
      return self.text_module.apply({"params": params["text"]}, tokens, token_mask)
    return self.text_encoder.apply(frozen["text"], tokens, token_mask)

  def velocity(self, params, latents, t, context, context_mask, anchor=None, anchor_mask=None):
    return self.dit.apply({"params": params["dit"]}, latents, t, context, context_mask, anchor,
                          anchor_mask)

  def anchor_latents(self, frozen, batch) -> jax.Array:
    """The batch's anchor frames (B, 1, h, w, C) as unit-scale latents."""
    if "anchor_latents" in batch:  # from the latent cache
      return self.normalize(frozen, batch["anchor_latents"])
    return jax.lax.stop_gradient(self.encode(frozen, batch["anchor"]))

  def loss(self, params, frozen, batch, rng, step):
    del step
    drop_rng, flow_rng, given_rng = jax.random.split(rng, 3)
    if "latents" in batch:  # from the latent cache
      x0 = self.normalize(frozen, batch["latents"])
    else:
      x0 = jax.lax.stop_gradient(self.encode(frozen, batch["video"]))
    given = None
    modes = frame_conditioning.usable(self.given_frames, x0.shape[1])
    if any(p > 0 for p in modes.values()):
      given = frame_conditioning.sample_given(given_rng, x0.shape[0], x0.shape[1], modes)
    mask = batch["token_mask"]
    drop = jax.random.bernoulli(drop_rng, self.config.flow.caption_dropout, (mask.shape[0], 1))
    null_tokens, null_mask = (jnp.asarray(a)[None] for a in self.null_tokens)
    if "text_embedding" in batch:  # looked up in the prompt-embedding cache
      context = batch["text_embedding"]
    else:
      tokens = batch["tokens"]
      if self.text_encoder is None:  # dropped before the encoder, which trains on the null caption
        tokens = jnp.where(drop, null_tokens, tokens)
        mask = jnp.where(drop, null_mask, mask)
      context = self.text_context(params, frozen, tokens, mask)
    if self.text_encoder is not None:
      null_context = (frozen["null_context"] if "null_context" in frozen
                      else self.text_context(params, frozen, null_tokens, null_mask))
      context = jnp.where(drop[..., None], null_context, context)
      mask = jnp.where(drop, null_mask, mask)
    anchor = anchor_mask = None
    if self.anchor and ("anchor" in batch or "anchor_latents" in batch):
      anchor = self.anchor_latents(frozen, batch)
      # Its own key, so runs without anchors keep their random streams.
      anchor_mask = jax.random.bernoulli(jax.random.fold_in(rng, 3), self.anchor, x0.shape[:1])
    loss, metrics = flow.flow_matching_loss(
        lambda x_t, t: self.velocity(params, x_t, t, context, mask, anchor, anchor_mask), x0,
        flow_rng,
        self.config.flow.logit_mean, self.config.flow.logit_std, given,
        self.frame_noise_correlation, self.config.flow.get("contrast_weight", 0.0),
        self.motion_weight, self.time_shift(self.config.flow.get("time_shift", 1.0), x0.shape[1:]),
        self.time_sampling, self.given_noise, self.self_context, self.self_context_time)
    if anchor_mask is not None:
      metrics["anchored"] = anchor_mask.mean()
    return loss, metrics


OBJECTIVES = {"vae": VAEObjective, "dit": DiTObjective}


def build_objective(config: ml_collections.ConfigDict, mesh, **kwargs):
  if config.objective not in OBJECTIVES:
    raise ConfigError(f"objective={config.objective!r} is unknown; valid: {', '.join(OBJECTIVES)}")
  return OBJECTIVES[config.objective](config, mesh, **kwargs)
