"""Grain pipeline: global batches on the mesh, determinism, per-process batch checks."""
import numpy as np
import pytest

from sorajax import configuration
from sorajax.data import pipeline, shapes
from sorajax.models import text
from sorajax.parallel import mesh as mesh_lib


def config():
  c = configuration.load_config_file("configs/shapes/dit.py:frames=5,size=16,batch=8")
  c.data.buckets = ""  # one stream (tests/test_buckets.py covers several)
  return c


def test_global_batches_are_sharded_and_deterministic():
  c = config()
  mesh = mesh_lib.make_mesh({"data": 8})
  tokenizer = text.WordTokenizer(shapes.caption_vocabulary(), c.data.text_max_length)
  first = next(pipeline.train_batches(c, mesh, tokenizer))
  again = next(pipeline.train_batches(c, mesh, tokenizer))
  assert first["video"].shape == (8, 5, 16, 16, 3) and first["video"].dtype == np.uint8
  assert first["tokens"].shape == (8, c.data.text_max_length)
  assert first["video"].sharding.spec[0] == ("data", "fsdp")
  assert len(first["video"].addressable_shards) == 8
  for name in first:
    np.testing.assert_array_equal(np.asarray(first[name]), np.asarray(again[name]))
  # Shuffled: the batch is not simply the first 8 indices.
  source = pipeline.make_source(c.data, "train", c.seed)
  ordered = np.stack([source[i]["video"] for i in range(8)])
  assert not np.array_equal(ordered, np.asarray(first["video"]))


def test_batch_must_divide_data_parallel_devices():
  c = config()
  c.train.batch_size = 6
  with pytest.raises(configuration.ConfigError, match="multiple of 8"):
    pipeline.train_batches(c, mesh_lib.make_mesh({"data": 8}))


def test_unknown_source():
  c = config()
  c.data.source = "imagenet"
  with pytest.raises(configuration.ConfigError, match="valid: shapes"):
    pipeline.make_source(c.data, "train", 0)


def test_anchor_frames_come_only_from_the_built_in_world():
  c = config()
  assert "anchor" in pipeline.make_source(c.data, "train", 0, anchor=True)[0]
  c.data.source = "records"
  with pytest.raises(configuration.ConfigError,
                     match="only data.source='shapes' provides so far, not 'records'"):
    pipeline.make_source(c.data, "train", 0, anchor=True)


def test_bounce_phase_reaches_training_clips_only():
  c = config()
  assert pipeline.make_source(c.data, "train", 0).bounce_phase == "middle"
  c.data.bounce_phase = "any"
  assert pipeline.make_source(c.data, "train", 0).bounce_phase == "any"
  # Held-out clips stay the ones the judge's references are drawn from.
  assert pipeline.make_source(c.data, "heldout", 0).bounce_phase == "middle"
  c.data.bounce_phase = "early"
  with pytest.raises(configuration.ConfigError,
                     match="data: unknown bounce_phase 'early'; valid: middle, any"):
    pipeline.make_source(c.data, "train", 0)
