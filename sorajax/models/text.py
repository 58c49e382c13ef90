"""Text side of the model: a word tokenizer (pure numpy, runs in the input pipeline) and an encoder.

Enough for captions from a small fixed grammar (the built-in world); the encoder is trained jointly
with the DiT. Id 2 (bos) always leads, so even the empty caption has one real token: that is the
"null caption" classifier-free guidance contrasts with.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sorajax.models import layers

PAD, UNK, BOS = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>")
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters (Unicode-aware); everything else separates words


def split_words(text: str) -> list[str]:
  """Lowercased words of `text`, split on anything that is not a letter."""
  return _WORD.findall(text.lower())


class WordTokenizer:
  """Word-level tokenizer: 0 pad, 1 unk, 2 bos, then the vocabulary's words in order (from 3)."""

  def __init__(self, vocabulary: list[str], max_length: int):
    if max_length < 1:
      raise ValueError(f"max_length={max_length} must be at least 1 (the bos token)")
    words = []
    for word in vocabulary:
      if split_words(word) != [word.lower()]:
        raise ValueError(f"vocabulary word {word!r} is not a single run of letters")
      if word.lower() not in words:  # repeats keep their first id
        words.append(word.lower())
    self.max_length = max_length
    self.tokens = SPECIAL_TOKENS + tuple(words)
    self._ids = {word: i for i, word in enumerate(self.tokens) if i >= len(SPECIAL_TOKENS)}

  @property
  def vocab_size(self) -> int:
    return len(self.tokens)

  def count(self, text: str) -> int:
    """Tokens `text` takes, bos included, before truncation."""
    return 1 + len(split_words(text))

  def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 (max_length,), mask bool (max_length,)); bos first, truncated, pad-filled."""
    ids = [BOS] + [self._ids.get(word, UNK) for word in split_words(text)]
    ids = ids[: self.max_length]
    out = np.full((self.max_length,), PAD, np.int32)
    out[: len(ids)] = ids
    mask = np.zeros((self.max_length,), np.bool_)
    mask[: len(ids)] = True
    return out, mask

  def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stacked `encode`: (ids (N, max_length), mask (N, max_length))."""
    encoded = [self.encode(text) for text in texts]
    ids = np.stack([e[0] for e in encoded]) if encoded else np.zeros((0, self.max_length), np.int32)
    mask = (
      np.stack([e[1] for e in encoded]) if encoded else np.zeros((0, self.max_length), np.bool_)
    )
    return ids, mask

  def decode(self, ids: np.ndarray) -> str:
    """Words of the real tokens (unknown words come back as <unk>); for logs and debugging."""
    return " ".join(self.tokens[i] for i in np.asarray(ids).tolist() if i not in (PAD, BOS))


class EncoderLayer(nn.Module):
  """Pre-norm transformer layer with self-attention that ignores padded keys."""

  num_heads: int
  mlp_ratio: float = 4.0
  attention: str = "xla"
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
    h = layers.LayerNorm(dtype=self.dtype, name="attention_norm")(x)
    h = layers.Attention(
      self.num_heads, implementation=self.attention, dtype=self.dtype, name="attention"
    )(h, mask=key_mask)
    x = layers.constrain(x + h, layers.TOKENS)
    h = layers.LayerNorm(dtype=self.dtype, name="mlp_norm")(x)
    h = layers.MLP(int(x.shape[-1] * self.mlp_ratio), dtype=self.dtype, name="mlp")(h)
    return layers.constrain(x + h, layers.TOKENS)


class TextEncoder(nn.Module):
  """ids (B, L), mask (B, L) bool -> token embeddings (B, L, hidden); padded positions are zero."""

  vocab_size: int
  hidden: int = 128
  depth: int = 2
  num_heads: int = 4
  max_length: int = 16
  attention: str = "xla"
  dtype: layers.Dtype = jnp.float32

  def forward_flops(self, length: int) -> int:
    """Matmul and attention FLOPs of one caption's forward pass (see DiT.forward_flops)."""
    d = self.hidden
    per_layer = 2 * length * d * d * 4 + 2 * 2 * length * length * d + 2 * 2 * length * d * 4 * d
    return int(self.depth * per_layer)

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    length = ids.shape[-1]
    if length > self.max_length:
      raise ValueError(f"text length={length} exceeds max_length={self.max_length}")
    x = layers.Embed(self.vocab_size, self.hidden, dtype=self.dtype, name="token_embedding")(ids)
    init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed"))
    positions = self.param("position_embedding", init, (self.max_length, self.hidden), jnp.float32)
    x = layers.constrain(x + positions[None, :length].astype(self.dtype), layers.TOKENS)
    mask = mask.astype(bool)
    for i in range(self.depth):
      x = EncoderLayer(
        self.num_heads, attention=self.attention, dtype=self.dtype, name=f"layer_{i}"
      )(x, mask[:, None, None, :])
    x = layers.LayerNorm(dtype=self.dtype, name="final_norm")(x)
    # Zeroing pads makes them carry nothing even if a consumer forgets the mask.
    return x * mask[..., None].astype(x.dtype)
