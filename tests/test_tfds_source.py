"""TFDS source: a tiny dataset built here in ArrayRecord format, and TFDS's mock data; nothing is
downloaded. Skipped without the `tfds` extra (tensorflow-datasets, and TensorFlow for its Video
feature)."""
import importlib.util
import pickle

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
if importlib.util.find_spec("tensorflow") is None:
  pytest.skip("tfds.features.Video needs TensorFlow (pip install -e .[tfds])",
              allow_module_level=True)

# pylint: disable=wrong-import-position
from sorajax.data import buckets as buckets_lib
from sorajax.data import records, video_source
from sorajax.data.tfds_source import TfdsDataset

SIZES = [(9, 8, 10), (12, 16, 16), (10, 12, 20)]  # (frames, height, width) of the train clips


class TinyClips(tfds.core.GeneratorBasedBuilder):
  """Clips of different sizes; each frame's pixels hold (clip, frame) so reads can be checked."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "video": tfds.features.Video(shape=(None, None, None, 3)),
        "caption": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(SIZES), "test": self._generate_examples(SIZES[:1])}

  def _generate_examples(self, sizes):
    for clip, (frames, height, width) in enumerate(sizes):
      video = np.zeros((frames, height, width, 3), np.uint8)
      video[..., 0], video[..., 1] = clip, np.arange(frames)[:, None, None]
      yield clip, {"video": video, "caption": f"clip {clip}"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("tfds"))
  TinyClips(data_dir=directory, file_format="array_record").download_and_prepare()
  return directory


def test_records_hold_the_clips_and_captions(data_dir):
  dataset = TfdsDataset("tiny_clips", "train", data_dir=data_dir, fps=24.0)
  assert len(dataset) == len(SIZES) and dataset.directory == "tfds:tiny_clips/train"
  for i in range(len(dataset)):
    record = dataset[i]
    clip = int(record["data"][0, 0, 0, 0])  # TFDS shuffles the examples
    assert record["caption"] == f"clip {clip}"
    assert record["data"].shape == SIZES[clip] + (3,) and record["data"].dtype == np.uint8
    assert tuple(dataset.meta[k][i] for k in ("frames", "height", "width")) == SIZES[clip]
    assert (record["store"], record["fps"], record["end"]) == ("array", 24.0, SIZES[clip][0])
    np.testing.assert_array_equal(records.record_frames(record, np.array([2, 5]))[:, 0, 0, 1],
                                  [2, 5])
  assert set(dataset.meta) == set(records.META_FIELDS)
  # Picklable for grain workers: the copy opens its own reader.
  again = pickle.loads(pickle.dumps(dataset))
  assert again._source is None  # pylint: disable=protected-access
  assert again[1]["caption"] == dataset[1]["caption"]


def test_clip_source_fits_clips_to_their_bucket(data_dir):
  dataset = TfdsDataset("tiny_clips", "train", data_dir=data_dir)
  sampling = video_source.Sampling(stride=2)
  buckets = [buckets_lib.Bucket(5, 8, 8, 1), buckets_lib.Bucket(5, 8, 16, 1)]
  members = video_source.assign_buckets(dataset.meta, buckets, sampling)
  assert sorted(len(m) for m in members) == [1, 2]  # two near-square clips, one wide
  for bucket, indices in zip(buckets, members):
    source = video_source.ClipSource(dataset, indices, bucket.size, sampling, seed=0)
    for i in range(len(source)):
      clip = source[i]
      assert clip["video"].shape == bucket.size + (3,) and clip["video"].dtype == np.uint8
      assert clip["caption"].startswith("clip ")
      steps = np.diff(clip["video"][:, 0, 0, 1].astype(int))
      np.testing.assert_array_equal(steps, 2)  # every second frame


def test_mock_data_with_class_label_captions():
  with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
    dataset = TfdsDataset("ucf101", "train", caption_key="label")
    names = tfds.builder("ucf101").info.features["label"].names
    for i in range(len(dataset)):
      record = dataset[i]
      assert record["data"].shape == (dataset.meta["frames"][i], 256, 256, 3)
      assert record["caption"] in names


def test_missing_keys_and_unprepared_data_are_one_line_errors(data_dir, tmp_path):
  with pytest.raises(ValueError, match=r"tfds_caption_key='text' .* valid: video, caption$"):
    TfdsDataset("tiny_clips", "train", data_dir=data_dir, caption_key="text")
  with tfds.testing.mock_data(num_examples=1, policy=tfds.testing.MockPolicy.USE_CODE):
    with pytest.raises(ValueError, match="valid: image_sequence"):
      TfdsDataset("moving_mnist", "test", video_key="image_sequence")
  with pytest.raises(ValueError, match="prepare it first: tfds build tiny_clips") as error:
    TfdsDataset("tiny_clips", "train", data_dir=str(tmp_path / "empty"))
  assert "\n" not in str(error.value)


def test_make_source_reads_a_tfds_split(data_dir):
  from sorajax import configuration  # pylint: disable=import-outside-toplevel
  from sorajax.data import pipeline  # pylint: disable=import-outside-toplevel
  from tiny import DIT_CONFIG  # pylint: disable=import-outside-toplevel
  c = configuration.load_config_file(f"{DIT_CONFIG}:frames=5,size=8,batch=2")
  c.data.buckets, c.data.frame_stride = "", 2
  c.data.source, c.data.tfds_name, c.data.tfds_data_dir = "tfds", "tiny_clips", data_dir
  c.data.tfds_eval_split = "test"
  assert pipeline.make_source(c.data, "train", 0)[0]["video"].shape == (5, 8, 8, 3)
  assert len(pipeline.make_source(c.data, "eval", 0)) == 1
