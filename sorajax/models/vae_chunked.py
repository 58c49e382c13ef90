"""Chunked causal coding: encode and decode clips of any length a few latent frames at a time.

The VAE is causal (vae.py), so a clip can be coded in pieces: every causal temporal convolution
keeps its last kernel_t - 1 input frames in the "cache" collection and reads them as the padding of
the next piece (layers.CausalConv3D), and norms use per-frame statistics. The first piece is frame 0
alone (one latent frame, exactly what an image is); each later piece holds `chunk` latent frames
(f * chunk video frames), the last one what is left. The result equals one pass over the clip, and
memory holds one piece's activations plus the caches, however long the clip is.

Each piece shape compiles once (first, regular, last), so a long render job compiles three times.
"""
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from sorajax.models import vae as vae_lib


def _run(vae: vae_lib.CausalVideoVAE, method, params, cache, x, first_chunk: bool):
  variables = {"params": params} if cache is None else {"params": params, "cache": cache}
  out, state = vae.apply(variables, x, first_chunk=first_chunk, method=method, mutable=["cache"])
  return out, state["cache"]


class ChunkedCoder:
  """Encodes and decodes with a VAE's params a piece at a time; see the module docstring."""

  def __init__(self, vae: vae_lib.CausalVideoVAE, params, chunk: int):
    if chunk < 1:
      raise ValueError(f"chunk={chunk} latent frames per piece must be at least 1")
    self.vae, self.params, self.chunk = vae, params, chunk
    self._encode_first = jax.jit(
        lambda p, x: _run(vae, vae_lib.CausalVideoVAE.encode, p, None, x, True))
    self._encode_next = jax.jit(
        lambda p, c, x: _run(vae, vae_lib.CausalVideoVAE.encode, p, c, x, False))
    self._decode_first = jax.jit(
        lambda p, z: _run(vae, vae_lib.CausalVideoVAE.decode, p, None, z, True))
    self._decode_next = jax.jit(
        lambda p, c, z: _run(vae, vae_lib.CausalVideoVAE.decode, p, c, z, False))

  def encode(self, video) -> tuple[jax.Array, jax.Array]:
    """(B, 1+f*k, H, W, 3) -> (mean, logvar) as `vae.encode` gives them; video may be on host."""
    f = self.vae.temporal_factor
    frames = video.shape[1]
    vae_lib.check_video_shape(frames, *video.shape[2:4], f, self.vae.spatial_factor)
    (mean, logvar), cache = self._encode_first(self.params, jnp.asarray(video[:, :1]))
    means, logvars = [mean], [logvar]
    for start in range(1, frames, f * self.chunk):
      piece = jnp.asarray(video[:, start:start + f * self.chunk])
      (mean, logvar), cache = self._encode_next(self.params, cache, piece)
      means.append(mean)
      logvars.append(logvar)
    return jnp.concatenate(means, axis=1), jnp.concatenate(logvars, axis=1)

  def decode_pieces(self, z) -> Iterator[np.ndarray]:
    """Yields the decoded video of (B, 1+k, h, w, C) latents piece by piece, as host arrays.

    The first piece is frame 0; joined along axis 1 the pieces equal `vae.decode(z)`. A caller that
    writes each piece out (e.g. to a video file) holds one piece at a time.
    """
    video, cache = self._decode_first(self.params, jnp.asarray(z[:, :1]))
    yield np.asarray(video)
    for start in range(1, z.shape[1], self.chunk):
      video, cache = self._decode_next(self.params, cache,
                                       jnp.asarray(z[:, start:start + self.chunk]))
      yield np.asarray(video)

  def decode(self, z) -> np.ndarray:
    """`vae.decode(z)` computed piece by piece, joined on the host."""
    return np.concatenate(list(self.decode_pieces(z)), axis=1)
