"""Buckets: spec parsing, the per-step draw, one compile per bucket, exact resume across buckets."""
import chex
import jax
import numpy as np
import pytest

from sorajax import configuration
from sorajax.data import buckets, pipeline
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import objectives
from tiny import DIT_CONFIG, tiny_config


def test_spec_parsing_and_its_errors():
  parsed = buckets.parse("9x32x32:32@3, 1x32x48:64")
  assert parsed == [buckets.Bucket(9, 32, 32, 32, 3.0), buckets.Bucket(1, 32, 48, 64, 1.0)]
  assert parsed[1].name == "1x32x48" and parsed[1].size == (1, 32, 48)
  with pytest.raises(ValueError, match="is not FRAMESxHEIGHTxWIDTH:BATCH"):
    buckets.parse("9x32:32")
  with pytest.raises(ValueError, match="weight > 0"):
    buckets.parse("9x32x32:32@0")
  with pytest.raises(ValueError, match="lists a size twice"):
    buckets.parse("9x32x32:32, 9x32x32:16")
  config = tiny_config(DIT_CONFIG)
  assert buckets.from_config(config) == [buckets.Bucket(5, 16, 16, 8)]


def test_draw_is_a_function_of_seed_and_step_with_the_given_shares():
  spec = buckets.parse("9x32x32:32@3, 1x32x32:64@1")
  draws = [buckets.draw(spec, 0, step) for step in range(1, 4001)]
  assert draws == [buckets.draw(spec, 0, step) for step in range(1, 4001)]
  np.testing.assert_allclose(np.mean(np.asarray(draws) == 1), 0.25, atol=0.025)
  assert draws != [buckets.draw(spec, 1, step) for step in range(1, 4001)]


def _bucketed_config(vae_workdir, steps):
  config = tiny_config(DIT_CONFIG, steps=steps, **{"data.buckets": "5x16x16:8, 1x16x16:16",
                                                   "data.latent_cache": 32})
  config.vae_workdir = vae_workdir
  return config


def test_one_compile_per_bucket(vae_workdir, tmp_path, monkeypatch):
  from sorajax import train  # pylint: disable=import-outside-toplevel
  from sorajax.training import step as step_lib  # pylint: disable=import-outside-toplevel
  make_step = step_lib.make_train_step
  # The step function is traced once per bucket shape and never again.
  monkeypatch.setattr(step_lib, "make_train_step",
                      lambda *a: chex.assert_max_traces(make_step(*a), n=2))
  seen = []
  real_next = pipeline.BucketedBatches.__next__

  def spy(self):
    batch = real_next(self)
    seen.append(batch["latents"].shape)
    return batch

  monkeypatch.setattr(pipeline.BucketedBatches, "__next__", spy)
  config = _bucketed_config(vae_workdir, 6)
  try:
    train.train_and_evaluate(config, str(tmp_path))
  finally:
    chex.clear_trace_counter()
  assert {shape[:2] for shape in seen} == {(8, 2), (16, 1)}  # 5 frames -> 2 latent frames


def test_resume_continues_every_bucket_stream_and_the_draws(tmp_path):
  from sorajax.training import checkpoint  # pylint: disable=import-outside-toplevel
  config = tiny_config(DIT_CONFIG, **{"data.buckets": "5x16x16:8, 1x16x16:8@2"})
  mesh = mesh_lib.make_mesh({"data": 8})
  fingerprint = lambda batch: (batch["video"].shape, int(np.asarray(batch["video"]).sum()))
  batches = pipeline.train_batches(config, mesh)
  [next(batches) for _ in range(3)]
  saver = checkpoint.Checkpointer(str(tmp_path), every=1, keep=1)
  saver.save(3, {"step": np.int32(3)}, batches.iterators)
  saver.close()
  expected = [fingerprint(next(batches)) for _ in range(6)]
  assert len({shape for shape, _ in expected}) == 2  # both buckets come up after the resume point
  resumed = pipeline.train_batches(config, mesh)
  loader = checkpoint.Checkpointer(str(tmp_path), every=1, keep=1)
  loader.restore(3, {"step": jax.ShapeDtypeStruct((), np.int32)}, resumed.iterators)
  loader.close()
  resumed.resume_at(3)
  assert [fingerprint(next(resumed)) for _ in range(6)] == expected


def test_a_bucket_the_factors_cannot_take_is_a_config_error(vae_workdir):
  config = _bucketed_config(vae_workdir, 2)
  config.data.buckets = "5x16x16:8, 4x16x16:8"
  with pytest.raises(configuration.ConfigError, match="frames=4.*nearest valid: 1 or 5"):
    objectives.build_objective(config, mesh_lib.make_mesh({"data": 8}))
  config.data.buckets = "5x16x16:8, 1x16x16:12"
  with pytest.raises(configuration.ConfigError, match="batch of bucket 1x16x16=12 does not divide"):
    pipeline.train_batches(config, mesh_lib.make_mesh({"data": 8}))
