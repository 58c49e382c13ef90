"""The DiT objective (`config.objective="dit"`): rectified flow on a frozen VAE's latents,
conditioned on captions and on given frames. objectives.py lists the interface every objective
exposes."""
from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from sorajax.configuration import (ConfigError, checked, load_saved_config, record_vae_run,
                                   write_json_atomic)
from sorajax.data import latent_cache, latent_records, pipeline, prompt_embeddings, shapes
from sorajax.models import dit as dit_lib
from sorajax.models import factors
from sorajax.models import text as text_lib
from sorajax.models import text_encoders
from sorajax.models.denoiser import TextToVideo
from sorajax.diffusion import flow
from sorajax.diffusion import frame_conditioning
from sorajax.parallel import context as context_lib
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import checkpoint as checkpoint_lib
from sorajax.training import vae_objective

PROMPTS_DIR = "prompt_embeddings"  # cached text embeddings of a frozen encoder, in a workdir


def prompt_table_path(directory: str, encoder, shard_base: str) -> str:
  """Where `sorajax.precompute` keeps one latent shard's caption embeddings of `encoder`."""
  return os.path.join(directory, f"{encoder.fingerprint}-{os.path.basename(shard_base)}.npz")


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
          num_heads=config.text.num_heads, max_length=d.text_max_length,
          dtype=jnp.dtype(config.compute_dtype))
      self.text_width = config.text.hidden
    else:
      try:
        self.text_encoder = text_encoders.pretrained(kind, config.text.get("weights", ""),
                                                     d.text_max_length,
                                                     jnp.dtype(config.compute_dtype))
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
    self.vae_config, vae_params, self.vae_step = vae or vae_objective.restore_vae(
        config.vae_workdir, mesh, vae_step)
    self.vae = vae_objective.build_vae(self.vae_config)
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
                               dtype=jnp.dtype(config.compute_dtype))
    self.check_shape(d.frames, d.height, d.width)
    self.buckets = pipeline.train_buckets(config)
    for bucket in self.buckets:
      self.check_shape(*bucket.size)
    # Runs saved before frame conditioning have no flow.given_frames: text-only training. A mode
    # needs the longest bucket to have room for it; shorter buckets (images) train without it.
    self.given_frames = {m: float(p) for m, p in config.flow.get("given_frames", {}).items()}
    checked(frame_conditioning.check_probabilities, self.given_frames,
            max(self.latent_shape(*b.size)[0] for b in self.buckets))
    # Runs saved before correlated noise have no flow.frame_noise_correlation: i.i.d. noise.
    self.frame_noise_correlation = float(config.flow.get("frame_noise_correlation", 0.0))
    checked(flow.check_frame_correlation, self.frame_noise_correlation)
    self.motion_weight = float(config.flow.get("motion_weight", 0.0))  # 0 in runs saved before it
    checked(flow.check_motion_weight, self.motion_weight)
    self.given_noise = float(config.flow.get("given_noise", 0.0))  # 0 in runs saved before it
    checked(flow.check_given_noise, self.given_noise)
    # Share of video examples shown an anchor frame (flow.py `check_anchor`; 0 before it).
    self.anchor = float(config.flow.get("anchor", 0.0))
    checked(flow.check_anchor, self.anchor, config.dit.patch[0])
    if self.anchor and d.get("latent_records", ""):
      raise ConfigError("flow.anchor needs an anchor frame per clip, which precomputed latents "
                        "(data.latent_records) do not hold yet; train from data.latent_cache, or "
                        "set --config.flow.anchor=0")
    self.self_context = float(config.flow.get("self_context", 0.0))  # 0 in runs saved before it
    self.self_context_time = float(config.flow.get("self_context_time", 0.5))
    checked(flow.check_self_context, self.self_context, self.self_context_time)
    # Runs saved before the time shift trained on unshifted logit-normal times.
    self.time_sampling = config.flow.get("time_sampling", "logit_normal")
    checked(flow.check_time_sampling, self.time_sampling)
    self.shift_reference_tokens = int(config.flow.get("shift_reference_tokens", 0))
    checked(flow.length_shift, float(config.flow.get("time_shift", 1.0)), 1,
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
    checked(factors.check_video_shape, frames, height, width, self.temporal_factor,
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
    checked(context_lib.check_mesh_split, self.mesh, self.rules, tokens, dit.num_heads,
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
    path = os.path.join(workdir, vae_objective.LATENT_STATS_FILE)
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
    return jax.jit(lambda p, v: self.vae.apply({"params": p}, vae_objective.pixels_to_unit(v),
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
    path = os.path.join(self.config.vae_workdir, vae_objective.LATENT_STATS_FILE)
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
    mean, _ = self.vae.apply({"params": frozen["vae"]}, vae_objective.pixels_to_unit(video_uint8),
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

  def starting_params(self, params):
    return params  # a DiT starts from its initialisation

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
