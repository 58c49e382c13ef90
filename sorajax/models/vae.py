"""Causal video VAE: (B, 1+f*k, H, W, 3) in [-1, 1] <-> latents (B, 1+k, H/s, W/s, latent_channels).

Causality is built in rather than learned, so an image is exactly a one-frame video:
  * the encoder pads the front with f-1 copies of frame 0 (T' = f*(k+1) frames);
  * every temporal convolution is causal (zero padding at the front only, see `layers.CausalConv3D`)
    and norms use per-frame statistics;
  * downsampling is space-to-depth: f consecutive frames (and s x s pixels) fold into channels;
so latent frame j sees only frames <= f*j. The decoder mirrors this (depth-to-space in time and
space, causal convs) and drops the first f-1 output frames, so decoded frame t sees only latents
<= ceil(t/f).

CPU-cheap by layout: the stem folds 2 frames x 2x2 pixels into channels before any convolution,
folds and stem use spatial-only (1,3,3) kernels, and residual blocks factorise 3x3x3 into
(1,3,3)+(3,1,1). Since the stem leaves no layer at full resolution, an optional small per-frame
stage there (`refine_features`) restores the edges an L2 loss blurs.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sorajax.models import layers
from sorajax.models.factors import check_continuation, check_video_shape, log2_exact

__all__ = ["VARIANTS", "CausalVideoVAE", "check_video_shape", "get_vae", "kl_divergence"]

Dtype = layers.Dtype
# Folds and the stem use spatial-only kernels: time mixing happens in the residual blocks, and a
# (1,3,3) conv is ~4x cheaper than a 3x3x3 one on CPU.
FOLD_KERNEL = (1, 3, 3)
LOGVAR_OFFSET = -6.0


def space_to_depth(x: jax.Array, ft: int, fs: int) -> jax.Array:
  """(B, T, H, W, C) -> (B, T/ft, H/fs, W/fs, ft*fs*fs*C): frames and pixel blocks into channels."""
  b, t, h, w, c = x.shape
  x = x.reshape(b, t // ft, ft, h // fs, fs, w // fs, fs, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, t // ft, h // fs, w // fs, ft * fs * fs * c)


def depth_to_space(x: jax.Array, ft: int, fs: int) -> jax.Array:
  """Inverse of `space_to_depth`: (B, T, H, W, ft*fs*fs*C) -> (B, T*ft, H*fs, W*fs, C)."""
  b, t, h, w, c = x.shape
  c0 = c // (ft * fs * fs)
  x = x.reshape(b, t, h, w, ft, fs, fs, c0)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, t * ft, h * fs, w * fs, c0)


# Parameter-free shortcuts around every fold (as in DC-AE's "residual autoencoding"): the encoder
# adds the folded input averaged down to the output width, the decoder adds its input tiled up to
# the conv width. Colours and coarse layout then pass through from the first step and the convs
# learn residuals, which is what lets the demo VAE reach usable quality in a few hundred CPU steps.
def _shortcut_down(x: jax.Array, out: int) -> jax.Array:
  """(..., C) -> (..., out): mean over channels `out` apart (after a fold: pools folded pixels)."""
  c = x.shape[-1]
  if c % out:
    return jnp.zeros(x.shape[:-1] + (out,), x.dtype)  # widths that don't divide get no shortcut
  return x.reshape(x.shape[:-1] + (c // out, out)).mean(axis=-2)


def _shortcut_up(x: jax.Array, out: int) -> jax.Array:
  """(..., C) -> (..., out) by tiling the channels; the mirror of `_shortcut_down`."""
  c = x.shape[-1]
  if out % c:
    return jnp.zeros(x.shape[:-1] + (out,), x.dtype)
  return jnp.tile(x, (1,) * (x.ndim - 1) + (out // c,))


def _halvings(count: int, levels: int) -> list[int]:
  """Spread `count` 2x reductions over levels: one per level from the front, excess on the last."""
  per_level = [1 if i < count else 0 for i in range(levels)]
  per_level[-1] += max(0, count - levels)
  return [2**n for n in per_level]


def fold_plan(levels: int, temporal_factor: int, spatial_factor: int):
  """Stem (time, space) fold and the (time, space) fold after each level; all multiply to (f, s).

  The stem folds the first 2x of time and of space before any conv, so no layer runs at full pixel
  resolution or full frame rate; the rest is front-loaded, since early reductions make every later
  layer cheaper.
  """
  if temporal_factor not in (1, 2, 4):
    raise ValueError(f"temporal_factor={temporal_factor} is not supported; valid: 1, 2, 4")
  n_time = log2_exact(temporal_factor, "temporal_factor")
  n_space = log2_exact(spatial_factor, "spatial_factor")
  stem_t, stem_s = min(n_time, 1), min(n_space, 1)
  time_folds = _halvings(n_time - stem_t, levels)
  space_folds = _halvings(n_space - stem_s, levels)
  return (2**stem_t, 2**stem_s), list(zip(time_folds, space_folds))


class ResBlock(nn.Module):
  """Pre-activation residual block: (GroupNorm, SiLU, causal conv) twice, same width in and out.

  `factorized` replaces each 3x3x3 conv by a (1,3,3) spatial conv then a (3,1,1) temporal conv: the
  same receptive field for 12 instead of 27 taps per channel pair, about 2.2x faster on CPU.
  """

  factorized: bool = True
  dtype: Dtype = jnp.float32

  def _conv(self, x: jax.Array, name: str) -> jax.Array:
    c = x.shape[-1]
    if not self.factorized:
      return layers.CausalConv3D(c, (3, 3, 3), dtype=self.dtype, name=name)(x)
    x = layers.CausalConv3D(c, (1, 3, 3), dtype=self.dtype, name=f"{name}_space")(x)
    return layers.CausalConv3D(c, (3, 1, 1), dtype=self.dtype, name=f"{name}_time")(x)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.silu(layers.GroupNorm(dtype=self.dtype, name="norm1")(x))
    h = self._conv(h, "conv1")
    h = nn.silu(layers.GroupNorm(dtype=self.dtype, name="norm2")(h))
    h = self._conv(h, "conv2")
    return layers.constrain(x + h, layers.VIDEO)


class FrameAttention(nn.Module):
  """Self-attention among the pixels of each frame, as a residual branch that starts at zero.

  Frames never attend to each other, so causality and chunked coding are untouched; at the
  coarsest level the frame is small (e.g. 4x4 to 32x32), so the quadratic cost stays low.
  """

  num_heads: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape
    tokens = layers.GroupNorm(dtype=self.dtype, name="norm")(x).reshape(b * t, h * w, c)
    out = layers.Attention(self.num_heads, zero_out=True, dtype=self.dtype,
                           name="attention")(tokens)
    return x + out.reshape(x.shape).astype(x.dtype)


class Encoder(nn.Module):
  channels: tuple[int, ...]
  num_res_blocks: int
  latent_channels: int
  temporal_factor: int
  spatial_factor: int
  factorized: bool = True
  mid_attention: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, video: jax.Array, first_chunk: bool = True) -> tuple[jax.Array, jax.Array]:
    f = self.temporal_factor
    stem, plan = fold_plan(len(self.channels), f, self.spatial_factor)
    x = video.astype(self.dtype)
    if first_chunk:
      # f-1 copies of frame 0 in front make T' = f*(k+1), so frame 0 fills one latent frame on its
      # own. Later chunks of a chunked pass continue the clip and hold f*k frames already.
      x = jnp.concatenate([jnp.repeat(x[:, :1], f - 1, axis=1), x], axis=1)
    x = space_to_depth(x, *stem)
    conv = lambda width, name: layers.CausalConv3D(width, FOLD_KERNEL, dtype=self.dtype, name=name)
    x = conv(self.channels[0], "conv_in")(x)
    last = len(self.channels) - 1
    for i in range(len(self.channels)):
      for j in range(self.num_res_blocks):
        x = ResBlock(self.factorized, dtype=self.dtype, name=f"level{i}_res{j}")(x)
      if i < last:
        folded = space_to_depth(x, *plan[i])
        y = conv(self.channels[i + 1], f"down{i}")(folded)
        x = y + _shortcut_down(folded, y.shape[-1])
    if self.mid_attention:
      x = FrameAttention(dtype=self.dtype, name="mid_attention")(x)
    # Latent head; the shortcut feeds the mean only, the log-variance is learned from scratch.
    h = nn.silu(layers.GroupNorm(dtype=self.dtype, name="norm_out")(x))
    moments = conv(2 * self.latent_channels, "conv_out")(space_to_depth(h, *plan[last]))
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    # Start the posterior nearly deterministic (std ~0.05): unit noise on every latent at init
    # buries the signal the decoder must learn from; the KL term widens it only as far as it pays.
    logvar = logvar + LOGVAR_OFFSET
    mean = mean + _shortcut_down(space_to_depth(x, *plan[last]), self.latent_channels)
    return mean, logvar


class Decoder(nn.Module):
  """Mirror of `Encoder`: each fold becomes a conv to (fold x width) channels and depth-to-space."""

  channels: tuple[int, ...]
  num_res_blocks: int
  temporal_factor: int
  spatial_factor: int
  factorized: bool = True
  mid_attention: bool = False
  refine_features: int = 0
  refine_width: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, first_chunk: bool = True) -> jax.Array:
    stem, plan = fold_plan(len(self.channels), self.temporal_factor, self.spatial_factor)

    def unfold(x, width, fold, name):
      ft, fs = fold
      y = layers.CausalConv3D(width * ft * fs * fs, FOLD_KERNEL, dtype=self.dtype, name=name)(x)
      y = y + _shortcut_up(x, y.shape[-1])
      return depth_to_space(y, ft, fs)

    last = len(self.channels) - 1
    x = unfold(z.astype(self.dtype), self.channels[last], plan[last], "conv_in")
    if self.mid_attention:
      x = FrameAttention(dtype=self.dtype, name="mid_attention")(x)
    for i in reversed(range(len(self.channels))):
      for j in range(self.num_res_blocks):
        x = ResBlock(self.factorized, dtype=self.dtype, name=f"level{i}_res{j}")(x)
      if i > 0:
        x = unfold(x, self.channels[i - 1], plan[i - 1], f"up{i - 1}")
    x = nn.silu(layers.GroupNorm(dtype=self.dtype, name="norm_out")(x))
    out_channels = 3 + self.refine_features
    x = layers.CausalConv3D(
      out_channels * stem[0] * stem[1] ** 2, FOLD_KERNEL, dtype=self.dtype, name="conv_out"
    )(x)
    x = depth_to_space(x, *stem)
    if self.refine_features:
      # Edges are where an L2-trained decoder blurs; a small residual stage at full resolution
      # (per-frame convs, so still causal) sharpens them from the RGB and a few extra features.
      h = layers.CausalConv3D(self.refine_width, FOLD_KERNEL, dtype=self.dtype,
                              name="refine_in")(nn.silu(x))
      h = layers.CausalConv3D(3, FOLD_KERNEL, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                              name="refine_out")(nn.silu(h))
      x = x[..., :3] + h
    # The first f-1 frames mirror the encoder's front padding; frame f-1 is the real frame 0.
    return x[:, self.temporal_factor - 1 :] if first_chunk else x


class CausalVideoVAE(nn.Module):
  """Causal video VAE; see the module docstring for the layout that makes it causal."""

  channels: tuple[int, ...] = (32, 64)
  num_res_blocks: int = 1
  latent_channels: int = 4
  temporal_factor: int = 4
  spatial_factor: int = 4
  factorized: bool = True  # (1,3,3)+(3,1,1) convs in residual blocks instead of 3x3x3
  mid_attention: bool = False  # per-frame self-attention at the coarsest level (FrameAttention)
  # > 0: the decoder ends with a small residual stage at full resolution fed by RGB plus this many
  # extra features (Decoder); 0: the last conv's output is the video.
  refine_features: int = 0
  refine_width: int = 16
  dtype: Dtype = jnp.float32

  def setup(self):
    shared = dict(
      channels=tuple(self.channels),
      num_res_blocks=self.num_res_blocks,
      temporal_factor=self.temporal_factor,
      spatial_factor=self.spatial_factor,
      factorized=self.factorized,
      mid_attention=self.mid_attention,
      dtype=self.dtype,
    )
    self.encoder = Encoder(latent_channels=self.latent_channels, **shared)
    self.decoder = Decoder(refine_features=self.refine_features, refine_width=self.refine_width,
                           **shared)

  def encode(self, video: jax.Array, first_chunk: bool = True) -> tuple[jax.Array, jax.Array]:
    """(B, 1+f*k, H, W, 3) -> (mean, logvar), each (B, 1+k, H/s, W/s, latent_channels), float32.

    With first_chunk=False the video continues an earlier call (chunked coding, see
    `vae_chunked`): it holds f*k frames and gives k latent frames.
    """
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f"video shape={video.shape} is not (B, T, H, W, 3)")
    _, t, h, w, _ = video.shape
    if first_chunk:
      check_video_shape(t, h, w, self.temporal_factor, self.spatial_factor)
    else:
      check_continuation(t, self.temporal_factor)
      check_video_shape(1, h, w, self.temporal_factor, self.spatial_factor)
    mean, logvar = self.encoder(video, first_chunk)
    # The usual clip keeps exp(logvar) finite early in training.
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z: jax.Array, first_chunk: bool = True) -> jax.Array:
    """(B, 1+k, h, w, latent_channels) -> video (B, 1+f*k, h*s, w*s, 3), float32.

    With first_chunk=False, k latent frames that continue an earlier call give f*k video frames.
    """
    if z.ndim != 5 or z.shape[-1] != self.latent_channels:
      raise ValueError(f"latent shape={z.shape} is not (B, T, h, w, {self.latent_channels})")
    if z.shape[1] < 1:
      raise ValueError(f"latent frames={z.shape[1]} is not 1 + k; nearest valid: 1")
    return self.decoder(z, first_chunk).astype(jnp.float32)

  def decoder_history(self) -> int:
    """Latent frames before its own that a decoded frame can depend on (its causal receptive
    field): each residual block's two temporal convs (kernel 3) reach 4 frames back at its
    level's frame rate; folds, norms and attention are per frame."""
    _, plan = fold_plan(len(self.channels), self.temporal_factor, self.spatial_factor)
    frames_per_latent, reach = plan[-1][0], 0.0
    for i in reversed(range(len(self.channels))):
      reach += 4 * self.num_res_blocks / frames_per_latent
      if i > 0:
        frames_per_latent *= plan[i - 1][0]
    return math.ceil(reach)

  def __call__(self, video: jax.Array, sample_rng: jax.Array | None = None,
               latent_noise: float = 0.0) -> dict[str, jax.Array]:
    """Encode, sample z (the mean when `sample_rng` is None) and decode.

    `latent_noise` > 0 (with `sample_rng`) adds to the posterior sample Gaussian noise of up to
    that many of each channel's spread in the batch, the level drawn uniformly per clip, so a
    decoder learns to draw clean video from latents near the data's, as a DiT samples them; the
    added noise comes back as "noise". `latent_noise` is static (a Python float).
    """
    if latent_noise > 0 and sample_rng is None:
      raise ValueError(f"latent_noise={latent_noise} needs a sample_rng to draw the noise from")
    mean, logvar = self.encode(video)
    z, out = mean, {}
    if sample_rng is not None:
      if latent_noise > 0:  # no split otherwise: runs without it keep their random stream
        sample_rng, level_rng, noise_rng = jax.random.split(sample_rng, 3)
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(sample_rng, mean.shape, mean.dtype)
      if latent_noise > 0:
        spread = jax.lax.stop_gradient(jnp.std(mean, axis=(0, 1, 2, 3)))
        level = latent_noise * jax.random.uniform(level_rng, (mean.shape[0], 1, 1, 1, 1))
        out["noise"] = level * spread * jax.random.normal(noise_rng, mean.shape, mean.dtype)
        z = z + out["noise"]
    return dict(recon=self.decode(z), mean=mean, logvar=logvar, z=z, **out)


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, 1)) in closed form, averaged over latent elements: (B,)."""
  mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
  per_element = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.mean(per_element.reshape(per_element.shape[0], -1), axis=-1)


VARIANTS: dict[str, dict] = {
  # Unit tests: about 40k parameters.
  "tiny": dict(
    channels=(8, 16), num_res_blocks=1, latent_channels=4, temporal_factor=4, spatial_factor=4
  ),
  # The built-in shapes demo: trains on a 2-core CPU in minutes on 9x32x32 clips.
  "demo": dict(
    channels=(32, 64), num_res_blocks=1, latent_channels=4, temporal_factor=4, spatial_factor=4
  ),
  # Accelerator scale: 8x spatial, 4x temporal, 16 latent channels, full 3x3x3 convs.
  "base": dict(
    channels=(128, 256, 512),
    num_res_blocks=2,
    latent_channels=16,
    temporal_factor=4,
    spatial_factor=8,
    factorized=False,
  ),
}


def get_vae(variant: str, **overrides) -> CausalVideoVAE:
  """Build a VAE from a named variant; keyword overrides replace single fields (e.g. dtype)."""
  if variant not in VARIANTS:
    raise ValueError(f"VAE variant={variant!r} is unknown; valid: {', '.join(VARIANTS)}")
  fields = {f.name for f in dataclasses.fields(CausalVideoVAE)} - {"parent", "name"}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"VAE override {unknown[0]!r} is unknown; valid: {', '.join(sorted(fields))}")
  settings = {**VARIANTS[variant], **overrides}
  channels = settings["channels"]
  if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
    raise ValueError(f"VAE channels={tuple(channels)} must be one or more positive widths, "
                     "e.g. (32, 64)")
  blocks = settings["num_res_blocks"]
  if not isinstance(blocks, int) or blocks < 0:
    raise ValueError(f"VAE num_res_blocks={blocks!r} must be an int >= 0, e.g. 1")
  return CausalVideoVAE(**settings)
