"""T5 v1.1 and umT5 text encoders in Flax, loaded from Hugging Face safetensors: token embeddings
for the DiT's cross-attention.

The layout follows T5 v1.1: token embeddings (unscaled, no absolute positions), then pre-norm
blocks (self-attention, then a gated-GELU or ReLU feed-forward network, each behind an RMS norm on
its residual branch) and a final RMS norm; nothing has a bias. Positions enter only as a learned
bias on the attention logits, looked up by the bucket of each key's offset from its query: T5
learns one table and shares it with every block, umT5 learns one per block. The logits are not
scaled by 1/sqrt(d_kv), and d_kv need not be d_model / heads.
Parameters carry the DiT's logical axis names. Loaded weights are plain arrays, placed whole on
each device with the VAE (a frozen encoder mostly serves the prompt-embedding cache).
`load_safetensors` maps the Hugging Face names onto this tree and names any tensor that is missing,
unexpected or of the wrong shape.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sorajax.models import layers

# Hugging Face's feed_forward_proj -> (activation, gated). "gated-gelu" means the tanh GELU
# (transformers' gelu_new), not the exact one.
FEED_FORWARD = {"gated-gelu": ("gelu_tanh", True), "gated-relu": ("relu", True),
                "relu": ("relu", False)}
_ACTIVATIONS = {"gelu_tanh": functools.partial(nn.gelu, approximate=True), "relu": nn.relu}


@dataclasses.dataclass(frozen=True)
class T5Config:
  vocab_size: int = 32128
  d_model: int = 512
  layers: int = 8
  heads: int = 6
  d_kv: int = 64
  d_ff: int = 1024
  buckets: int = 32
  max_distance: int = 128
  eps: float = 1e-6
  feed_forward: str = "gated-gelu"
  per_layer_bias: bool = False  # umT5: every block learns its own position bias

  @classmethod
  def from_json(cls, path: str) -> "T5Config":
    """A Hugging Face T5, mT5 or umT5 config.json."""
    with open(path) as f:
      c = json.load(f)
    if c.get("model_type") not in ("t5", "mt5", "umt5"):
      raise ValueError(f"{path}: model_type {c.get('model_type')!r} is not a T5 encoder; "
                       "expected t5, mt5 or umt5")
    feed_forward = c.get("feed_forward_proj", "relu")
    if feed_forward not in FEED_FORWARD:
      raise ValueError(f"{path}: feed_forward_proj {feed_forward!r} is not supported; valid: "
                       f"{', '.join(FEED_FORWARD)}")
    try:
      return cls(c["vocab_size"], c["d_model"], c["num_layers"], c["num_heads"], c["d_kv"],
                 c["d_ff"], c.get("relative_attention_num_buckets", 32),
                 c.get("relative_attention_max_distance", 128), c.get("layer_norm_epsilon", 1e-6),
                 feed_forward, c["model_type"] == "umt5")
    except KeyError as e:
      raise ValueError(f"{path} has no {e.args[0]}; is it a T5 config.json?") from None


def relative_buckets(length: int, buckets: int, max_distance: int) -> np.ndarray:
  """The bucket (length, length) of key position minus query position, both directions apart.

  Each direction takes half the buckets: offsets below a quarter of them get one bucket each, larger
  ones logarithmic bins up to `max_distance`, and farther keys share the last bin.
  """
  offset = np.arange(length)[None, :] - np.arange(length)[:, None]
  half = buckets // 2
  exact = half // 2
  distance = np.abs(offset)
  # float32, as the reference computes it: the truncation must land in the same bin.
  ratio = (np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(exact))
           / np.float32(math.log(max_distance / exact)) * np.float32(half - exact))
  far = np.minimum(exact + ratio.astype(np.int32), half - 1)
  return np.where(offset > 0, half, 0) + np.where(distance < exact, distance, far)


class RelativeBias(nn.Module):
  """The learned logit bias (1, heads, L, L) of every query-key pair, from a (buckets, heads)
  table."""

  config: T5Config

  @nn.compact
  def __call__(self, length: int) -> jax.Array:
    c = self.config
    table = self.param("table", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                             (None, "heads")),
                       (c.buckets, c.heads), jnp.float32)
    # Buckets are a constant of the length: no position arithmetic in the traced program.
    bias = jnp.take(table, relative_buckets(length, c.buckets, c.max_distance), axis=0)
    return bias.transpose(2, 0, 1)[None]


def _attend(q, k, v, bias, mask):
  """softmax(q . k + bias) v over (B, L, heads, d_kv), unscaled; logits and softmax in float32.

  Not attention.attend: that scales the logits by 1/sqrt(d_kv) and takes no additive bias, while
  T5 adds its position bias to unscaled logits (the pretrained query weights hold the scale). Text
  is short, so the plain einsum form (attend's "xla" path) is all this needs.
  """
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) + bias
  # A finite minimum (not -inf), as in attend: a row without tokens stays finite.
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.astype(q.dtype)


class T5Block(nn.Module):
  config: T5Config
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, bias: jax.Array | None) -> jax.Array:
    """`bias` is the shared position bias (T5); None where the block learns its own (umT5)."""
    c = self.config
    if bias is None:
      bias = RelativeBias(c, name="relative_bias")(x.shape[1])
    y = layers.RMSNorm(c.eps, dtype=self.dtype, name="attention_norm")(x)
    qkv = layers.Dense((3, c.heads, c.d_kv), ("embed", None, "heads", "kv"), use_bias=False,
                       dtype=self.dtype, name="qkv")(y)
    y = _attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], bias, mask)
    x = x + layers.Dense(c.d_model, ("heads", "kv", "embed"), in_dims=2, use_bias=False,
                         dtype=self.dtype, name="out")(y)
    y = layers.RMSNorm(c.eps, dtype=self.dtype, name="mlp_norm")(x)
    activation, gated = FEED_FORWARD[c.feed_forward]
    if gated:  # one matmul for the activated and the gating halves
      y = layers.Dense((2, c.d_ff), ("embed", None, "mlp"), use_bias=False, dtype=self.dtype,
                       name="mlp_in")(y)
      y = _ACTIVATIONS[activation](y[..., 0, :]) * y[..., 1, :]
    else:
      y = _ACTIVATIONS[activation](layers.Dense(c.d_ff, ("embed", "mlp"), use_bias=False,
                                                dtype=self.dtype, name="mlp_in")(y))
    return x + layers.Dense(c.d_model, ("mlp", "embed"), use_bias=False, dtype=self.dtype,
                            name="mlp_out")(y)


class T5Encoder(nn.Module):
  """Token ids (B, L) and their padding mask (B, L) -> token embeddings (B, L, d_model)."""

  config: T5Config
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, token_mask: jax.Array) -> jax.Array:
    c = self.config
    x = layers.Embed(c.vocab_size, c.d_model, dtype=self.dtype, name="words")(ids)
    mask = token_mask[:, None, None, :].astype(bool)  # keys only: padded queries are ignored later
    bias = None if c.per_layer_bias else RelativeBias(c, name="relative_bias")(ids.shape[1])
    for i in range(c.layers):
      x = T5Block(c, self.dtype, name=f"block_{i}")(x, mask, bias)
    return layers.RMSNorm(c.eps, dtype=self.dtype, name="final_norm")(x)


def _hf_names(config: T5Config) -> dict:
  """Our parameter path -> (the Hugging Face tensor names it is built from, the shape each has
  there, how to build it)."""
  c, inner = config, config.heads * config.d_kv
  same = lambda w: w
  linear = lambda w: w.T  # HF stores linear weights (out, in)
  names = {
      ("words", "embedding"): (("shared.weight",), (c.vocab_size, c.d_model), same),
      ("final_norm", "scale"): (("encoder.final_layer_norm.weight",), (c.d_model,), same),
  }
  bias = lambda i: ((f"encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight",),
                    (c.buckets, c.heads), same)
  if not c.per_layer_bias:  # T5 keeps its one table in the first block
    names[("relative_bias", "table")] = bias(0)
  for i in range(c.layers):
    hf, ours = f"encoder.block.{i}.", f"block_{i}"
    attn, ff = f"{hf}layer.0.SelfAttention.", f"{hf}layer.1.DenseReluDense."
    names.update({
        (ours, "qkv", "kernel"): (tuple(f"{attn}{n}.weight" for n in "qkv"), (inner, c.d_model),
                                  lambda q, k, v: np.stack(
                                      [w.T.reshape(c.d_model, c.heads, c.d_kv) for w in (q, k, v)],
                                      axis=1)),
        (ours, "out", "kernel"): ((f"{attn}o.weight",), (c.d_model, inner),
                                  lambda w: w.T.reshape(c.heads, c.d_kv, c.d_model)),
        (ours, "attention_norm", "scale"): ((f"{hf}layer.0.layer_norm.weight",), (c.d_model,),
                                            same),
        (ours, "mlp_norm", "scale"): ((f"{hf}layer.1.layer_norm.weight",), (c.d_model,), same),
        (ours, "mlp_out", "kernel"): ((f"{ff}wo.weight",), (c.d_model, c.d_ff), linear),
    })
    if FEED_FORWARD[c.feed_forward][1]:
      names[(ours, "mlp_in", "kernel")] = ((f"{ff}wi_0.weight", f"{ff}wi_1.weight"),
                                           (c.d_ff, c.d_model),
                                           lambda a, b: np.stack([a.T, b.T], axis=1))
    else:
      names[(ours, "mlp_in", "kernel")] = ((f"{ff}wi.weight",), (c.d_ff, c.d_model), linear)
    if c.per_layer_bias:
      names[(ours, "relative_bias", "table")] = bias(i)
  return names


# Tensors a full T5 checkpoint holds that the encoder does not use.
_UNUSED_PREFIXES = ("decoder.", "lm_head.")


def load_safetensors(path: str, config: T5Config) -> dict:
  """The encoder's params from a Hugging Face T5 or umT5 model.safetensors (an encoder-only or a
  full model); one-line errors name a missing, unexpected or misshapen tensor."""
  if not os.path.isfile(path):
    raise ValueError(f"weights file {path!r} does not exist")
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  try:
    tensors = load_file(path)
  except TypeError as e:  # NumPy has no bfloat16
    raise ValueError(f"{path} cannot be read as NumPy arrays ({e}); convert bfloat16 weights "
                     "to float32 first") from None
  # The embedding is tied: a checkpoint may hold it as shared.weight, as
  # encoder.embed_tokens.weight, or under both names.
  embedding = tensors.pop("encoder.embed_tokens.weight", None)
  if embedding is not None:
    tensors.setdefault("shared.weight", embedding)
  flat, used = {}, set()  # {path in our tree: value}
  for ours, (sources, shape, build) in _hf_names(config).items():
    missing = [s for s in sources if s not in tensors]
    if missing:
      kind = "umT5" if config.per_layer_bias else "T5"
      raise ValueError(f"{path} has no tensor {missing[0]}; is it a {kind} model of this config "
                       f"({config})?")
    for s in sources:
      if tensors[s].shape != shape:
        raise ValueError(f"{path}: {s} has shape {tensors[s].shape}, expected {shape}; the "
                         "config does not match the weights")
    flat[ours] = np.asarray(build(*(tensors[s] for s in sources)), np.float32)
    used.update(sources)
  extra = sorted(n for n in tensors if n not in used and not n.startswith(_UNUSED_PREFIXES))
  if extra:
    raise ValueError(f"{path} holds tensor {extra[0]} (and {len(extra) - 1} more) this encoder "
                     "does not use; is it a T5 model of this config (a umT5 one needs "
                     "model_type umt5)?")
  return traverse_util.unflatten_dict(flat)
