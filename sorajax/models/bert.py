"""BERT-family text encoder (MiniLM, e.g. all-MiniLM-L6-v2) in Flax, loaded from Hugging Face
safetensors: token embeddings for the DiT's cross-attention.

The layout follows BERT: word + position + token-type embeddings and a LayerNorm, then post-norm
blocks (self-attention with biases, exact-erf GELU MLP), each residual followed by LayerNorm.
Parameters carry the DiT's logical axis names. Loaded weights are plain arrays, placed whole on
each device with the VAE (a frozen encoder mostly serves the prompt-embedding cache).
`load_safetensors` maps the Hugging Face names onto this tree and names any tensor that is missing,
unexpected or of the wrong shape.
"""
from __future__ import annotations

import dataclasses
import json
import os

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sorajax.models import attention, layers


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden: int = 384
  layers: int = 6
  heads: int = 12
  intermediate: int = 1536
  max_positions: int = 512
  type_vocab_size: int = 2
  eps: float = 1e-12

  @classmethod
  def from_json(cls, path: str) -> "BertConfig":
    """A Hugging Face BERT config.json."""
    with open(path) as f:
      c = json.load(f)
    if c.get("model_type", "bert") != "bert":
      raise ValueError(f"{path}: model_type {c.get('model_type')!r} is not a BERT encoder")
    if c.get("hidden_act", "gelu") != "gelu" or c.get("position_embedding_type",
                                                      "absolute") != "absolute":
      raise ValueError(f"{path}: only gelu activations and absolute positions are supported, got "
                       f"{c.get('hidden_act')} / {c.get('position_embedding_type')}")
    try:
      return cls(c["vocab_size"], c["hidden_size"], c["num_hidden_layers"],
                 c["num_attention_heads"], c["intermediate_size"], c["max_position_embeddings"],
                 c.get("type_vocab_size", 2), c.get("layer_norm_eps", 1e-12))
    except KeyError as e:
      raise ValueError(f"{path} has no {e.args[0]}; is it a BERT config.json?") from None


class BertBlock(nn.Module):
  config: BertConfig
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    c = self.config
    head_dim = c.hidden // c.heads
    qkv = layers.Dense((3, c.heads, head_dim), ("embed", None, "heads", "kv"), dtype=self.dtype,
                       name="qkv")(x)
    y = attention.attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask)
    y = layers.Dense(c.hidden, ("heads", "kv", "embed"), in_dims=2, dtype=self.dtype,
                     name="out")(y)
    x = layers.LayerNorm(c.eps, dtype=self.dtype, name="attention_norm")(x + y)
    y = layers.Dense(c.intermediate, ("embed", "mlp"), dtype=self.dtype, name="mlp_in")(x)
    y = nn.gelu(y, approximate=False)
    y = layers.Dense(c.hidden, ("mlp", "embed"), dtype=self.dtype, name="mlp_out")(y)
    return layers.LayerNorm(c.eps, dtype=self.dtype, name="mlp_norm")(x + y)


class BertEncoder(nn.Module):
  """Token ids (B, L) and their padding mask (B, L) -> token embeddings (B, L, hidden)."""

  config: BertConfig
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, token_mask: jax.Array) -> jax.Array:
    c = self.config
    if ids.shape[1] > c.max_positions:
      raise ValueError(f"{ids.shape[1]} tokens exceed the encoder's {c.max_positions} positions; "
                       "truncate the prompt")
    x = (layers.Embed(c.vocab_size, c.hidden, dtype=self.dtype, name="words")(ids)
         + layers.Embed(c.max_positions, c.hidden, (None, "embed"), dtype=self.dtype,
                        name="positions")(jnp.arange(ids.shape[1]))[None]
         + layers.Embed(c.type_vocab_size, c.hidden, (None, "embed"), dtype=self.dtype,
                        name="token_types")(jnp.zeros_like(ids)))
    x = layers.LayerNorm(c.eps, dtype=self.dtype, name="embedding_norm")(x)
    mask = token_mask[:, None, None, :].astype(bool)  # keys only: padded queries are ignored later
    for i in range(c.layers):
      x = BertBlock(c, self.dtype, name=f"block_{i}")(x, mask)
    return x


def _hf_names(config: BertConfig) -> dict[tuple[str, ...], tuple[tuple[str, ...], callable]]:
  """Our parameter path -> (the Hugging Face tensor names it is built from, how to build it)."""
  c, head_dim = config, config.hidden // config.heads
  linear = lambda w: w.T  # HF stores linear weights (out, in)
  names = {
      ("words", "embedding"): (("embeddings.word_embeddings.weight",), lambda w: w),
      ("positions", "embedding"): (("embeddings.position_embeddings.weight",), lambda w: w),
      ("token_types", "embedding"): (("embeddings.token_type_embeddings.weight",), lambda w: w),
      ("embedding_norm", "scale"): (("embeddings.LayerNorm.weight",), lambda w: w),
      ("embedding_norm", "bias"): (("embeddings.LayerNorm.bias",), lambda w: w),
  }
  for i in range(c.layers):
    hf, ours = f"encoder.layer.{i}.", f"block_{i}"
    qkv = tuple(f"{hf}attention.self.{n}" for n in ("query", "key", "value"))
    names.update({
        (ours, "qkv", "kernel"): (tuple(n + ".weight" for n in qkv), lambda q, k, v: np.stack(
            [w.T.reshape(c.hidden, c.heads, head_dim) for w in (q, k, v)], axis=1)),
        (ours, "qkv", "bias"): (tuple(n + ".bias" for n in qkv), lambda q, k, v: np.stack(
            [b.reshape(c.heads, head_dim) for b in (q, k, v)])),
        (ours, "out", "kernel"): ((f"{hf}attention.output.dense.weight",),
                                  lambda w: w.T.reshape(c.heads, head_dim, c.hidden)),
        (ours, "out", "bias"): ((f"{hf}attention.output.dense.bias",), lambda w: w),
        (ours, "attention_norm", "scale"): ((f"{hf}attention.output.LayerNorm.weight",),
                                            lambda w: w),
        (ours, "attention_norm", "bias"): ((f"{hf}attention.output.LayerNorm.bias",), lambda w: w),
        (ours, "mlp_in", "kernel"): ((f"{hf}intermediate.dense.weight",), linear),
        (ours, "mlp_in", "bias"): ((f"{hf}intermediate.dense.bias",), lambda w: w),
        (ours, "mlp_out", "kernel"): ((f"{hf}output.dense.weight",), linear),
        (ours, "mlp_out", "bias"): ((f"{hf}output.dense.bias",), lambda w: w),
        (ours, "mlp_norm", "scale"): ((f"{hf}output.LayerNorm.weight",), lambda w: w),
        (ours, "mlp_norm", "bias"): ((f"{hf}output.LayerNorm.bias",), lambda w: w),
    })
  return names


# Tensors a BERT checkpoint may hold that token embeddings do not use.
_UNUSED_PREFIXES = ("pooler.", "embeddings.position_ids", "cls.")


def load_safetensors(path: str, config: BertConfig) -> dict:
  """The encoder's params from a Hugging Face BERT model.safetensors (with or without a "bert."
  prefix); one-line errors name a missing, unexpected or misshapen tensor."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(path):
    raise ValueError(f"weights file {path!r} does not exist")
  try:
    tensors = {name.removeprefix("bert."): value for name, value in load_file(path).items()}
  except TypeError as e:  # NumPy has no bfloat16
    raise ValueError(f"{path} cannot be read as NumPy arrays ({e}); convert bfloat16 weights "
                     "to float32 first") from None
  expected = jax.eval_shape(
      lambda: BertEncoder(config).init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32),
                                       jnp.ones((1, 2), bool)))["params"]
  expected = traverse_util.flatten_dict(nn.unbox(expected))
  flat, used = {}, set()  # {path in our tree: value}
  for ours, (sources, build) in _hf_names(config).items():
    missing = [s for s in sources if s not in tensors]
    if missing:
      raise ValueError(f"{path} has no tensor {missing[0]}; is it a BERT model of this config "
                       f"({config})?")
    want = expected[ours].shape
    try:
      value = np.asarray(build(*(tensors[s] for s in sources)), np.float32)
    except ValueError:  # a q, k, v or out weight of the wrong size does not even reshape
      value = None
    if value is None or value.shape != want:
      got = ", ".join(str(tensors[s].shape) for s in sources)
      raise ValueError(f"{path}: {', '.join(sources)} of shape {got} do not fit "
                       f"{'/'.join(ours)} {want}; the config does not match the weights")
    flat[ours] = value
    used.update(sources)
  extra = sorted(n for n in tensors if n not in used and not n.startswith(_UNUSED_PREFIXES))
  if extra:
    raise ValueError(f"{path} holds tensor {extra[0]} (and {len(extra) - 1} more) this encoder "
                     "does not use; is it a BERT model?")
  return traverse_util.unflatten_dict(flat)
