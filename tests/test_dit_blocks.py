"""The DiT's block stack: adaLN-Zero identity at init, nn.scan against a plain loop, remat
policies."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sorajax.models import dit, rope
from test_models import _dit_inputs

KEY = jax.random.key(0, impl="rbg")


def _perturb(params, scale=0.1, seed=1):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: x + scale * rng.standard_normal(x.shape).astype(x.dtype), params)


@pytest.mark.parametrize("joint", [False, True])
def test_adaln_zero_block_is_the_identity_at_init(joint):
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.standard_normal((2, 12, 32)), jnp.float32)
  cond = jnp.asarray(rng.standard_normal((2, 3, 32)), jnp.float32)  # one time per token frame
  context = jnp.asarray(rng.standard_normal((2, 5, 32)), jnp.float32)
  mask = jnp.asarray(np.arange(5)[None] < np.array([[2], [5]]))
  angles = jnp.asarray(rope.rope_angles((3, 2, 2), 16))
  block = dit.DiTBlock(32, 2, joint_text=joint)
  carry = (tokens, context) if joint else tokens
  variables = block.init(KEY, carry, cond, None if joint else context, mask, angles)
  out, _ = block.apply(variables, carry, cond, None if joint else context, mask, angles)
  for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(carry)):
    np.testing.assert_array_equal(got, want)
  # Perturbed, the block does something: the test above could fail.
  out, _ = block.apply(_perturb(variables), carry, cond, None if joint else context, mask, angles)
  assert np.abs(jax.tree.leaves(out)[0] - tokens).max() > 1e-3


@pytest.mark.parametrize("text_attention", ["cross", "joint"])
def test_scanned_blocks_equal_a_loop_over_the_stacked_parameters(text_attention):
  model = dit.get_dit("tiny", depth=3, text_attention=text_attention)
  x, t, ctx, mask = _dit_inputs((2, 4, 4))
  params = _perturb(model.init(KEY, x, t, ctx, mask))
  stacked = params["params"]["blocks"]
  assert {leaf.shape[0] for leaf in jax.tree.leaves(stacked)} == {3}
  seen = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    name = context.module.name
    if name in ("patch_embed", "text_embed"):  # the stack's initial carry
      seen[name] = out
    elif name == "final_norm":  # its input is the stack's final video tokens
      seen["final"] = args[0]
    elif context.method_name == "__call__" and isinstance(context.module, dit.DiTBlock) \
        and "rest" not in seen:
      seen["rest"] = args[1:]  # cond, context, mask, angles: broadcast, so concrete in the scan
    return out

  with nn.intercept_methods(record):
    model.apply(params, x, t, ctx, mask)
  joint = text_attention == "joint"
  carry = (seen["patch_embed"], seen["text_embed"]) if joint else seen["patch_embed"]
  block = dit.DiTBlock(model.hidden, model.num_heads, joint_text=joint)
  for i in range(model.depth):
    layer = jax.tree.map(lambda a, i=i: a[i], stacked)
    carry, _ = block.apply({"params": layer}, carry, *seen["rest"])
  np.testing.assert_allclose(seen["final"], carry[0] if joint else carry, atol=1e-5)


def test_every_remat_policy_gives_the_same_gradients():
  x, t, ctx, mask = _dit_inputs((2, 4, 4))
  base = dit.get_dit("tiny")
  params = _perturb(base.init(KEY, x, t, ctx, mask))

  def grads(remat):
    model = dit.get_dit("tiny", remat=remat)
    loss = lambda p: jnp.mean(jnp.square(model.apply(p, x, t, ctx, mask) - x))
    return jax.jit(jax.grad(loss))(params), jax.make_jaxpr(jax.grad(loss))(params)

  expected, plain = grads("none")
  assert "remat" not in str(plain) and "checkpoint" not in str(plain)
  for policy in ("full", "dots", "dots_no_batch"):
    got, jaxpr = grads(policy)
    assert "remat" in str(jaxpr) or "checkpoint" in str(jaxpr), policy
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, expected)
  with pytest.raises(ValueError, match="valid: none, full, dots"):
    dit.get_dit("tiny", remat="some").init(KEY, x, t, ctx, mask)


@pytest.mark.parametrize("kw,per_frame", [({}, False), ({"text_attention": "joint"}, False),
                                          ({"pooled_text": True}, True),
                                          ({"anchor_frame": True}, True)])
def test_analytic_flops_match_xla_cost_analysis(kw, per_frame):
  """Matmuls and attention are nearly all of XLA's count; the rest is elementwise work."""
  model = dit.get_dit("demo", patch=(1, 1, 1), out_channels=16, **kw)
  model = model.clone(scan_unroll=model.depth)  # a loop body is counted once, so unroll it
  batch, grid, length = 2, (3, 4, 4), 24
  x, t = jnp.zeros((batch, *grid, 16)), jnp.zeros((batch, 3) if per_frame else (batch,))
  ctx, mask = jnp.zeros((batch, length, 128)), jnp.ones((batch, length), bool)
  anchor = (jnp.zeros((batch, 1, *grid[1:], 16)),) if model.anchor_frame else ()
  params = jax.eval_shape(model.init, KEY, x, t, ctx, mask)
  cost = jax.jit(model.apply).lower(params, x, t, ctx, mask, *anchor).cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  analytic = batch * model.forward_flops((*grid, 16), length, 128, per_frame_times=per_frame,
                                         anchor=model.anchor_frame)
  assert 0.95 <= analytic / cost["flops"] <= 1.0, analytic / cost["flops"]


@pytest.mark.parametrize("patch", [(1, 1, 1), (1, 2, 2), (2, 2, 2)])
def test_patchify_round_trip_and_token_order(patch):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 6, 8, 3)), jnp.float32)
  tokens = dit.patchify(x, patch)
  grid = (4 // patch[0], 6 // patch[1], 8 // patch[2])
  assert tokens.shape == (2, int(np.prod(grid)), int(np.prod(patch)) * 3)
  np.testing.assert_array_equal(dit.unpatchify(tokens, grid, patch), x)
  # Token (t, h, w) sits at row-major index t*gh*gw + h*gw + w (rope's and sincos' order) and holds
  # exactly that patch's values.
  t, h, w = grid[0] - 1, 1, grid[2] - 1
  index = (t * grid[1] + h) * grid[2] + w
  pt, ph, pw = patch
  block = x[:, t * pt:(t + 1) * pt, h * ph:(h + 1) * ph, w * pw:(w + 1) * pw]
  np.testing.assert_array_equal(tokens[:, index], block.reshape(2, -1))


@pytest.mark.parametrize("text_attention,positions", [("cross", "rope"), ("joint", "rope+sincos")])
def test_a_hidden_anchor_frame_is_exactly_no_anchor(text_attention, positions):
  """An example whose anchor is masked gets the velocity of the DiT without one (its keys are
  hidden and its tokens are read out by no one); a shown anchor changes the velocity."""
  model = dit.get_dit("tiny", anchor_frame=True, text_attention=text_attention,
                      positions=positions)
  x, t, ctx, mask = _dit_inputs((3, 4, 4))
  anchor = np.random.default_rng(5).standard_normal((2, 1, 4, 4, 4)).astype(np.float32)
  params = _perturb(model.init(KEY, x, t, ctx, mask))
  assert nn.unbox(params)["params"]["anchor_embed"].shape == (model.hidden,)
  plain = model.apply(params, x, t, ctx, mask)
  hidden = model.apply(params, x, t, ctx, mask, anchor, jnp.array([False, False]))
  np.testing.assert_allclose(hidden, plain, atol=1e-5)
  half = model.apply(params, x, t, ctx, mask, anchor, jnp.array([False, True]))
  shown = model.apply(params, x, t, ctx, mask, anchor)
  np.testing.assert_allclose(half[0], plain[0], atol=1e-5)
  np.testing.assert_allclose(half[1], shown[1], atol=1e-5)
  assert np.abs(shown[1] - plain[1]).max() > 1e-2
  # Per-frame times: the anchor's own time is 0, the clip's are as given.
  frame_t = np.broadcast_to(t[:, None], x.shape[:2])
  np.testing.assert_allclose(model.apply(params, x, frame_t, ctx, mask, anchor), shown, atol=1e-5)


def test_anchor_frame_errors():
  x, t, ctx, mask = _dit_inputs((3, 4, 4))
  anchor = np.zeros((2, 1, 4, 4, 4), np.float32)
  plain = dit.get_dit("tiny")
  params = plain.init(KEY, x, t, ctx, mask)
  with pytest.raises(ValueError, match="takes no anchor frame; build it with anchor_frame=True"):
    plain.apply(params, x, t, ctx, mask, anchor)
  model = dit.get_dit("tiny", anchor_frame=True)
  params = model.init(KEY, x, t, ctx, mask)
  with pytest.raises(ValueError, match="must be one latent frame"):
    model.apply(params, x, t, ctx, mask, np.zeros((2, 2, 4, 4, 4), np.float32))
  with pytest.raises(ValueError, match=r"anchor_mask shape=\(1,\) must be \(batch,\)"):
    model.apply(params, x, t, ctx, mask, anchor, np.ones((1,), bool))
