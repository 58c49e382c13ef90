"""Preparing a video folder as ArrayRecord shards, and training clips read back from them."""
import glob
import itertools
import json
import os

import jax
import numpy as np
import pytest

from sorajax import configuration, prepare
from sorajax.data import buckets as buckets_lib
from sorajax.data import records, video_io, video_source


def _moving_clip(frames, height, width, seed):
  """A bright square crossing a dark frame, plus texture: codecs keep it and frames differ."""
  rng = np.random.default_rng(seed)
  video = np.repeat(rng.integers(0, 60, (1, height, width, 3), dtype=np.uint8), frames, axis=0)
  for t in range(frames):
    x = (2 * t) % (width - 8)
    video[t, 4:12, x:x + 8] = (220, 40 + 10 * t % 200, 90)
  return video


@pytest.fixture()
def folder(tmp_path):
  """Videos of three sizes, an image, a corrupt file, a 2-frame clip, an uncaptioned clip."""
  root = tmp_path / "videos"
  (root / "sub").mkdir(parents=True)
  rows = []
  for i, (frames, height, width) in enumerate([(12, 32, 48), (10, 32, 32), (9, 48, 32),
                                               (11, 32, 48)]):
    name = f"sub/clip{i}.mp4" if i == 2 else f"clip{i}.mp4"
    video_io.write_mp4(str(root / name), _moving_clip(frames, height, width, i), fps=8)
    rows.append((name, f"clip number {i}, a square moving right"))
  video_io.write_png(str(root / "still.png"), _moving_clip(1, 32, 32, 9)[0])
  rows.append(("still.png", "a still picture"))
  (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
  rows.append(("broken.mp4", "never readable"))
  video_io.write_mp4(str(root / "short.mp4"), _moving_clip(2, 32, 32, 5), fps=8)
  rows.append(("short.mp4", "two frames only"))
  rows.append(("gone.mp4", "a file that is not there"))
  video_io.write_mp4(str(root / "uncaptioned.mp4"), _moving_clip(6, 32, 32, 6), fps=8)
  captions = tmp_path / "captions.csv"
  with open(captions, "w") as f:
    f.write("video,caption\n")
    for name, caption in rows:
      f.write(f'{name},"{caption}"\n')
  return root, captions


def _prepare(folder, out, **kwargs):
  root, captions = folder
  settings = kwargs.pop("settings", prepare.Settings(min_frames=3))
  return prepare.prepare(str(root), str(captions), str(out), settings, **kwargs)


@pytest.mark.parametrize("store", ["file", "raw"])
def test_prepared_clips_equal_a_direct_decode_and_bad_inputs_are_reported(folder, tmp_path,
                                                                          store):
  root, _ = folder
  info = _prepare(folder, tmp_path / "out", settings=prepare.Settings(store, min_frames=3),
                  clips_per_shard=3)
  assert info["records"] == 5 and info["skipped"] == 4 and info["shards"] == 3  # 9 inputs
  dataset = records.Dataset(str(tmp_path / "out"))
  by_path = {dataset[i]["path"]: dataset[i] for i in range(len(dataset))}
  assert sorted(by_path) == ["clip0.mp4", "clip1.mp4", "clip3.mp4", "still.png",
                             os.path.join("sub", "clip2.mp4")]
  for path, record in by_path.items():
    np.testing.assert_array_equal(records.record_frames(record),
                                  video_io.read_media(str(root / path)))
    assert record["caption"] and record["store"] == store
  assert dataset.meta["frames"].tolist() == [12, 10, 9, 11, 1]  # captions-file order
  assert dataset.meta["fps"][0] == 8.0
  with open(tmp_path / "out" / records.SKIPPED_FILE) as f:
    skipped = {s["video"]: s["reason"] for s in map(json.loads, f)}
  assert skipped["broken.mp4"].startswith("corrupt: ")
  assert skipped["short.mp4"] == "too short: 2 frames, --min_frames 3"
  assert skipped["gone.mp4"] == "missing file"
  assert skipped["uncaptioned.mp4"] == "missing caption"


def test_shards_split_over_processes_and_an_interrupted_job_resumes(folder, tmp_path):
  out = tmp_path / "out"
  assert _prepare(folder, out, clips_per_shard=2, process_index=1, process_count=2) is None
  with pytest.raises(ValueError, match="has not finished it"):
    records.Dataset(str(out))
  kept = {name: os.path.getmtime(out / name) for name in os.listdir(out)}
  # Shard 3 holds only skipped inputs (short.mp4, gone.mp4): a sidecar and no records file.
  assert sorted(kept) == ["shard-00001.array_record", "shard-00001.json", "shard-00003.json"]
  # A killed process leaves at most a temporary file; the rerun writes its shard anew.
  (out / "shard-00000.array_record.tmp-999").write_bytes(b"partial")
  info = _prepare(folder, out, clips_per_shard=2, process_index=0, process_count=2)
  assert info["shards"] == 5 and info["records"] == 5
  assert all(os.path.getmtime(out / name) == t for name, t in kept.items())  # not redone
  _prepare(folder, tmp_path / "whole", clips_per_shard=2)  # the single-process reference
  # A caption edited after another process wrote its shard: the dataset is not published.
  root, captions = folder
  edited = tmp_path / "edited.csv"
  edited.write_text(captions.read_text().replace("clip number 2", "clip number two"))
  prepare.prepare(str(root), str(captions), str(tmp_path / "mixed"), prepare.Settings(min_frames=3),
                  clips_per_shard=2, process_index=1, process_count=2)
  with pytest.raises(ValueError, match="written from other inputs"):
    prepare.prepare(str(root), str(edited), str(tmp_path / "mixed"),
                    prepare.Settings(min_frames=3), clips_per_shard=2, process_index=0,
                    process_count=2)
  merged, single = records.Dataset(str(out)), records.Dataset(str(tmp_path / "whole"))
  assert [merged[i]["path"] for i in range(5)] == [single[i]["path"] for i in range(5)]
  # Other inputs in the same folder are refused rather than mixed in.
  with pytest.raises(ValueError, match="written from other inputs, settings or VAE"):
    _prepare(folder, out, clips_per_shard=3)


def test_captions_files_and_folders_are_checked(folder, tmp_path):
  root, _ = folder
  bad = tmp_path / "bad.csv"
  bad.write_text("video,text\nclip0.mp4,hello\n")
  with pytest.raises(ValueError, match="has no column caption; name the columns"):
    prepare.prepare(str(root), str(bad), str(tmp_path / "o"))
  bad.write_text("video,caption,duration\nclip0.mp4,hello,3\n")
  with pytest.raises(ValueError, match="unknown column.* duration; expected video, caption"):
    prepare.prepare(str(root), str(bad), str(tmp_path / "o"))
  assert prepare.prepare(str(root), str(bad), str(tmp_path / "o"),
                         ignore_columns=("duration",))["records"] >= 1
  lines = tmp_path / "bad.jsonl"
  lines.write_text('{"video": "clip0.mp4", "caption": "a"}\n{"video": "clip1.mp4", "tags": 1}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl line 2 has no column caption"):
    prepare.prepare(str(root), str(lines), str(tmp_path / "p"))
  odd = tmp_path / "odd.csv"  # a byte-order mark, a repeated row, an empty span
  odd.write_text("\ufeffvideo,caption,start,end\nclip0.mp4,a,0,1\nclip0.mp4,a,0,1\n"
                 "clip1.mp4,b,2,1\n", encoding="utf-8")
  info = prepare.prepare(str(root), str(odd), str(tmp_path / "q"))
  assert info["records"] == 1
  with open(tmp_path / "q" / records.SKIPPED_FILE) as f:
    reasons = [json.loads(line)["reason"] for line in f]
  assert "duplicate of line 2" in reasons
  assert any(r.startswith("empty span: start 2 s, end 1 s") for r in reasons)
  odd.write_text("video,caption,start\nclip0.mp4,a,nan\n")
  with pytest.raises(ValueError, match=r"line 2: start='nan' is not a number of seconds >= 0"):
    prepare.prepare(str(root), str(odd), str(tmp_path / "r"))
  with pytest.raises(ValueError, match="captions file .* does not exist"):
    prepare.prepare(str(root), str(tmp_path / "none.csv"), str(tmp_path / "o"))
  with pytest.raises(ValueError, match="--input_dir .* does not exist"):
    prepare.prepare(str(tmp_path / "nowhere"), str(bad), str(tmp_path / "o"))
  with pytest.raises(ValueError, match="need --store raw"):
    prepare.Settings("file", fps=8)


def test_raw_clips_resampled_below_the_minimum_are_skipped(folder, tmp_path):
  info = _prepare(folder, tmp_path / "out",
                  settings=prepare.Settings("raw", fps=0.5, max_side=16, min_frames=1))
  assert info["records"] == 1  # only the image: 8 fps clips of 9-12 frames give 0 at 0.5 fps
  with open(tmp_path / "out" / records.SKIPPED_FILE) as f:
    reasons = {json.loads(line)["video"]: json.loads(line)["reason"] for line in f}
  assert reasons["clip0.mp4"] == "too short: 0 frames at 0.5 fps, --min_frames 1"


def test_a_long_record_gives_a_window_from_each_stretch(folder, tmp_path):
  root, _ = folder
  _prepare(folder, tmp_path / "out")
  dataset = records.Dataset(str(tmp_path / "out"))
  source = video_source.ClipSource(dataset, [0], (5, 32, 48), video_source.Sampling(), seed=1)
  direct = video_io.read_media(str(root / "clip0.mp4"))  # 12 frames: stretches 0-5 and 6-11
  assert len(source) == 2
  starts = [[s for s in range(8) if np.array_equal(source[i]["video"], direct[s:s + 5])]
            for i in range(2)]
  assert starts[0][0] in (0, 1) and starts[1][0] in (6, 7)


def test_a_bucket_with_fewer_clips_than_processes_is_named(folder, tmp_path):
  from sorajax import configuration as config_lib  # pylint: disable=import-outside-toplevel
  from sorajax.data import pipeline  # pylint: disable=import-outside-toplevel
  _prepare(folder, tmp_path / "out")
  dataset = records.Dataset(str(tmp_path / "out"))
  source = video_source.ClipSource(dataset, [0, 1], (5, 32, 32), video_source.Sampling(), 0)
  with pytest.raises(config_lib.ConfigError, match="holds 4 examples, fewer than the 8 process"):
    pipeline.make_loader(source, batch_size=1, seed=0, share=(0, 8))


def test_a_dataset_of_another_format_version_is_refused(folder, tmp_path):
  _prepare(folder, tmp_path / "out")
  info_path = tmp_path / "out" / records.DATASET_FILE
  info = json.loads(info_path.read_text())
  info_path.write_text(json.dumps(dict(info, version=records.VERSION + 1)))
  with pytest.raises(ValueError, match=r"format version 2, this sorajax reads version 1; prepare"):
    records.Dataset(str(tmp_path / "out"))
  with pytest.raises(ValueError, match="does not exist; prepare one"):
    records.Dataset(str(tmp_path / "missing"))


def test_clips_are_sampled_by_stride_or_rate_and_fitted_to_their_bucket(folder, tmp_path):
  root, _ = folder
  _prepare(folder, tmp_path / "out")
  dataset = records.Dataset(str(tmp_path / "out"))
  source = video_source.ClipSource(dataset, np.arange(len(dataset)), (4, 32, 48),
                                   video_source.Sampling(stride=3), seed=0)
  direct = video_io.read_media(str(root / "clip0.mp4"))  # 12 frames: a stride-3 window of 4
  clip = source[0]
  assert clip["video"].shape == (4, 32, 48, 3) and clip["caption"].startswith("clip number 0")
  starts = [s for s in range(3) if np.array_equal(clip["video"], direct[s:s + 10:3])]
  assert starts, "the clip is not 4 frames of the source 3 apart"
  np.testing.assert_array_equal(source[0]["video"], clip["video"])  # the same every time
  half_rate = video_source.Sampling(fps=4.0)  # 8 fps files: every other frame
  assert half_rate.indices(1, 4, 8.0).tolist() == [1, 3, 5, 7]
  assert half_rate.span(4, np.asarray([8.0, 0.0])).tolist() == [7, 4]


def test_buckets_keep_each_clip_near_its_aspect_ratio_and_long_enough():
  rng = np.random.default_rng(0)
  count = 400
  meta = {"width": rng.integers(64, 1024, count), "height": rng.integers(64, 1024, count),
          "frames": rng.integers(1, 60, count), "fps": np.full(count, 24.0)}
  buckets = buckets_lib.parse("17x32x64:4, 17x48x48:4, 17x64x32:4, 33x48x48:2, 1x48x48:8")
  members = video_source.assign_buckets(meta, buckets, video_source.Sampling(stride=1))
  aspects = np.log(np.asarray([b.width / b.height for b in buckets]))
  step = np.diff(np.unique(aspects)).max()
  record_aspect = np.log(meta["width"] / meta["height"])
  video_members = np.concatenate([m for m, b in zip(members, buckets) if b.frames > 1])
  assert len(np.unique(video_members)) == len(video_members)  # one video bucket each
  assert set(video_members) == set(np.flatnonzero(meta["frames"] >= 17))
  for m, bucket, aspect in zip(members[:-1], buckets[:-1], aspects):  # the video buckets
    assert (meta["frames"][m] >= bucket.frames).all()
    inside = np.abs(record_aspect[m]) <= np.abs(aspects).max()  # within the buckets' range
    assert (np.abs(record_aspect[m] - aspect)[inside] <= step / 2 + 1e-9).all()
  assert len(members[-1]) == count  # the image bucket takes a frame of every clip
  assert (meta["frames"][members[3]] >= 33).all() and not set(members[3]) & set(members[1])


def test_training_reads_a_prepared_dataset(folder, tmp_path):
  from sorajax import train  # pylint: disable=import-outside-toplevel
  from tiny import VAE_CONFIG, tiny_config  # pylint: disable=import-outside-toplevel
  _prepare(folder, tmp_path / "data")
  config = tiny_config(VAE_CONFIG, steps=2)
  config.data.source = "records"
  config.data.records = str(tmp_path / "data")
  config.data.height = config.data.width = 32
  config.vae.eval_clips = 2
  train.train_and_evaluate(config, str(tmp_path / "run"))
  assert os.path.isdir(tmp_path / "run" / "checkpoints")


def test_precomputed_latents_equal_the_vae_and_train_the_dit(folder, tmp_path, vae_workdir,
                                                             monkeypatch):
  from sorajax import precompute, train  # pylint: disable=import-outside-toplevel
  from sorajax.data import latent_records, pipeline  # pylint: disable=import-outside-toplevel
  from sorajax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from sorajax.training import dit_objective  # pylint: disable=import-outside-toplevel
  from tiny import DIT_CONFIG, tiny_config  # pylint: disable=import-outside-toplevel
  _prepare(folder, tmp_path / "data")
  config = tiny_config(DIT_CONFIG, steps=2)
  config.vae_workdir = vae_workdir
  config.data.source = "records"
  config.data.records = str(tmp_path / "data")
  out = str(tmp_path / "latents")
  assert precompute.precompute(config, out, clips_per_shard=2, process_index=1,
                               process_count=2) is None
  info = precompute.precompute(config, out, clips_per_shard=2, process_index=0, process_count=2)
  # 12-, 10-, 9- and 11-frame clips give 2 + 2 + 1 + 2 five-frame windows.
  assert info["buckets"] == {"5x16x16": {"clips": 7, "shards": 4, "latent_shape": [2, 2, 2, 16]}}
  stored = latent_records.LatentRecords(out, "5x16x16")
  clips = pipeline.make_source(config.data, "train", config.seed, (5, 16, 16))
  objective = dit_objective.DiTObjective(config, mesh_lib.make_mesh(
      {"data": 1, "fsdp": 1, "tensor": 1, "context": 1}, devices=jax.local_devices()[:1]))
  direct = objective.vae_latents(np.stack([clips[i]["video"] for i in range(7)]))
  np.testing.assert_allclose(np.stack([stored[i]["latents"] for i in range(7)]), direct,
                             atol=1e-5)
  captions = [clips[i]["caption"] for i in range(7)]
  assert [stored[i]["caption"] for i in range(7)] == captions
  # For a frozen text encoder, precomputing again keeps the latents and embeds each shard's
  # captions; dataset.json waits for every shard's embeddings.
  config.text.encoder = "minilm"
  shards = sorted(glob.glob(os.path.join(out, "*.array_record")))
  written = [os.path.getmtime(path) for path in shards]
  assert precompute.precompute(config, out, clips_per_shard=2, process_index=0,
                               process_count=2) is None
  assert precompute.precompute(config, out, clips_per_shard=2, process_index=1,
                               process_count=2) is not None
  assert [os.path.getmtime(path) for path in shards] == written
  minilm = dit_objective.DiTObjective(config, objective.mesh)
  table = minilm.prompt_embeddings(os.path.join(out, dit_objective.PROMPTS_DIR))
  ids, mask = minilm.tokenizer.encode_batch(captions)
  np.testing.assert_allclose(table.lookup(captions)[0], minilm.encode_prompts(ids, mask),
                             atol=1e-5)
  # The DiT trains from the latents and cached embeddings alone: reading a pixel clip would fail.
  config.data.latent_records = out
  monkeypatch.setattr(video_source.ClipSource, "__getitem__", None)
  train.train_and_evaluate(config, str(tmp_path / "dit"))
  assert os.path.isdir(tmp_path / "dit" / "checkpoints")
  # Latents of another VAE checkpoint are refused.
  info_path = os.path.join(out, records.DATASET_FILE)
  with open(info_path) as f:
    stored_info = json.load(f)
  configuration.write_json_atomic(info_path,
                                  dict(stored_info, vae_step=stored_info["vae_step"] + 1))
  wrong = stored_info["vae_step"] + 1
  with pytest.raises(Exception, match=f"at step {wrong}, .* train with --config.vae_step={wrong}"):
    objective.prepare(str(tmp_path / "dit"))


def test_a_resumed_stream_of_prepared_clips_sees_the_same_batches(folder, tmp_path):
  """Two buckets read by one grain worker process each: the batches after a checkpoint's restore
  equal those of the uninterrupted stream."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from sorajax.data import pipeline  # pylint: disable=import-outside-toplevel
  from sorajax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from sorajax.training import checkpoint  # pylint: disable=import-outside-toplevel
  from tiny import DIT_CONFIG, tiny_config  # pylint: disable=import-outside-toplevel
  flags.FLAGS.mark_as_parsed()  # grain workers read absl flags; the CLI parses them
  _prepare(folder, tmp_path / "data")
  config = tiny_config(DIT_CONFIG, **{"data.buckets": "5x16x16:8, 1x16x16:8"})
  config.data.source, config.data.records = "records", str(tmp_path / "data")
  config.data.worker_count = 1
  mesh = mesh_lib.make_mesh({"data": 8})
  fingerprint = lambda batch: (batch["video"].shape, int(np.asarray(batch["video"]).sum()))
  batches = pipeline.train_batches(config, mesh)
  [next(batches) for _ in range(3)]
  saver = checkpoint.Checkpointer(str(tmp_path / "run"), every=1, keep=1)
  saver.save(3, {"step": np.int32(3)}, batches.iterators)
  saver.close()
  expected = [fingerprint(next(batches)) for _ in range(4)]
  resumed = pipeline.train_batches(config, mesh)
  loader = checkpoint.Checkpointer(str(tmp_path / "run"), every=1, keep=1)
  loader.restore(3, {"step": jax.ShapeDtypeStruct((), np.int32)}, resumed.iterators)
  loader.close()
  resumed.resume_at(3)
  assert [fingerprint(next(resumed)) for _ in range(4)] == expected


def test_processes_read_disjoint_shares_that_cover_the_clips(folder, tmp_path):
  """Two processes' shares of the endless training stream (pipeline.make_loader with
  share=(i, 2)): no clip in both, none in neither, though 5 clips do not split evenly."""
  from sorajax.data import pipeline  # pylint: disable=import-outside-toplevel
  _prepare(folder, tmp_path / "data")
  dataset = records.Dataset(str(tmp_path / "data"))
  source = video_source.ClipSource(dataset, np.arange(len(dataset)), (1, 16, 16),
                                   video_source.Sampling(), seed=0)
  seen = []
  for index in range(2):
    loader = pipeline.make_loader(source, batch_size=1, seed=3, share=(index, 2))
    seen.append({int(batch["video"].sum()) for batch in itertools.islice(loader, 9)})
  assert sorted(map(len, seen)) == [2, 3]
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == {int(source[i]["video"].sum()) for i in range(5)}
