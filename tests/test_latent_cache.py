"""The latent cache: process shares, encode once, reuse by fingerprint, and DiT training from it."""
import os

import jax
import numpy as np
import pytest

from sorajax import configuration
from sorajax.data import latent_cache, pipeline, shapes
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import objectives
from tiny import DIT_CONFIG, tiny_config


def _world():
  return shapes.ShapesWorld(frames=5, height=16, width=16, max_objects=1)


def _mean_color(videos):  # a stand-in encoder: (N, T, H, W, 3) -> (N, T, 1, 1, 3)
  return videos.astype(np.float32).mean(axis=(2, 3), keepdims=True)


def test_process_shares_tile_the_cache_without_overlap():
  for count in (1, 3, 8):
    shares = [latent_cache.process_share(10, p, count) for p in range(count)]
    assert [i for share in shares for i in share] == list(range(10))


def test_encode_source_pads_the_last_batch_and_keeps_captions():
  world = _world()
  cache = latent_cache.encode_source(_mean_color, world, range(2, 7), batch_size=4)
  assert len(cache) == 5 and cache.latents.dtype == np.float32
  for k, i in enumerate(range(2, 7)):
    example = world[i]
    np.testing.assert_allclose(cache[k]["latents"], _mean_color(example["video"][None])[0])
    assert cache[k]["caption"] == example["caption"]


def test_cache_is_reused_while_its_fingerprint_matches_and_rebuilt_otherwise(tmp_path):
  calls = []

  def encoder(videos):
    calls.append(len(videos))
    return _mean_color(videos)

  world, workdir = _world(), str(tmp_path)
  first = latent_cache.load_or_build(workdir, world, 6, encoder, {"vae_step": 1}, batch_size=4)
  assert calls == [4, 4]
  again = latent_cache.load_or_build(workdir, world, 6, encoder, {"vae_step": 1}, batch_size=4)
  assert calls == [4, 4]  # loaded, not encoded
  np.testing.assert_array_equal(again.latents, first.latents)
  assert list(again.captions) == list(first.captions)
  latent_cache.load_or_build(workdir, world, 6, encoder, {"vae_step": 2}, batch_size=4)
  assert calls == [4, 4, 4, 4]  # another VAE checkpoint: encoded again
  assert os.listdir(tmp_path / latent_cache.CACHE_DIR) == ["process_0_of_1.npz"]  # no temp left
  with pytest.raises(ValueError, match="exceeds the 3 clips"):
    latent_cache.load_or_build(workdir, range(3), 4, encoder, {})


@pytest.mark.parametrize("anchor", [0.0, 0.5])
def test_dit_loss_from_cached_latents_equals_loss_from_pixels(vae_workdir, tmp_path, anchor):
  config = tiny_config(DIT_CONFIG, **{"data.latent_cache": 8, "flow.anchor": anchor})
  config.vae_workdir = vae_workdir
  mesh = mesh_lib.make_mesh({"data": 8})
  objective = objectives.build_objective(config, mesh)
  objective.prepare(str(tmp_path))
  (cache,) = objective.train_sources  # one bucket
  assert len(cache) == 8
  world = pipeline.make_source(config.data, "train", config.seed, anchor=bool(anchor))
  videos = np.stack([world[i]["video"] for i in range(8)])
  tokens, mask = objective.tokenizer.encode_batch([str(c) for c in cache.captions])
  # Under jit, as the trainer runs them: op by op, every operation compiles on its own. Perturbed,
  # so the velocity (zero at init) reads the latents and the anchor.
  params = jax.jit(objective.init_params)(jax.random.key(0))
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), params)
  text = {"tokens": tokens, "token_mask": mask}
  pixels, cached = {"video": videos, **text}, {"latents": cache.latents, **text}
  if anchor:  # the cache holds each clip's anchor frame, encoded as an image
    assert cache.anchors.shape == (8, 1) + cache.latents.shape[2:]
    pixels["anchor"] = np.stack([world[i]["anchor"] for i in range(8)])
    cached["anchor_latents"] = cache.anchors
  else:
    assert cache.anchors is None
  rng = jax.random.key(3)
  loss = jax.jit(objective.loss)
  from_pixels, metrics = loss(params, objective.frozen, pixels, rng, 0)
  from_cache, _ = loss(params, objective.frozen, cached, rng, 0)
  np.testing.assert_allclose(float(from_cache), float(from_pixels), rtol=1e-5)
  if anchor:
    assert 0 < float(metrics["anchored"]) < 1  # this key shows some of the 8 an anchor, not all
    other = dict(cached, anchor_latents=np.roll(cache.anchors, 1, axis=0))
    assert abs(float(loss(params, objective.frozen, other, rng, 0)[0]) - float(from_cache)) > 1e-6
  # The trainer's stream serves the cache as global batches over the mesh's 8 devices.
  batch = next(pipeline.train_batches(config, mesh, objective.tokenizer, [cache]))
  assert set(batch) == ({"latents", "tokens", "token_mask"}
                        | ({"anchor_latents"} if anchor else set()))
  assert batch["latents"].shape == (8,) + cache.latents.shape[1:]
  assert len(batch["latents"].sharding.device_set) == 8


def test_cache_larger_than_the_source_is_a_config_error(vae_workdir, tmp_path):
  config = tiny_config(DIT_CONFIG, **{"data.latent_cache": 10**12})
  config.vae_workdir = vae_workdir
  objective = objectives.build_objective(config, mesh_lib.make_mesh({"data": 8}))
  with pytest.raises(configuration.ConfigError, match="data.latent_cache=1000000000000 exceeds"):
    objective.prepare(str(tmp_path))
