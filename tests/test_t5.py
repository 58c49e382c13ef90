"""The Flax T5 v1.1 / umT5 encoder: Hugging Face weights load by name, and token embeddings match
transformers' T5EncoderModel and UMT5EncoderModel (when the reference is installed)."""
import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sorajax.models import t5

# d_kv * heads (32) differs from d_model (16), and 20 tokens reach past max_distance: every part
# of the bucketing is used.
TINY = t5.T5Config(vocab_size=50, d_model=16, layers=2, heads=4, d_kv=8, d_ff=32, buckets=8,
                   max_distance=16)
CONFIGS = {"t5": TINY, "umt5": dataclasses.replace(TINY, per_layer_bias=True),
           "t5_relu": dataclasses.replace(TINY, feed_forward="relu")}


def _hf_tensors(config, seed=0):
  """Random tensors under the Hugging Face names, shaped as HF stores them, plus a decoder tensor
  a full checkpoint would hold."""
  rng = np.random.default_rng(seed)
  d, inner, f = config.d_model, config.heads * config.d_kv, config.d_ff
  shapes = {"shared.weight": (config.vocab_size, d), "encoder.final_layer_norm.weight": (d,),
            "decoder.final_layer_norm.weight": (d,)}
  for i in range(config.layers):
    attn, ff = f"encoder.block.{i}.layer.0.SelfAttention.", f"encoder.block.{i}.layer.1."
    shapes.update({f"{attn}{n}.weight": (inner, d) for n in "qkv"})
    shapes.update({f"{attn}o.weight": (d, inner), f"{ff}DenseReluDense.wo.weight": (d, f),
                   f"encoder.block.{i}.layer.0.layer_norm.weight": (d,),
                   f"{ff}layer_norm.weight": (d,)})
    gated = config.feed_forward.startswith("gated")
    shapes.update({f"{ff}DenseReluDense.{n}.weight": (f, d)
                   for n in (("wi_0", "wi_1") if gated else ("wi",))})
    if i == 0 or config.per_layer_bias:
      shapes[f"{attn}relative_attention_bias.weight"] = (config.buckets, config.heads)
  tensors = {n: rng.normal(0, 0.3, s).astype(np.float32) for n, s in shapes.items()}
  for n in tensors:
    if n.endswith("layer_norm.weight"):  # scales near 1, but not 1, so a missed one shows
      tensors[n] += 1
  return tensors


def _bucket(offset, config):
  """T5's bidirectional bucket of one key-minus-query offset, written out plainly."""
  half = config.buckets // 2
  exact = half // 2
  base, distance = (half if offset > 0 else 0), abs(offset)
  if distance < exact:
    return base + distance
  log_bins = int(math.log(distance / exact) / math.log(config.max_distance / exact)
                 * (half - exact))
  return base + min(exact + log_bins, half - 1)


def _numpy_t5(t, config, ids, mask):
  """A plain reference forward over the HF tensors."""
  def norm(x, name):
    return x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + config.eps) * t[name]
  lin = lambda x, name: x @ t[name].T
  act = {"gated-gelu": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi)
                                                       * (x + 0.044715 * x ** 3))),
         "relu": lambda x: np.maximum(x, 0)}[config.feed_forward]
  b, l, h, d = *ids.shape, config.heads, config.d_kv
  buckets = np.array([[_bucket(k - q, config) for k in range(l)] for q in range(l)])
  x = t["shared.weight"][ids]
  for i in range(config.layers):
    p = f"encoder.block.{i}.layer."
    table = t[f"encoder.block.{i if config.per_layer_bias else 0}.layer.0.SelfAttention."
              "relative_attention_bias.weight"]
    y = norm(x, p + "0.layer_norm.weight")
    q, k, v = (lin(y, f"{p}0.SelfAttention.{n}.weight").reshape(b, l, h, d) for n in "qkv")
    logits = (np.einsum("bqhd,bkhd->bhqk", q, k) + table[buckets].transpose(2, 0, 1)
              + np.where(mask, 0, -1e9)[:, None, None])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    y = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, l, h * d)
    x = x + lin(y, p + "0.SelfAttention.o.weight")
    y = norm(x, p + "1.layer_norm.weight")
    ff = p + "1.DenseReluDense."
    if config.feed_forward == "gated-gelu":
      y = act(lin(y, ff + "wi_0.weight")) * lin(y, ff + "wi_1.weight")
    else:
      y = act(lin(y, ff + "wi.weight"))
    x = x + lin(y, ff + "wo.weight")
  return norm(x, "encoder.final_layer_norm.weight")


def _padded_batch(rng, vocab_size, lengths, width=20):
  ids = np.zeros((len(lengths), width), np.int32)
  for i, n in enumerate(lengths):
    ids[i, :n] = rng.integers(2, vocab_size, n)
  return ids, ids > 0


@pytest.mark.parametrize("name", list(CONFIGS))
def test_loaded_weights_give_the_reference_forward(tmp_path, name):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  config = CONFIGS[name]
  tensors = _hf_tensors(config)
  saved = dict(tensors)
  if config.per_layer_bias:  # the other name a checkpoint may give the embedding
    saved["encoder.embed_tokens.weight"] = saved.pop("shared.weight")
  save_file(saved, str(tmp_path / "model.safetensors"))
  params = t5.load_safetensors(str(tmp_path / "model.safetensors"), config)
  ids, mask = _padded_batch(np.random.default_rng(1), config.vocab_size, (20, 13, 5))
  out = np.asarray(t5.T5Encoder(config).apply({"params": params}, jnp.asarray(ids),
                                              jnp.asarray(mask)))
  want = _numpy_t5(tensors, config, ids, mask)
  np.testing.assert_allclose(out[mask], want[mask], atol=1e-4)


def test_missing_misshapen_and_unexpected_tensors_are_named(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  umt5 = CONFIGS["umt5"]
  tensors = _hf_tensors(umt5)
  del tensors["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
  save_file(tensors, str(tmp_path / "a.safetensors"))
  with pytest.raises(ValueError, match="has no tensor encoder.block.1.layer.1.DenseReluDense.wo"):
    t5.load_safetensors(str(tmp_path / "a.safetensors"), umt5)
  tensors = _hf_tensors(umt5)
  tensors["encoder.block.0.layer.1.DenseReluDense.wi_1.weight"] = np.zeros((8, 16), np.float32)
  save_file(tensors, str(tmp_path / "b.safetensors"))
  with pytest.raises(ValueError, match=r"wi_1.weight has shape \(8, 16\), expected \(32, 16\)"):
    t5.load_safetensors(str(tmp_path / "b.safetensors"), umt5)
  # umT5 weights under a T5 config: block 1's own bias table is left over.
  save_file(_hf_tensors(umt5), str(tmp_path / "c.safetensors"))
  with pytest.raises(ValueError, match="holds tensor encoder.block.1.layer.0.SelfAttention."
                                       "relative_attention_bias.weight .* model_type umt5"):
    t5.load_safetensors(str(tmp_path / "c.safetensors"), TINY)
  with pytest.raises(ValueError, match="does not exist"):
    t5.load_safetensors(str(tmp_path / "none.safetensors"), TINY)


def test_config_from_json(tmp_path):
  hf = {"model_type": "umt5", "vocab_size": 50, "d_model": 16, "num_layers": 2, "num_heads": 4,
        "d_kv": 8, "d_ff": 32, "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 16, "layer_norm_epsilon": 1e-6,
        "feed_forward_proj": "gated-gelu"}
  path = tmp_path / "config.json"
  path.write_text(json.dumps(hf))
  assert t5.T5Config.from_json(str(path)) == CONFIGS["umt5"]
  path.write_text(json.dumps({**hf, "model_type": "t5"}))
  assert t5.T5Config.from_json(str(path)) == TINY
  path.write_text(json.dumps({**hf, "feed_forward_proj": "gated-silu"}))
  with pytest.raises(ValueError, match="feed_forward_proj 'gated-silu' is not supported"):
    t5.T5Config.from_json(str(path))
  path.write_text(json.dumps({**hf, "model_type": "bert"}))
  with pytest.raises(ValueError, match="model_type 'bert' is not a T5 encoder"):
    t5.T5Config.from_json(str(path))


@pytest.mark.parity
@pytest.mark.parametrize("name", ["t5", "umt5", "t5_relu"])
def test_token_embeddings_match_transformers(tmp_path, name):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  ours = CONFIGS[name]
  config_class, model_class = ((transformers.UMT5Config, transformers.UMT5EncoderModel)
                               if ours.per_layer_bias else
                               (transformers.T5Config, transformers.T5EncoderModel))
  torch.manual_seed(0)
  model = model_class(config_class(
      vocab_size=ours.vocab_size, d_model=ours.d_model, num_layers=ours.layers,
      num_heads=ours.heads, d_kv=ours.d_kv, d_ff=ours.d_ff, feed_forward_proj=ours.feed_forward,
      relative_attention_num_buckets=ours.buckets,
      relative_attention_max_distance=ours.max_distance)).eval()
  with torch.no_grad():  # a strong position bias, so a token in the wrong bucket shows
    for module in model.modules():
      if getattr(module, "has_relative_attention_bias", False):
        module.relative_attention_bias.weight.normal_(0, 1)
  model.save_pretrained(str(tmp_path))
  config = t5.T5Config.from_json(str(tmp_path / "config.json"))
  assert config == ours
  params = t5.load_safetensors(str(tmp_path / "model.safetensors"), config)
  ids, mask = _padded_batch(np.random.default_rng(1), config.vocab_size, (20, 13, 5))
  got = np.asarray(jax.jit(lambda p, i, m: t5.T5Encoder(config).apply({"params": p}, i, m))(
      params, ids, mask))
  with torch.no_grad():
    want = model(input_ids=torch.from_numpy(ids).long(),
                 attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
  error = np.abs(got - want)[mask].max()
  print(f"{name}: max abs error {error:.2e}")
  assert error <= 1e-4


def test_a_umt5_folder_is_a_text_encoder_choice(tmp_path):
  """text.encoder="t5" reads a Hugging Face folder: config, weights and tokenizer.json; rows end
  with </s> and pad with <pad>, as T5 was trained."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  from tokenizers import Tokenizer, models, pre_tokenizers, processors  # pylint: disable=import-outside-toplevel
  from sorajax.models import text_encoders  # pylint: disable=import-outside-toplevel
  config = CONFIGS["umt5"]
  (tmp_path / "config.json").write_text(json.dumps(
      {"model_type": "umt5", "vocab_size": 50, "d_model": 16, "num_layers": 2, "num_heads": 4,
       "d_kv": 8, "d_ff": 32, "relative_attention_num_buckets": 8,
       "relative_attention_max_distance": 16, "feed_forward_proj": "gated-gelu"}))
  save_file(_hf_tensors(config), str(tmp_path / "model.safetensors"))
  words = ["<pad>", "</s>", "<unk>", "a", "red", "circle", "moving", "left"]
  tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                           special_tokens=[("</s>", 1)])
  tokenizer.save(str(tmp_path / "tokenizer.json"))

  encoder = text_encoders.pretrained("t5", str(tmp_path), max_length=8)
  assert encoder.width == 16 and encoder.tokenizer.pad_id == 0
  ids, mask = encoder.tokenizer.encode_batch(["a red circle moving left", "a blue circle"])
  np.testing.assert_array_equal(ids, [[3, 4, 5, 6, 7, 1, 0, 0], [3, 2, 5, 1, 0, 0, 0, 0]])
  params = encoder.load_params()
  got = np.asarray(encoder.apply(params, jnp.asarray(ids), jnp.asarray(mask)))
  want = np.asarray(t5.T5Encoder(config).apply({"params": params}, ids, mask))
  np.testing.assert_allclose(got[mask], want[mask], atol=1e-6)
  assert not got[~mask].any()  # padding carries nothing into the DiT
