"""Small building blocks shared by the VAE, the DiT and the text encoder.

Every parameter carries logical axis names (`nn.with_logical_partitioning`) so the mesh mapping can
live in config. Parameter names: "embed" (model width), "mlp" (MLP hidden), "heads" and "kv"
(attention heads and head_dim, kept as separate kernel dims), "vocab", "conv_in"/"conv_out" (conv
channels), "norm" (norm scales and biases), None (small dims: kernel windows, patch vectors). Key
activations are constrained with the "activation_*" names below; without axis rules in scope those
constraints are no-ops.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sorajax.models import attention, rope
from sorajax.parallel import context as context_attention

Dtype = Any
Initializer = Callable[..., jax.Array]

# Activation layouts, named once so every module constrains the same way.
TOKENS = ("activation_batch", "activation_length", "activation_embed")
TOKENS_MLP = ("activation_batch", "activation_length", "activation_mlp")
TOKENS_HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
VIDEO = ("activation_batch", None, None, None, None)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  """Logical sharding constraint; a no-op unless axis rules are in scope."""
  return nn.with_logical_constraint(x, names)


def _xavier(in_dims: int, ndim: int) -> Initializer:
  # Fan-in/fan-out over grouped dims: a (embed, heads, kv) kernel starts like (embed, heads*kv).
  return nn.initializers.variance_scaling(
    1.0, "fan_avg", "uniform", in_axis=tuple(range(in_dims)), out_axis=tuple(range(in_dims, ndim))
  )


def _xavier_stacked() -> Initializer:
  # A (embed, n, heads, kv) kernel holding n projections side by side: each starts like its own
  # (embed, heads*kv) Xavier kernel.
  return nn.initializers.variance_scaling(
    1.0, "fan_avg", "uniform", in_axis=0, out_axis=(2, 3), batch_axis=(1,))


class Dense(nn.Module):
  """Linear map contracting the last `in_dims` input dims into `features` (an int or tuple of dims).

  `kernel_axes` names every kernel dim (input dims, then feature dims); the bias takes the feature
  names.
  """

  features: int | tuple[int, ...]
  kernel_axes: tuple[str | None, ...]
  in_dims: int = 1
  use_bias: bool = True
  kernel_init: Initializer | None = None  # None: Xavier-uniform over the grouped dims
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    shape = tuple(x.shape[x.ndim - self.in_dims :]) + features
    if len(self.kernel_axes) != len(shape):
      raise ValueError(
        f"kernel_axes={self.kernel_axes} must name {len(shape)} dims of kernel {shape}"
      )
    init = self.kernel_init or _xavier(self.in_dims, len(shape))
    kernel = self.param(
      "kernel", nn.with_logical_partitioning(init, self.kernel_axes), shape, self.param_dtype
    )
    # A plain 2D matmul over flattened dims: with an N-D dot_general, XLA:CPU fuses long elementwise
    # chains into the transposed copy the weight gradient needs (2.5x slower DiT steps on CPU).
    fan_in = int(np.prod(shape[: self.in_dims]))
    lead = x.shape[: x.ndim - self.in_dims]
    x2d = x.astype(self.dtype).reshape(-1, fan_in)
    y = (x2d @ kernel.astype(self.dtype).reshape(fan_in, -1)).reshape(lead + features)
    if self.use_bias:
      bias_axes = self.kernel_axes[self.in_dims :]
      bias = self.param(
        "bias",
        nn.with_logical_partitioning(nn.initializers.zeros, bias_axes),
        features,
        self.param_dtype,
      )
      y = y + bias.astype(self.dtype)
    return y


class Embed(nn.Module):
  """Lookup table (num_embeddings, features) named ("vocab", "embed")."""

  num_embeddings: int
  features: int
  axes: tuple[str | None, str | None] = ("vocab", "embed")
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:
    init = nn.with_logical_partitioning(nn.initializers.normal(0.02), self.axes)
    table = self.param("embedding", init, (self.num_embeddings, self.features), self.param_dtype)
    return jnp.take(table, ids, axis=0).astype(self.dtype)


class CausalConv3D(nn.Module):
  """3D convolution over (B, T, H, W, C) that is causal in time and 'same' in space.

  Time is zero-padded by kernel_t - 1 frames at the front only, so output frame t depends only on
  input frames <= t. Zero (not replicate) padding lives inside the convolution op, so no pad op and
  no pad gradient is materialised, and it tells the network where a clip starts. A kernel_t of 1
  runs as a batched 2D conv.

  Chunked coding: when the "cache" collection is mutable, the last kernel_t - 1 input frames are
  kept there and stand in for the padding of the next call. The cache starts at zeros, which is the
  padding itself, so a clip fed chunk by chunk gives exactly the output of one pass over it.
  """

  features: int
  kernel_size: tuple[int, int, int] = (3, 3, 3)
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kt, kh, kw = self.kernel_size
    names = (None, None, None, "conv_in", "conv_out")
    shape = (kt, kh, kw, x.shape[-1], self.features)
    kernel = self.param(
      "kernel", nn.with_logical_partitioning(self.kernel_init, names), shape, self.param_dtype
    )
    bias = self.param(
      "bias",
      nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
      (self.features,),
      self.param_dtype,
    )
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    space_pad = [((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)]
    time_pad = (kt - 1, 0)
    if kt > 1 and self.is_mutable_collection("cache") and not self.is_initializing():
      previous = self.variable("cache", "previous_frames", jnp.zeros,
                               (x.shape[0], kt - 1) + x.shape[2:], x.dtype)
      x = jnp.concatenate([previous.value, x], axis=1)
      previous.value = x[:, -(kt - 1):]
      time_pad = (0, 0)
    if kt == 1:
      b, t = x.shape[:2]
      flat = x.reshape((b * t,) + x.shape[2:])
      y = jax.lax.conv_general_dilated(
        flat, kernel[0], (1, 1), space_pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
      y = y.reshape((b, t) + y.shape[1:])
    else:
      y = jax.lax.conv_general_dilated(
        x,
        kernel,
        (1, 1, 1),
        [time_pad] + space_pad,
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
      )
    return y + bias.astype(self.dtype)


def _norm_param(
  module: nn.Module, name: str, init: Initializer, size: int, dtype: Dtype
) -> jax.Array:
  return module.param(name, nn.with_logical_partitioning(init, ("norm",)), (size,), dtype)


def rms_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x / RMS(x) over the last dim, in float32."""
  x32 = x.astype(jnp.float32)
  return x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)


class RMSNorm(nn.Module):
  """RMS norm over the last dim, statistics in float32."""

  eps: float = 1e-6
  use_scale: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = rms_normalize(x, self.eps)
    if self.use_scale:
      y = y * _norm_param(self, "scale", nn.initializers.ones, x.shape[-1], self.param_dtype)
    return y.astype(self.dtype)


class LayerNorm(nn.Module):
  """Layer norm over the last dim, statistics in float32; affine optional (adaLN turns it off)."""

  eps: float = 1e-6
  use_scale: bool = True
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    if self.use_scale:
      y = y * _norm_param(self, "scale", nn.initializers.ones, x.shape[-1], self.param_dtype)
    if self.use_bias:
      y = y + _norm_param(self, "bias", nn.initializers.zeros, x.shape[-1], self.param_dtype)
    return y.astype(self.dtype)


class GroupNorm(nn.Module):
  """Group norm over (H, W, channels of a group) separately for every frame of (B, T, H, W, C).

  Per-frame statistics matter: pooling over time would let later frames change earlier latents and
  break the VAE's causality (and make an image encode differently from a one-frame video).
  """

  num_groups: int = 8
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    groups = np.gcd(self.num_groups, c)  # widths that don't divide still normalise sensibly
    x32 = x.astype(jnp.float32).reshape(x.shape[:-1] + (groups, c // groups))
    axes = (-4, -3, -1)  # H, W and the channels inside a group
    mean = jnp.mean(x32, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=axes, keepdims=True)
    y = ((x32 - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
    y = y * _norm_param(self, "scale", nn.initializers.ones, c, self.param_dtype)
    y = y + _norm_param(self, "bias", nn.initializers.zeros, c, self.param_dtype)
    return y.astype(self.dtype)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal features (...) -> (..., dim) of a float timestep, as in DiT (cos half, sin half)."""
  half = dim // 2
  freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = t.astype(jnp.float32)[..., None] * freqs
  emb = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, [(0, 0)] * t.ndim + [(0, 1)])
  return emb


class TimestepEmbedder(nn.Module):
  """t in [0, 1] of any shape (...) -> (..., hidden): sinusoid of 1000*t (DiT's range), an MLP."""

  hidden: int
  frequency_dim: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    emb = timestep_embedding(1000.0 * t, self.frequency_dim).astype(self.dtype)
    emb = Dense(self.hidden, (None, "mlp"), dtype=self.dtype, name="fc1")(emb)
    emb = Dense(self.hidden, ("mlp", "embed"), dtype=self.dtype, name="fc2")(nn.silu(emb))
    return emb


class MLP(nn.Module):
  """Transformer MLP: width -> mlp_dim (GELU, tanh form) -> width."""

  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    h = Dense(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name="fc1")(x)
    h = constrain(nn.gelu(h, approximate=True), TOKENS_MLP)
    return Dense(width, ("mlp", "embed"), dtype=self.dtype, name="fc2")(h)


class Attention(nn.Module):
  """Multi-head attention over tokens (B, L, width); cross-attention when `context` is given.

  `mask` is boolean and broadcastable to (B, heads, Lq, Lk) (see `attention.attend`); `rope_angles`
  (Lq, head_dim // 2) rotates queries and keys by their positions (self-attention only). `qk_norm`
  applies RMS norm to queries and keys per head, which keeps logits bounded in long or
  low-precision runs. `zero_out` zero-initialises the output projection so a residual branch starts
  as identity.
  """

  num_heads: int
  qk_norm: bool = True
  zero_out: bool = False
  implementation: str = "xla"
  dtype: Dtype = jnp.float32
  # Self-attention on a mesh with a context axis: "ulysses" or "ring" split the sequence
  # (parallel/context.py); None leaves the exchange to XLA (short sequences: text, VAE frames).
  context_parallel: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None, mask: jax.Array | None = None,
               rope_angles: jax.Array | None = None):
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width={width} is not divisible by num_heads={self.num_heads}")
    head_dim = width // self.num_heads
    # One matmul for the projections that read the same input (q, k, v; or k, v of the context):
    # fewer, larger matmuls, and one input gradient instead of a sum of three.
    proj = lambda name, y, n: Dense(
      (n, self.num_heads, head_dim), ("embed", None, "heads", "kv"),
      kernel_init=_xavier_stacked(), dtype=self.dtype, name=name)(y)
    scales = None  # learned RMS-norm scales of (query, key)
    if self.qk_norm:
      scales = self.param("qk_norm_scale", nn.with_logical_partitioning(
        nn.initializers.ones, (None, "kv")), (2, head_dim), jnp.float32)
    if context is None:  # (B, L, 3, heads, head_dim): q and k go through norm and RoPE together
      qkv = proj("qkv", x, 3)
      qk = self._norm_and_rotate(qkv[:, :, :2], scales, rope_angles)
      q, k, v = qk[:, :, 0], qk[:, :, 1], qkv[:, :, 2]
    else:
      if rope_angles is not None:
        raise ValueError("rope_angles rotate self-attention only; cross-attention takes none")
      kv = proj("kv", context, 2)
      q = self._norm_and_rotate(proj("query", x, 1), None if scales is None else scales[:1])
      k = self._norm_and_rotate(kv[:, :, :1], None if scales is None else scales[1:])
      q, k, v = q[:, :, 0], k[:, :, 0], kv[:, :, 1]
    q, k, v = (constrain(a, TOKENS_HEADS) for a in (q, k, v))
    if context is None and self.context_parallel:  # keys split like the queries
      out = context_attention.attend(q, k, v, mask, strategy=self.context_parallel,
                                     implementation=self.implementation)
    else:
      out = attention.attend(q, k, v, mask=mask, implementation=self.implementation)
    out_init = nn.initializers.zeros if self.zero_out else None
    return Dense(
      width, ("heads", "kv", "embed"), in_dims=2, kernel_init=out_init, dtype=self.dtype, name="out"
    )(out)

  def _norm_and_rotate(self, y: jax.Array, scales: jax.Array | None,
                       rope_angles: jax.Array | None = None) -> jax.Array:
    """QK-norm (with `scales`, one row per stacked input) and RoPE of (B, L, n, heads, head_dim)."""
    if scales is not None:
      y = (rms_normalize(y) * scales[:, None, :]).astype(self.dtype)
    if rope_angles is not None:  # self-attention over positioned tokens (see models/rope.py)
      y = rope.apply_rope(y, rope_angles)
    return y
