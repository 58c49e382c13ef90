"""Chunked causal coding gives what one pass over the whole clip gives."""
import jax
import numpy as np
import pytest

from sorajax.models import vae_chunked
from tiny import perturbed_tiny_vae


def _coder(factorized: bool, chunk: int, mid_attention: bool = False, refine_features: int = 0):
  model, params = perturbed_tiny_vae(factorized=factorized, mid_attention=mid_attention,
                                     refine_features=refine_features)
  return model, params, vae_chunked.ChunkedCoder(model, params, chunk)


def _video(frames, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (2, frames, 16, 16, 3)).astype(np.float32)


@pytest.mark.parametrize("factorized,chunk,mid_attention,refine_features",
                         [(True, 2, False, 0), (True, 1, False, 0), (False, 2, False, 0),
                          (True, 9, False, 0), (True, 2, True, 3)])
def test_chunked_encode_and_decode_equal_one_pass(factorized, chunk, mid_attention,
                                                  refine_features):
  model, params, coder = _coder(factorized, chunk, mid_attention, refine_features)
  video = _video(21)  # 1 + 4*5 frames: pieces of 1, then 4*chunk frames, the last one shorter
  mean, logvar = model.apply({"params": params}, video, method="encode")
  chunked_mean, chunked_logvar = coder.encode(video)
  np.testing.assert_allclose(chunked_mean, mean, atol=1e-5)
  np.testing.assert_allclose(chunked_logvar, logvar, atol=1e-5)

  decoded = model.apply({"params": params}, mean, method="decode")
  pieces = list(coder.decode_pieces(mean))
  assert pieces[0].shape[1] == 1  # frame 0 alone, as an image
  assert len(pieces) == 1 + -(-5 // chunk)
  np.testing.assert_allclose(np.concatenate(pieces, axis=1), decoded, atol=1e-5)


def test_chunked_coding_of_an_image_is_the_image_pass():
  model, params, coder = _coder(True, 2)
  image = _video(1)
  mean, _ = coder.encode(image)
  np.testing.assert_allclose(mean, model.apply({"params": params}, image, method="encode")[0],
                             atol=1e-6)
  assert coder.decode(mean).shape == (2, 1, 16, 16, 3)


def test_chunked_coding_rejects_bad_input():
  model, params, coder = _coder(True, 2)
  with pytest.raises(ValueError, match="frames=8 is not 1 \\+ 4\\*k; nearest valid: 5 or 9"):
    coder.encode(_video(8))
  with pytest.raises(ValueError, match="chunk=0 latent frames per piece must be at least 1"):
    vae_chunked.ChunkedCoder(model, params, 0)
  # A continuing piece must hold whole latent frames.
  with pytest.raises(ValueError,
                     match="continuing chunk of 6 frames is not 4\\*k; nearest valid: 4 or 8"):
    model.apply({"params": params}, _video(6), first_chunk=False, method="encode",
                mutable=["cache"])


def test_each_piece_shape_compiles_once():
  _, _, coder = _coder(True, 1)
  traces = []
  coder._encode_next = jax.jit(_counting(coder._encode_next, traces))  # pylint: disable=protected-access
  coder.encode(_video(17))  # four continuing pieces of the same shape
  coder.encode(_video(13, seed=1))  # three more, same shape again
  assert len(traces) == 1


def _counting(jitted, traces):
  """The function behind `jitted`, recording each time jax traces it."""
  def run(*args):
    traces.append(1)
    return jitted(*args)
  return run
