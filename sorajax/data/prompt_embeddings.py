"""Prompt-embedding cache: caption -> a frozen text encoder's token embeddings, computed once.

A frozen encoder gives the same embeddings for a caption every time, so training, precompute and
sampling look them up instead of running the encoder again. A table is tied to one encoder by its
fingerprint (weights and token length, text_encoders.PretrainedEncoder.fingerprint); in a folder it
lives as files named `<fingerprint>-<tag>.npz`, each written whole under a temporary name and then
renamed. Writers use distinct tags (a process, a shard, a sampler), so concurrent jobs never share
a file; a load merges every file of the fingerprint.

Rows are stored without their padding and padded back to the encoder's length on lookup.
"""
from __future__ import annotations

import glob
import os

import jax
import numpy as np

from sorajax.data import records


class PromptEmbeddings:
  """Caption -> (embeddings float32 (max_length, width), mask bool (max_length,)).

  Plain arrays, so it pickles into grain workers. `add` encodes the captions it lacks with an
  `encode(ids, mask) -> embeddings` function (a jitted frozen encoder).
  """

  def __init__(self, fingerprint: str, tokenizer, width: int):
    self.fingerprint, self.tokenizer, self.width = fingerprint, tokenizer, width
    self._rows: dict[str, np.ndarray] = {}  # caption -> (real tokens, width)
    self._file: dict[str, str] = {}  # caption -> the file it was loaded from or saved to

  def __len__(self) -> int:
    return len(self._rows)

  def __contains__(self, caption: str) -> bool:
    return caption in self._rows

  def __getitem__(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
    row = self._rows.get(caption)
    if row is None:
      raise KeyError(f"caption {caption[:80]!r} has no cached text embedding; precompute again "
                     "with this run's text encoder")
    length = self.tokenizer.max_length
    embeddings = np.zeros((length, self.width), np.float32)
    embeddings[: len(row)] = row
    mask = np.zeros((length,), np.bool_)
    mask[: len(row)] = True
    return embeddings, mask

  def lookup(self, captions) -> tuple[np.ndarray, np.ndarray]:
    """Stacked rows of `captions`: (N, max_length, width), (N, max_length)."""
    rows = [self[c] for c in captions]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])

  def add(self, captions, encode, batch_size: int = 64) -> int:
    """Encodes the captions not yet in the table (in fixed-size batches, so one compile serves
    all); returns how many were new."""
    new = list(dict.fromkeys(c for c in map(str, captions) if c not in self._rows))
    for start in range(0, len(new), batch_size):
      chunk = new[start:start + batch_size]
      ids, mask = self.tokenizer.encode_batch(chunk + [""] * (batch_size - len(chunk)),
                                              warn=False)  # callers warn about their prompts
      out = np.asarray(jax.device_get(encode(ids, mask)), np.float32)
      for i, caption in enumerate(chunk):
        self._rows[caption] = out[i, : mask[i].sum()]
    return len(new)

  def save(self, directory: str, tag: str) -> str:
    """Writes `<fingerprint>-<tag>.npz` in `directory`: the captions encoded here or read from
    that file (not those other files hold); returns the path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{self.fingerprint}-{tag}.npz")
    name = os.path.basename(path)
    captions = [c for c in self._rows if self._file.get(c, name) == name]
    lengths = np.asarray([len(self._rows[c]) for c in captions], np.int64)
    flat = (np.concatenate([self._rows[c] for c in captions]) if captions
            else np.zeros((0, self.width), np.float32))
    # Ends in .npz (np.savez appends it otherwise) but not in "-<tag>.npz": loads skip it.
    temporary = f"{path}.{records.temporary_suffix()}.npz"
    np.savez(temporary, captions=np.asarray(captions, dtype=str), lengths=lengths,
             embeddings=flat)
    os.replace(temporary, path)
    self._file.update(dict.fromkeys(captions, name))
    return path

  def load(self, directory: str) -> int:
    """Merges every table of this fingerprint in `directory` (none: nothing); returns how many
    captions the table then holds."""
    for path in sorted(glob.glob(os.path.join(glob.escape(directory),
                                              f"{self.fingerprint}-*.npz"))):
      if ".npz." in os.path.basename(path):  # another writer's temporary file
        continue
      with np.load(path) as stored:  # each key access reads its whole array: once each
        embeddings, lengths = stored["embeddings"], stored["lengths"]
        captions = stored["captions"].tolist()
      if embeddings.shape[1:] != (self.width,):
        raise ValueError(f"{path} holds embeddings {embeddings.shape[1:]} wide, this encoder's are "
                         f"{self.width}; delete it")
      offsets = np.concatenate([[0], np.cumsum(lengths)])
      for i, caption in enumerate(captions):
        if caption not in self._rows:
          self._rows[caption] = embeddings[offsets[i]:offsets[i + 1]]
          self._file[caption] = os.path.basename(path)
    return len(self._rows)
