"""Model contracts: shapes, causality, zero-init, masking, logical names, attention parity."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sorajax.models import attention, dit, factors, rope, text, vae

# rbg keys: threefry's random bits take several times longer to compile on CPU.
KEY = jax.random.key(0, impl="rbg")


def _perturb(params, scale=0.1, seed=1):
  """Params plus noise, so zero-initialised layers stop hiding the paths a test wants to see.

  Noise comes from numpy: a jax.random call per leaf would compile once per leaf shape.
  """
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: x + scale * rng.standard_normal(x.shape).astype(x.dtype), params)


def _assert_all_named(variables):
  """Every leaf is an nn.Partitioned box whose names cover each dim."""
  boxed = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert boxed and all(isinstance(x, nn.Partitioned) for x in boxed), "unnamed parameter leaf"
  specs = jax.tree.leaves(
    nn.get_partition_spec(variables), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
  )
  assert len(specs) == len(boxed)
  for box, spec in zip(boxed, specs):
    assert isinstance(spec, jax.sharding.PartitionSpec)
    assert len(box.names) == box.value.ndim, (box.names, box.value.shape)


# --- attention ------------------------------------------------------------------------------------


def _reference_attention(q, k, v, mask):
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(np.broadcast_to(mask, logits.shape), logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", probs, v)


@pytest.mark.parametrize("mask_kind", ["none", "keys", "full"])
def test_xla_attention_matches_numpy(mask_kind):
  rng = np.random.default_rng(0)
  q = rng.standard_normal((2, 5, 3, 8), np.float32)
  k = rng.standard_normal((2, 7, 3, 8), np.float32)
  v = rng.standard_normal((2, 7, 3, 8), np.float32)
  mask = np.ones((1, 1, 1, 7), bool)
  if mask_kind == "keys":
    mask = np.array([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]], bool)[:, None, None, :]
  elif mask_kind == "full":
    mask = rng.random((2, 3, 5, 7)) < 0.6
    mask[..., 0] = True  # keep every row attending somewhere
  attend = jax.jit(attention.attend)
  out = attend(q, k, v, None if mask_kind == "none" else jnp.asarray(mask))
  np.testing.assert_allclose(out, _reference_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
def test_cudnn_attention_matches_xla():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 64, 4, 64)), jnp.bfloat16) for _ in range(3))
  mask = jnp.asarray(np.arange(64)[None, :] < np.array([[40], [64]]))[:, None, None, :]
  attend = jax.jit(attention.attend, static_argnames="implementation")
  expected = attend(q, k, v, mask, implementation="xla").astype(jnp.float32)
  out = attend(q, k, v, mask, implementation="cudnn").astype(jnp.float32)
  np.testing.assert_allclose(out, expected, atol=2e-2)


def test_unknown_attention_names_valid_ones():
  q = jnp.zeros((1, 2, 1, 4))
  with pytest.raises(ValueError, match="valid: blockwise, cudnn, splash, xla"):
    attention.attend(q, q, q, implementation="flash9000")


# --- VAE ------------------------------------------------------------------------------------------


class TinyVAE:
  """The tiny VAE with jitted encode/decode shared by the tests, so each shape compiles once."""

  def __init__(self):
    self.model = vae.get_vae("tiny")
    params = jax.jit(self.model.init)(KEY, jnp.zeros((1, 5, 16, 16, 3)))
    # A little noise so the zero-initialised biases don't hide any path.
    self.params = _perturb(params, scale=0.02)
    self.encode = jax.jit(lambda v: self.model.apply(self.params, v, method="encode"))
    self.decode = jax.jit(lambda z: self.model.apply(self.params, z, method="decode"))


@pytest.fixture(scope="module")
def tiny_vae():
  return TinyVAE()


def _video(frames, seed=0, batch=2):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (batch, frames, 16, 16, 3)).astype(np.float32)


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_vae_shapes(tiny_vae, frames):
  mean, logvar = tiny_vae.encode(_video(frames))
  assert mean.shape == logvar.shape == (2, 1 + (frames - 1) // 4, 4, 4, 4)
  assert tiny_vae.decode(mean).shape == (2, frames, 16, 16, 3)


def test_vae_image_is_one_frame_video(tiny_vae):
  """Latent frame 0 of a clip equals the latent of its first frame alone; same for decoding."""
  video = _video(9)
  mean_video, _ = tiny_vae.encode(video)
  mean_image, _ = tiny_vae.encode(video[:, :1])
  assert mean_image.shape == (2, 1, 4, 4, 4)
  np.testing.assert_allclose(mean_video[:, :1], mean_image, atol=1e-5)
  decoded_video = tiny_vae.decode(mean_video)
  decoded_image = tiny_vae.decode(mean_video[:, :1])
  np.testing.assert_allclose(decoded_video[:, :1], decoded_image, atol=1e-5)


def test_vae_encoder_is_causal(tiny_vae):
  video = _video(9)
  changed = video.copy()
  changed[:, 5] *= -1  # frame 5 is first seen by latent frame 2 (4*2 >= 5)
  before, after = tiny_vae.encode(video)[0], tiny_vae.encode(changed)[0]
  np.testing.assert_allclose(before[:, :2], after[:, :2], atol=1e-6)
  assert np.abs(before[:, 2] - after[:, 2]).max() > 1e-3


def test_vae_decoder_is_causal(tiny_vae):
  z = np.random.default_rng(0).standard_normal((2, 3, 4, 4, 4)).astype(np.float32)
  changed = z.copy()
  changed[:, 2] += 1.0
  before, after = tiny_vae.decode(z), tiny_vae.decode(changed)
  # Decoded frame t sees latents <= ceil(t/4): frames 0..4 must not move, frames 5..8 must.
  np.testing.assert_allclose(before[:, :5], after[:, :5], atol=1e-6)
  assert np.abs(before[:, 5:] - after[:, 5:]).max() > 1e-3


def test_vae_decoder_history_is_its_reach(tiny_vae):
  """A latent frame changes the decoded frames of the next `decoder_history` latent frames and
  none after them (loops decode enough periods by it)."""
  reach = tiny_vae.model.decoder_history()
  z = np.random.default_rng(1).standard_normal((1, reach + 4, 4, 4, 4)).astype(np.float32)
  changed = z.copy()
  changed[:, 1] += 1.0
  moved = np.abs(tiny_vae.decode(z) - tiny_vae.decode(changed)).max(axis=(0, 2, 3, 4))
  last_reached = 4 * (1 + reach)  # the last video frame of latent frame 1 + reach
  assert moved[last_reached] > 1e-4
  np.testing.assert_allclose(moved[last_reached + 1:], 0.0, atol=1e-6)


def test_vae_call_samples_only_with_rng(tiny_vae):
  model, params, video = tiny_vae.model, tiny_vae.params, _video(1)
  forward = jax.jit(lambda rng: model.apply(params, video, sample_rng=rng))
  sampled = forward(KEY)
  assert sampled["recon"].shape == video.shape
  std = np.exp(0.5 * sampled["logvar"])
  eps = jax.random.normal(KEY, sampled["mean"].shape)
  np.testing.assert_allclose(sampled["z"], sampled["mean"] + std * eps, atol=1e-5)
  mean_only = jax.jit(lambda: model.apply(params, video))()
  np.testing.assert_array_equal(mean_only["z"], mean_only["mean"])


def test_kl_closed_form_matches_monte_carlo():
  mean = jnp.array([[0.5, -1.0, 0.0], [2.0, 0.3, -0.2]])
  logvar = jnp.array([[0.0, -1.0, 0.7], [0.2, -0.3, 1.0]])
  kl = vae.kl_divergence(mean, logvar)
  assert kl.shape == (2,)
  std = np.exp(0.5 * np.asarray(logvar))
  eps = np.random.default_rng(0).standard_normal((400_000,) + mean.shape)
  z = np.asarray(mean) + std * eps
  # log q(z) - log p(z) with q = N(mean, std^2), p = N(0, 1); the 2*pi terms cancel.
  log_ratio = -0.5 * eps**2 - np.log(std) + 0.5 * z**2
  np.testing.assert_allclose(kl, log_ratio.mean(axis=0).mean(axis=-1), rtol=0.02)
  np.testing.assert_array_equal(vae.kl_divergence(jnp.zeros((1, 4)), jnp.zeros((1, 4))), [0.0])


@pytest.mark.parametrize(
  "args, message",
  [
    ((10, 32, 32, 4, 8), "frames=10 is not 1 + 4*k; nearest valid: 9 or 13"),
    ((9, 30, 32, 4, 8), "height=30 is not a multiple of 8; nearest valid: 24 or 32"),
    ((9, 32, 36, 4, 8), "width=36 is not a multiple of 8; nearest valid: 32 or 40"),
    ((0, 32, 32, 4, 8), "frames=0 is not 1 + 4*k; nearest valid: 1"),
    ((9, 4, 32, 4, 8), "height=4 is not a multiple of 8; nearest valid: 8"),
    # A temporal patch of 2 needs an even latent frame count (1 + k).
    ((9, 32, 32, 4, 8, 2),
     "frames=9 is not 1 + 4*k with 1 + k a multiple of 2; nearest valid: 5 or 13"),
    ((13, 32, 32, 4, 8, 2), None),
  ],
)
def test_check_video_shape_names_nearest(args, message):
  if message is None:
    factors.check_video_shape(*args)
    return
  with pytest.raises(ValueError) as info:
    factors.check_video_shape(*args)
  assert str(info.value) == message
  assert vae.check_video_shape is factors.check_video_shape


def test_vae_rejects_bad_shapes_and_names(tiny_vae):
  with pytest.raises(ValueError, match="frames=6 is not 1 \\+ 4\\*k; nearest valid: 5 or 9"):
    tiny_vae.encode(jnp.zeros((1, 6, 16, 16, 3)))
  with pytest.raises(ValueError, match="valid: tiny, demo, base"):
    vae.get_vae("huge")
  with pytest.raises(ValueError, match="'chanels' is unknown"):
    vae.get_vae("tiny", chanels=(8,))


# --- DiT ------------------------------------------------------------------------------------------


class TinyDiT:
  """The tiny DiT, its (zero-initialised) params, perturbed params and a shared jitted apply."""

  def __init__(self):
    self.model = dit.get_dit("tiny")
    self.params = jax.jit(self.model.init)(KEY, *_dit_inputs((2, 4, 4)))
    self.perturbed = _perturb(self.params)
    self.apply = jax.jit(self.model.apply)


@pytest.fixture(scope="module")
def tiny_dit():
  return TinyDiT()


def _dit_inputs(grid, batch=2, length=6, width=16, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, *grid, 4)).astype(np.float32)
  t = rng.uniform(0, 1, (batch,)).astype(np.float32)
  context = rng.standard_normal((batch, length, width)).astype(np.float32)
  # Example 0 has 3 real tokens, example 1 all of them.
  mask = np.arange(length)[None, :] < np.array([[3], [length]])[:batch]
  return x, t, context, mask


def test_dit_any_grid_and_zero_at_init(tiny_dit):
  for grid in [(2, 4, 4), (5, 6, 8)]:
    x, t, ctx, mask = _dit_inputs(grid)
    out = tiny_dit.apply(tiny_dit.params, x, t, ctx, mask)
    assert out.shape == x.shape
    np.testing.assert_array_equal(out, 0.0)  # adaLN-Zero gates and zero final projection
    assert np.abs(tiny_dit.apply(tiny_dit.perturbed, x, t, ctx, mask)).max() > 1e-4


def test_dit_honours_context_mask(tiny_dit):
  params, apply = tiny_dit.perturbed, tiny_dit.apply
  x, t, ctx, mask = _dit_inputs((2, 4, 4))
  base = apply(params, x, t, ctx, mask)
  padded_changed = ctx.copy()
  padded_changed[0, 4] += 5.0  # example 0 has 3 real tokens
  np.testing.assert_allclose(apply(params, x, t, padded_changed, mask), base, atol=1e-6)
  real_changed = ctx.copy()
  real_changed[0, 1] += 5.0
  assert np.abs(apply(params, x, t, real_changed, mask)[0] - base[0]).max() > 1e-4


def test_dit_pooled_text_ignores_padding():
  model = dit.get_dit("tiny", pooled_text=True)
  x, t, ctx, mask = _dit_inputs((2, 4, 4))
  params = _perturb(jax.jit(model.init)(KEY, x, t, ctx, mask))
  assert "text_pool_fc1" in params["params"]
  base = model.apply(params, x, t, ctx, mask)
  padded_changed = ctx.copy()
  padded_changed[0, 4] += 5.0  # example 0 has 3 real tokens
  np.testing.assert_allclose(model.apply(params, x, t, padded_changed, mask), base, atol=1e-6)
  real_changed = ctx.copy()
  real_changed[0, 1] += 5.0
  assert np.abs(model.apply(params, x, t, real_changed, mask)[0] - base[0]).max() > 1e-4


def test_dit_per_frame_times(tiny_dit):
  params, apply = tiny_dit.perturbed, tiny_dit.apply
  x, t, ctx, mask = _dit_inputs((3, 4, 4))
  base = apply(params, x, t, ctx, mask)
  # The same time on every frame is the clip-level time.
  per_frame = np.repeat(t[:, None], 3, axis=1)
  np.testing.assert_allclose(apply(params, x, per_frame, ctx, mask), base, atol=1e-5)
  # Changing one frame's time changes the output (through attention, every frame's).
  per_frame[:, 0] = 0.0
  changed = apply(params, x, per_frame, ctx, mask)
  assert np.abs(changed - base)[:, 1:].max() > 1e-4
  with pytest.raises(ValueError, match="must be \\(batch,\\)"):
    apply(params, x, per_frame[:, :2], ctx, mask)


def test_dit_grid_error_names_nearest(tiny_dit):
  x, t, ctx, mask = _dit_inputs((2, 7, 4))
  message = "latent height=7 is not a multiple of 2; nearest valid: 6 or 8"
  with pytest.raises(ValueError, match=message):
    tiny_dit.apply(tiny_dit.params, x, t, ctx, mask)
  with pytest.raises(ValueError, match="valid: tiny, demo, demo8, S/2"):
    dit.get_dit("M/3")


def test_sincos_3d_rows_are_distinct():
  table = dit.sincos_3d((2, 3, 4), 32)
  assert table.shape == (24, 32)
  assert len(np.unique(table.round(6), axis=0)) == 24


def test_rope_scores_depend_only_on_relative_position():
  head_dim = 16
  rng = np.random.default_rng(0)
  q, k = rng.standard_normal((2, 1, 1, 1, head_dim)).astype(np.float32)
  grid = (4, 5, 6)
  angles = rope.rope_angles(grid, head_dim)
  index = lambda t, h, w: (t * grid[1] + h) * grid[2] + w

  def score(a, b):  # query at position a, key at position b
    qa = rope.apply_rope(q, angles[index(*a)][None])
    kb = rope.apply_rope(k, angles[index(*b)][None])
    return float(jnp.sum(qa * kb))

  np.testing.assert_allclose(score((0, 1, 2), (1, 3, 2)), score((2, 2, 3), (3, 4, 3)), rtol=1e-4)
  np.testing.assert_allclose(score((1, 0, 0), (1, 0, 0)), float(np.sum(q * k)), rtol=1e-4)
  # Different offsets give different scores, on every axis.
  base = score((0, 0, 0), (1, 1, 1))
  for other in [(2, 1, 1), (1, 2, 1), (1, 1, 2)]:
    assert abs(score((0, 0, 0), other) - base) > 1e-3
  # A rotation keeps every vector's length.
  x = rng.standard_normal((2, angles.shape[0], 3, head_dim)).astype(np.float32)
  np.testing.assert_allclose(np.linalg.norm(rope.apply_rope(x, angles), axis=-1),
                             np.linalg.norm(x, axis=-1), rtol=1e-5)
  assert sum(rope.axis_split(head_dim)) == head_dim
  with pytest.raises(ValueError, match="head_dim=5"):
    rope.axis_split(5)


def test_dit_position_schemes_differ_and_bad_name_is_named(tiny_dit):
  x, t, ctx, mask = _dit_inputs((2, 4, 4))
  with_rope = tiny_dit.apply(tiny_dit.perturbed, x, t, ctx, mask)
  outputs = {"rope": with_rope}
  for scheme in ("sincos", "rope+sincos"):  # same parameters: positions add none
    outputs[scheme] = jax.jit(dit.get_dit("tiny", positions=scheme).apply)(
        tiny_dit.perturbed, x, t, ctx, mask)
  for a, b in (("rope", "sincos"), ("rope", "rope+sincos"), ("sincos", "rope+sincos")):
    assert np.abs(outputs[a] - outputs[b]).max() > 1e-4, (a, b)
  with pytest.raises(ValueError, match="valid: rope, sincos, rope\\+sincos"):
    dit.get_dit("tiny", positions="learned").apply(tiny_dit.params, x, t, ctx, mask)


# --- text -----------------------------------------------------------------------------------------


def test_tokenizer_contract():
  tok = text.WordTokenizer(["red", "circle", "moves", "left"], max_length=5)
  assert tok.vocab_size == 7
  ids, mask = tok.encode("A red circle, moves LEFT!")
  np.testing.assert_array_equal(ids, [text.BOS, text.UNK, 3, 4, 5])  # truncated to max_length
  assert ids.dtype == np.int32 and mask.dtype == np.bool_ and mask.all()
  again, _ = tok.encode("A red circle, moves LEFT!")
  np.testing.assert_array_equal(ids, again)
  empty_ids, empty_mask = tok.encode("")
  np.testing.assert_array_equal(empty_ids, [text.BOS, 0, 0, 0, 0])
  np.testing.assert_array_equal(empty_mask, [True, False, False, False, False])
  batch_ids, batch_mask = tok.encode_batch(["red", "left circle"])
  assert batch_ids.shape == batch_mask.shape == (2, 5)
  np.testing.assert_array_equal(batch_ids[1], [text.BOS, 6, 4, 0, 0])
  assert tok.decode(batch_ids[1]) == "left circle"


def test_text_encoder_shape_and_padding():
  tok = text.WordTokenizer(["red", "blue", "square"], max_length=6)
  ids, mask = tok.encode_batch(["red square", "blue"])
  model = text.TextEncoder(vocab_size=tok.vocab_size, hidden=16, depth=2, num_heads=2, max_length=6)
  params = jax.jit(model.init)(KEY, ids, mask)
  apply = jax.jit(model.apply)
  out = apply(params, ids, mask)
  assert out.shape == (2, 6, 16)
  np.testing.assert_array_equal(out[1, 2:], 0.0)
  # A padded position's id must not change the real tokens' embeddings.
  changed = ids.copy()
  changed[1, 4] = 3
  np.testing.assert_allclose(apply(params, changed, mask)[1, :2], out[1, :2], atol=1e-6)


# --- logical names --------------------------------------------------------------------------------


def test_every_parameter_has_logical_names():
  vae_vars = jax.eval_shape(vae.get_vae("tiny").init, KEY, jnp.zeros((1, 5, 16, 16, 3)))
  x, t, ctx, mask = _dit_inputs((1, 4, 4))
  dit_vars = jax.eval_shape(dit.get_dit("tiny").init, KEY, x, t, ctx, mask)
  encoder = text.TextEncoder(vocab_size=10, hidden=16, depth=1, num_heads=2, max_length=4)
  ids, tmask = jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), bool)
  text_vars = jax.eval_shape(encoder.init, KEY, ids, tmask)
  for variables in (vae_vars, dit_vars, text_vars):
    _assert_all_named(variables)


def test_large_variants_trace():
  """The accelerator-sized variants build and give the right shapes (traced only, nothing runs)."""
  base = vae.get_vae("base")
  variables = jax.eval_shape(base.init, KEY, jnp.zeros((1, 9, 64, 64, 3)))
  mean, _ = jax.eval_shape(
    lambda v: base.apply(v, jnp.zeros((1, 9, 64, 64, 3)), method="encode"), variables
  )
  assert mean.shape == (1, 3, 8, 8, 16)
  x, t, ctx, mask = _dit_inputs((3, 8, 8))
  model = dit.get_dit("S/2")
  variables = jax.eval_shape(model.init, KEY, x, t, ctx, mask)
  assert jax.eval_shape(model.apply, variables, x, t, ctx, mask).shape == x.shape
  _assert_all_named(variables)


def test_dit_sharded_matches_unsharded(tiny_dit):
  """Under a (data, fsdp, tensor) mesh with logical rules, constraints apply and results hold."""
  params = tiny_dit.perturbed
  x, t, ctx, mask = _dit_inputs((2, 4, 4))
  expected = tiny_dit.apply(params, x, t, ctx, mask)
  auto = (jax.sharding.AxisType.Auto,) * 3
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=auto)
  rules = (
    ("activation_batch", "data"),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
  )
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    specs = nn.logical_to_mesh(nn.get_partition_spec(params))
    shardings = jax.tree.map(
      lambda spec: jax.sharding.NamedSharding(mesh, spec),
      specs,
      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
    )
    sharded = jax.device_put(params, shardings)
    out = jax.jit(tiny_dit.model.apply)(sharded, x, t, ctx, mask)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_joint_text_attention_honours_the_mask_and_per_frame_times():
  model = dit.get_dit("tiny", text_attention="joint")
  x, t, ctx, mask = _dit_inputs((3, 4, 4))
  params = _perturb(jax.jit(model.init)(KEY, x, t, ctx, mask))
  apply = jax.jit(model.apply)
  base = apply(params, x, t, ctx, mask)
  assert base.shape == x.shape and "cross_attn" not in params["params"]["blocks"]
  padded_changed = ctx.copy()
  padded_changed[0, 4] += 5.0  # example 0 has 3 real tokens: pads are never keys
  np.testing.assert_allclose(apply(params, x, t, padded_changed, mask), base, atol=1e-6)
  real_changed = ctx.copy()
  real_changed[0, 1] += 5.0
  assert np.abs(apply(params, x, t, real_changed, mask)[0] - base[0]).max() > 1e-4
  # One time per frame, all equal, is the clip-level time (text tokens take the frames' mean).
  per_frame = np.repeat(t[:, None], 3, axis=1)
  np.testing.assert_allclose(apply(params, x, per_frame, ctx, mask), base, atol=1e-5)
  with pytest.raises(ValueError, match="valid: cross, joint"):
    dit.get_dit("tiny", text_attention="mixed").apply(params, x, t, ctx, mask)
