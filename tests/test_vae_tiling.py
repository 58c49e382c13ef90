"""Spatial tiling: exact for coders without spatial context, small seams for the VAE."""
import jax
import numpy as np
import pytest

from sorajax.models import vae_tiling
from tiny import perturbed_tiny_vae


def test_tiles_cover_the_frame_with_the_asked_overlap():
  assert vae_tiling.tile_starts(10, 4, 1) == [0, 3, 6]
  assert vae_tiling.tile_starts(11, 4, 1) == [0, 3, 6, 7]  # the last tile ends at the border
  assert vae_tiling.tile_starts(4, 8, 2) == [0]
  with pytest.raises(ValueError, match="tile overlap=4 must be in"):
    vae_tiling.tile_starts(10, 4, 4)


def test_tiling_is_exact_for_a_coder_without_spatial_context():
  x = np.random.default_rng(0).standard_normal((1, 3, 11, 9, 4)).astype(np.float32)
  upsample = lambda z: np.repeat(np.repeat(np.asarray(z) * 2.0, 4, axis=2), 4, axis=3)
  tiled = vae_tiling.code_tiled(upsample, x, tile=4, overlap=2, up=4)
  np.testing.assert_allclose(tiled, upsample(x), rtol=1e-6)
  pool = lambda v: np.asarray(v).reshape(
      1, 3, v.shape[2] // 2, 2, v.shape[3] // 2, 2, 4).mean((3, 5))
  big = np.random.default_rng(1).standard_normal((1, 3, 12, 16, 4)).astype(np.float32)
  np.testing.assert_allclose(vae_tiling.code_tiled(pool, big, tile=6, overlap=2, down=2),
                             pool(big), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="tile overlap=3 must be a multiple of the spatial factor 2"):
    vae_tiling.code_tiled(pool, big, tile=6, overlap=3, down=2)


def test_vae_decode_seams_shrink_with_overlap():
  model, params = perturbed_tiny_vae()
  decode = jax.jit(lambda z: model.apply({"params": params}, z, method="decode"))
  z = np.random.default_rng(0).standard_normal((1, 2, 12, 12, 4)).astype(np.float32)
  full = np.asarray(decode(z))
  errors = {overlap: np.abs(vae_tiling.code_tiled(decode, z, tile=6, overlap=overlap, up=4) - full)
            for overlap in (0, 2)}
  assert errors[0].shape == full.shape == (1, 5, 48, 48, 3)
  # Tiles see zero padding where the whole frame has neighbours: hard seams without overlap,
  # cross-faded (smaller) ones with it.
  assert errors[2].mean() < 0.7 * errors[0].mean()
  assert errors[2].max() < errors[0].max()
