"""The VAE objective (`config.objective="vae"`): the causal video autoencoder trained on
reconstruction, with the pixel scaling and the model builder the DiT objective shares.
objectives.py lists the interface every objective exposes."""
from __future__ import annotations

import dataclasses
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from sorajax.configuration import ConfigError, checked, load_saved_config, write_json_atomic
from sorajax.data import pipeline, video_io
from sorajax.models import discriminator as disc_lib
from sorajax.models import factors
from sorajax.models import vae as vae_lib
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import checkpoint as checkpoint_lib
from sorajax.training import reconstruction

LATENT_STATS_FILE = "latent_stats.json"  # per-channel latent statistics, in a VAE workdir


def pixels_to_unit(video: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return video.astype(jnp.float32) / 127.5 - 1.0


def unit_to_pixels(video: jax.Array) -> jax.Array:
  return jnp.clip(jnp.round((video + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


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
                           dtype=jnp.dtype(config.compute_dtype), **overrides)
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
  train_sources = None  # the pipeline renders its own
  prompt_table = None

  def __init__(self, config: ml_collections.ConfigDict, mesh=None):
    self.mesh = mesh
    self.config = config
    self.frozen = {}  # nothing frozen: every VAE weight trains
    v = config.vae
    self.model = build_vae(config)
    d = config.data
    checked(factors.check_video_shape, d.frames, d.height, d.width, v.temporal_factor,
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
    # A decoder fine-tune (configs/shapes/vae.py): start from a trained VAE, keep its encoder,
    # and show the decoder noised latents.
    self.init_workdir = v.get("init_workdir", "")
    self.init_step = int(v.get("init_step", 0)) or None  # 0: the run's latest
    self.train_encoder = bool(v.get("train_encoder", True))
    self.latent_noise = float(v.get("latent_noise", 0.0))
    if self.latent_noise < 0:
      raise ConfigError(f"vae.latent_noise={self.latent_noise} must be >= 0 (0 shows the decoder "
                        "the encoder's latents as they are)")
    if not self.train_encoder and not self.init_workdir:
      raise ConfigError("vae.train_encoder=False keeps the encoder a run starts with; set "
                        "--config.vae.init_workdir to the trained VAE run whose encoder to keep")
    for name in ("weight_decay", "ema_decay"):  # decay moves it; an average rounds it
      if not self.train_encoder and config.train[name]:
        raise ConfigError(f"train.{name}={config.train[name]} would move the kept encoder "
                          f"(vae.train_encoder=False); set --config.train.{name}=0")
    self.discriminator = None
    if self.adversarial_weight > 0:
      self.discriminator = disc_lib.PatchDiscriminator3D(
          tuple(v.get("discriminator_channels", (32, 64, 128))),
          dtype=jnp.dtype(config.compute_dtype))

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

  def starting_params(self, params):
    """`params` as freshly initialised, with the VAE of `vae.init_workdir` in place when set."""
    if not self.init_workdir:
      return params
    init_config, trained, step = restore_vae(self.init_workdir, self.mesh, self.init_step,
                                             flag="--config.vae.init_workdir")
    check_same_architecture(self.config, init_config, f"vae.init_workdir={self.init_workdir}")
    if jax.process_index() == 0:
      print(f"VAE weights from {self.init_workdir} (step {step})", flush=True)
    # Each array placed as its freshly initialised counterpart is.
    placed = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), trained,
                          params["vae"])
    return {**params, "vae": placed}

  def train_flops(self, bucket) -> int:
    del bucket
    return 0  # convolutions are not counted

  def model_params(self, params):
    """The VAE's own weights (what encoding and decoding need) out of the trained parameters."""
    return params["vae"]

  def loss(self, params, frozen, batch, rng, step):
    del frozen
    video = pixels_to_unit(batch["video"])
    vae_params = params["vae"]
    if not self.train_encoder:  # no gradient, so Adam leaves it exactly as it is
      vae_params = {**vae_params, "encoder": jax.lax.stop_gradient(vae_params["encoder"])}
    out = self.model.apply({"params": vae_params}, video, sample_rng=rng,
                           latent_noise=self.latent_noise)
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
    if not hasattr(self, "_reconstruct_jit"):
      def round_trip(vae_params, video_uint8):
        video = pixels_to_unit(video_uint8)
        mean, _ = self.model.apply({"params": vae_params}, video, method=self.model.encode)
        recon = self.model.apply({"params": vae_params}, mean, method=self.model.decode)
        scores = reconstruction.psnr(recon, video)
        # Frames too small for the SSIM window get NaN, which `evaluate` leaves out.
        ssim = (reconstruction.ssim(recon, video) if reconstruction.fits_ssim(*video.shape[2:4])
                else jnp.full_like(scores, jnp.nan))
        return recon, mean, scores, ssim
      # Replicated outputs: every process of a multi-host job can read them whole.
      self._reconstruct_jit = jax.jit(round_trip, out_shardings=(
          None if self.mesh is None else mesh_lib.replicated(self.mesh)))
    return self._reconstruct_jit

  def _examples(self, split: str, count: int) -> list[dict]:
    source = pipeline.make_source(self.config.data, split, self.config.seed)
    return [source[i] for i in range(min(count, len(source)))]

  def _clips(self, split: str, count: int) -> np.ndarray:
    return np.stack([example["video"] for example in self._examples(split, count)])

  def reconstruct(self, vae_params, clips: np.ndarray) -> list[np.ndarray]:
    """uint8 clips (N, T, H, W, 3) through the VAE and back, in train-batch-sized pieces: numpy
    [reconstructions in [-1, 1], posterior means, PSNR and SSIM per clip (NaN when the frames are
    too small for SSIM's window)]."""
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
    recon, _, psnr, ssim = self.reconstruct(self.model_params(params), clips)
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
    latents = self.reconstruct(self.model_params(params), clips)[1]
    latents = latents.reshape(-1, latents.shape[-1]).astype(np.float64)
    if jax.process_index() == 0:
      write_json_atomic(os.path.join(workdir, LATENT_STATS_FILE),
                        {"step": step, "clips": len(clips), "mean": latents.mean(axis=0).tolist(),
                         "std": (latents.std(axis=0) + 1e-6).tolist()})


def _saved_vae_config(workdir: str, flag: str) -> ml_collections.ConfigDict:
  config = load_saved_config(workdir)
  if config.objective != "vae":
    raise ConfigError(f"{flag.lstrip('-').replace('config.', '')}={workdir} holds a "
                      f"{config.objective} run; point {flag} at a VAE run's workdir")
  return config


def restore_vae(workdir: str, mesh, step: int | None = None, flag: str = "--config.vae_workdir"):
  """(saved config, weights, step) of the VAE run at `workdir`, at `step` (default: the latest);
  `flag` is what named it, for the error when it holds another kind of run."""
  config = _saved_vae_config(workdir, flag)
  params, step = checkpoint_lib.restore_model_params(
      workdir, config, VAEObjective(config, mesh), mesh, step=step)
  return config, params, step


def init_step_to_start_from(config: ml_collections.ConfigDict, workdir: str) -> int:
  """The step of `vae.init_workdir` a VAE run at `workdir` starts from (0: it starts fresh).

  Settled before the run's config is saved, so the config names the weights the run began with
  and a wrong init_workdir fails before anything is written. A resumed run keeps what it began
  from (its own checkpoint holds the weights; another init_workdir or init_step is refused); a
  new one takes `vae.init_step`, or with 0 the latest, as process 0 finds it.
  """
  asked_workdir, asked_step = config.vae.get("init_workdir", ""), config.vae.get("init_step", 0)
  if checkpoint_lib.saved_steps(workdir) and os.path.isfile(os.path.join(workdir, "config.json")):
    return _init_step_resumed(load_saved_config(workdir), workdir, asked_workdir, asked_step)
  if not asked_workdir:
    return 0
  flag = f"vae.init_workdir={asked_workdir}"
  try:
    init_config = _saved_vae_config(asked_workdir, "--config.vae.init_workdir")
    check_same_architecture(config, init_config, flag)
    step = checkpoint_lib.require_checkpoint(asked_workdir, asked_step or None)
  except ConfigError as e:
    raise ConfigError(str(e) if str(e).startswith(flag) else f"{flag}: {e}") from e
  return int(multihost_utils.broadcast_one_to_all(np.int32(step)))


def _init_step_resumed(began, workdir: str, asked_workdir: str, asked_step: int) -> int:
  if began.objective != "vae":
    raise ConfigError(f"{workdir} holds a {began.objective} run, not a VAE run; resume it with "
                      "its own config or pick another --workdir")
  began_workdir, began_step = began.vae.get("init_workdir", ""), began.vae.get("init_step", 0)
  where = lambda path: os.path.realpath(path) if path else ""
  if where(began_workdir) != where(asked_workdir):
    raise ConfigError(f"{workdir} began from vae.init_workdir={began_workdir or '(none)'}; resume "
                      f"with --config.vae.init_workdir={began_workdir}")
  if asked_step and began_step and asked_step != began_step:
    raise ConfigError(f"{workdir} began from step {began_step} of its init_workdir; resume with "
                      f"--config.vae.init_step={began_step} (or 0)")
  if began_workdir and not began_step:
    logging.warning("%s was saved before runs recorded the step they started from", workdir)
    return asked_step
  return int(began_step)


def _architecture(config: ml_collections.ConfigDict) -> dict:
  """What fixes a VAE's weights' shapes and meaning: its model's fields, the variant's defaults
  filled in (so a run saved before a field existed compares by what it built)."""
  model = build_vae(config)
  return {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
          if f.name not in ("parent", "name", "dtype")}


def check_same_architecture(config, other, named: str) -> None:
  """A ConfigError naming the first VAE field where `other`'s config builds a different model
  from `config`'s."""
  ours, theirs = _architecture(config), _architecture(other)
  for name, value in ours.items():
    if theirs[name] != value:
      variants = (f" (vae.variant={other.vae.variant!r} there, {config.vae.variant!r} here)"
                  if other.vae.variant != config.vae.variant else "")
      raise ConfigError(f"{named} has vae.{name}={theirs[name]!r} where {value!r} is needed"
                        f"{variants}; weights carry over only between VAEs of one architecture: "
                        "match this run's vae settings to it or use a VAE built like this one")


def _same_weights(ours, theirs) -> bool:
  """Whether two weight trees are equal leaf for leaf, compared where they live (one jitted
  reduction: nothing gathered to the host, so it holds for weights split across processes)."""
  if jax.tree.structure(ours) != jax.tree.structure(theirs) or any(
      a.shape != b.shape for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs))):
    return False
  equal = jax.jit(lambda a, b: jnp.all(jnp.stack([
      jnp.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))])))
  return bool(equal(ours, theirs))


def with_decoder_of(workdir: str, vae_config, vae_params, mesh, origin: str = "the VAE"):
  """`vae_params` with the decoder of the VAE run at `workdir`, which must be a decoder fine-tune
  of them (vae.init_workdir and vae.train_encoder=False): the same encoder, so latents coded or
  sampled for `vae_params` mean the same to the new decoder. `origin` names where `vae_params`
  came from, for the error."""
  config, params, step = restore_vae(workdir, mesh, flag="--decoder")
  check_same_architecture(vae_config, config, f"decoder={workdir}")
  if not _same_weights(vae_params["encoder"], params["encoder"]):
    raise ConfigError(f"decoder={workdir}: its encoder differs from that of {origin}, which "
                      "this run's latents come from; train the decoder from it (vae.init_workdir,"
                      " vae.init_step) with --config.vae.train_encoder=False")
  if jax.process_index() == 0:
    print(f"decoder from {workdir} (step {step})", flush=True)
  return {**vae_params, "decoder": params["decoder"]}
