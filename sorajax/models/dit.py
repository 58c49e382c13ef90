"""Spacetime DiT: predicts the flow velocity of video latents under a timestep and a text prompt.

x (B, T, H, W, C) is cut into (pt, ph, pw) patches, each a token; all tokens of all frames attend
to each other (full spacetime self-attention), then cross-attend to the text tokens. Conditioning
on the timestep is adaLN-Zero (DiT): every block's modulation starts at zero so the block starts
as identity, and the final projection starts at zero so the untrained model predicts exactly zero
velocity.

The time may differ per latent frame (t of shape (B, T)): frames given as clean conditioning sit at
t=0 next to frames still being denoised, which is how one model animates an image or extends a
clip (as in Wan 2.2's and LTX-Video's frame conditioning).

With `anchor_frame`, the DiT also takes an *anchor*: one clean latent frame of the same video from
another time (a long rollout's first frame). Its tokens go before the clip's, at time 0 and with a
learned embedding that marks them, join every self-attention as keys and queries, and are dropped
before the output: the clip can look up what its objects look like without being told where they
are now. A per-example mask hides the anchor's keys, which is exactly the DiT without an anchor.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sorajax.models import layers, rope
from sorajax.models.factors import check_multiple

Dtype = layers.Dtype
POSITIONS = ("rope", "sincos", "rope+sincos")
TEXT_ATTENTION = ("cross", "joint")
_zeros = nn.initializers.zeros
# Remat policies by name: "none" keeps every activation; "full" keeps only each block's input;
# "dots" keeps matmul outputs and recomputes the elementwise ops between them; "dots_no_batch"
# keeps only the weight matmuls' outputs, so attention's (batched) logits are recomputed.
REMAT_POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.dots_saveable,
  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _sincos_1d(positions: np.ndarray, dim: int) -> np.ndarray:
  omega = 1.0 / 10_000 ** (np.arange(dim // 2, dtype=np.float64) / (dim // 2))
  angles = positions[:, None] * omega[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)


def sincos_3d(grid: tuple[int, int, int], dim: int) -> np.ndarray:
  """Fixed (gt*gh*gw, dim) position table, row-major over (t, h, w).

  Channels split into time | height | width, each with its own 1D sin-cos; width and height get
  2*(dim//6) channels each and time the rest. Built from integer positions for the grid actually
  seen, so one set of weights serves any grid size.
  """
  positions = (a.reshape(-1) for a in np.meshgrid(*(np.arange(n) for n in grid), indexing="ij"))
  table = [_sincos_1d(p, d) for p, d in zip(positions, rope.axis_split(dim, "hidden"))]
  return np.concatenate(table, axis=-1).astype(np.float32)


def patchify(x: jax.Array, patch: tuple[int, int, int]) -> jax.Array:
  """(B, T, H, W, C) -> (B, T/pt * H/ph * W/pw, pt*ph*pw*C), tokens row-major over (t, h, w)."""
  b, t, h, w, c = x.shape
  pt, ph, pw = patch
  x = x.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, (t // pt) * (h // ph) * (w // pw), pt * ph * pw * c)


def unpatchify(
  tokens: jax.Array, grid: tuple[int, int, int], patch: tuple[int, int, int]
) -> jax.Array:
  """Inverse of `patchify`: (B, N, pt*ph*pw*C) -> (B, T, H, W, C)."""
  b = tokens.shape[0]
  (gt, gh, gw), (pt, ph, pw) = grid, patch
  c = tokens.shape[-1] // (pt * ph * pw)
  x = tokens.reshape(b, gt, gh, gw, pt, ph, pw, c)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, gt * pt, gh * ph, gw * pw, c)


def _per_frame(params: jax.Array, num_tokens: int) -> jax.Array:
  """(B, F, D) per-frame values -> broadcastable against tokens (B, N, D), N = F * tokens/frame.

  F = 1 (one time for the whole clip) broadcasts as is; otherwise each frame's row is repeated over
  its tokens (row-major (t, h, w) order), a broadcast XLA fuses into the elementwise consumer.
  """
  b, f, d = params.shape
  if f == 1:
    return params
  return jnp.broadcast_to(params[:, :, None, :],
                          (b, f, num_tokens // f, d)).reshape(b, num_tokens, d)


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1.0 + scale) + shift


class DiTBlock(nn.Module):
  """adaLN-Zero block: modulated self-attention, cross-attention to text, modulated MLP.

  With `joint_text`, there is no cross-attention: the text tokens join the self-attention sequence
  and the MLP (one stream, as in SD3's MMDiT and Flux's single-stream blocks), so every attention
  layer can weigh words against video tokens; the block then returns (video, text).
  """

  hidden: int
  num_heads: int
  mlp_ratio: float = 4.0
  attention: str = "xla"
  joint_text: bool = False
  dtype: Dtype = jnp.float32
  context_parallel: str = "ulysses"
  # Leading rows of cond that belong to an anchor frame, left out of the text tokens' modulation.
  anchor_rows: int = 0

  @nn.compact
  def __call__(self, carry, cond, context, context_mask, rope_angles=None, token_mask=None):
    """One step of the block stack, shaped for `nn.scan`: returns (carry, None).

    carry is the video tokens (B, N, hidden), or the pair (video, text tokens) with `joint_text`;
    cond (B, F, hidden) is the time embedding for the whole clip (F=1) or per token frame;
    token_mask (B, N), if given, is False for video tokens no other token may attend to.
    """
    x = carry
    if self.joint_text:
      x, context = carry
    # One projection gives shift/scale/gate for both branches; zero init makes the block identity.
    # Its 6*hidden output dim is sharded like an MLP hidden dim.
    mod = layers.Dense(
      6 * self.hidden, ("embed", "mlp"), kernel_init=_zeros, dtype=self.dtype, name="modulation"
    )(nn.silu(cond))
    num_video = x.shape[1]
    key_mask = None if token_mask is None else token_mask[:, None, None, :]
    if self.joint_text:
      # Text tokens take the clip's mean modulation, sit at rotation angle 0, and pads are no keys.
      b, length = context.shape[:2]
      mod = jnp.concatenate([
          jnp.broadcast_to(_per_frame(mod, num_video), (b, num_video, mod.shape[-1])),
          jnp.broadcast_to(mod[:, self.anchor_rows:].mean(1, keepdims=True),
                           (b, length, mod.shape[-1]))], axis=1)
      x = jnp.concatenate([x, context], axis=1)
      if rope_angles is not None:
        rope_angles = jnp.concatenate(
            [rope_angles, jnp.zeros((length, rope_angles.shape[-1]), rope_angles.dtype)])
      video_keys = jnp.ones((b, num_video), bool) if token_mask is None else token_mask
      key_mask = jnp.concatenate([video_keys, context_mask], axis=1)[:, None, None, :]
    else:
      mod = _per_frame(mod, num_video)
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
    plain_norm = lambda name: layers.LayerNorm(  # adaLN supplies the affine part
      use_scale=False, use_bias=False, dtype=self.dtype, name=name
    )

    h = _modulate(plain_norm("norm1")(x), shift1, scale1)
    h = layers.Attention(
      self.num_heads, implementation=self.attention, context_parallel=self.context_parallel,
      dtype=self.dtype, name="self_attn"
    )(h, mask=key_mask, rope_angles=rope_angles)
    x = layers.constrain(x + gate1 * h, layers.TOKENS)

    if not self.joint_text:
      # Cross-attention is not timestep-modulated (as in PixArt); its zero-init output keeps
      # identity.
      h = layers.LayerNorm(dtype=self.dtype, name="norm_cross")(x)
      h = layers.Attention(
        self.num_heads,
        zero_out=True,
        implementation=self.attention,
        dtype=self.dtype,
        name="cross_attn",
      )(h, context, context_mask[:, None, None, :])
      x = layers.constrain(x + h, layers.TOKENS)

    h = _modulate(plain_norm("norm2")(x), shift2, scale2)
    h = layers.MLP(int(self.hidden * self.mlp_ratio), dtype=self.dtype, name="mlp")(h)
    x = layers.constrain(x + gate2 * h, layers.TOKENS)
    return ((x[:, :num_video], x[:, num_video:]) if self.joint_text else x), None


class DiT(nn.Module):
  """Diffusion transformer over spacetime patches; `__call__` returns the velocity (like x)."""

  hidden: int
  depth: int
  num_heads: int
  out_channels: int
  mlp_ratio: float = 4.0
  patch: tuple[int, int, int] = (1, 2, 2)
  attention: str = "xla"
  # "rope": 3D rotary in self-attention (relative positions only); "sincos": a fixed table added to
  # the patch embeddings (absolute positions); "rope+sincos": both, so attention sees offsets and
  # every token also knows where it is (which frame, how far from the edges).
  positions: str = "rope"
  # Also feed the mean of the text tokens into the adaLN conditioning, next to the time (as SD3 and
  # HunyuanVideo do with a pooled text vector): global attributes then modulate every block
  # directly.
  pooled_text: bool = False
  # "cross": video tokens cross-attend to the text in every block; "joint": text tokens join the
  # self-attention sequence instead (see DiTBlock).
  text_attention: str = "cross"
  # How self-attention splits tokens over the mesh's context axis when it has one: "ulysses" or
  # "ring" (parallel/context.py). Without a context axis it is plain attention.
  context_parallel: str = "ulysses"
  # What the backward pass keeps from the forward pass of each block (REMAT_POLICIES).
  remat: str = "none"
  # Blocks per iteration of the scan loop; 0 unrolls it fully (one long program, which XLA may
  # schedule better and whose cost analysis then counts every block).
  scan_unroll: int = 1
  # Takes an anchor frame (module docstring): adds the embedding that marks its tokens.
  anchor_frame: bool = False
  dtype: Dtype = jnp.float32

  def forward_flops(self, latent_shape: tuple[int, ...], text_length: int, text_width: int,
                    per_frame_times: bool = False, anchor: bool = False) -> int:
    """Matmul and attention FLOPs (2 per multiply-add) of one example's forward pass.

    latent_shape is (T, H, W, C). Elementwise work (norms, activations, softmax, rotary) is left
    out, as in the usual MFU accounting; a training step costs about 3x this (forward + backward).
    """
    pt, ph, pw = self.patch
    t, h, w, c = latent_shape
    n = (t // pt) * (h // ph) * (w // pw)  # video tokens
    d, m, length = self.hidden, int(self.hidden * self.mlp_ratio), text_length
    cond_rows = t // pt if per_frame_times else 1  # rows of time embedding that get projected
    if anchor:  # one more token frame, at its own time
      n, cond_rows = n + (h // ph) * (w // pw), t // pt + 1
    dense = lambda rows, fan_in, fan_out: 2 * rows * fan_in * fan_out
    if self.text_attention == "joint":
      s = n + length
      block = 4 * dense(s, d, d) + 2 * 2 * s * s * d + dense(s, d, m) + dense(s, m, d)
    else:
      block = (4 * dense(n, d, d) + 2 * 2 * n * n * d  # self-attention
               + 2 * dense(n, d, d) + 2 * dense(length, text_width, d)  # cross: q, out | k, v
               + 2 * 2 * n * length * d  # cross-attention scores and values
               + dense(n, d, m) + dense(n, m, d))
    block += dense(cond_rows, d, 6 * d)  # adaLN modulation
    total = self.depth * block
    total += dense(n, pt * ph * pw * c, d) + dense(n, d, pt * ph * pw * self.out_channels)
    total += dense(cond_rows, 256, d) + dense(cond_rows, d, d) + dense(cond_rows, d, 2 * d)
    if self.text_attention == "joint":
      total += dense(length, text_width, d)
    if self.pooled_text:
      total += dense(1, text_width, d) + dense(1, d, d)
    return int(total)

  def _block_stack(self) -> type[nn.Module]:
    """`depth` DiTBlocks as one `nn.scan`: each parameter gains a leading "layers" axis of size
    depth, and the block is traced and compiled once whatever the depth. Under remat the backward
    pass recomputes what the policy does not save, trading FLOPs for activation memory."""
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat={self.remat!r} is unknown; valid: {', '.join(REMAT_POLICIES)}")
    block = DiTBlock
    if self.remat != "none":
      # prevent_cse=False is safe under scan, whose loop already keeps XLA from merging the
      # recomputation with the forward pass.
      block = nn.remat(block, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
    return nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                   in_axes=(nn.broadcast,) * 5, length=self.depth,
                   unroll=self.scan_unroll or self.depth,
                   metadata_params={nn.PARTITION_NAME: "layers"})

  def _grid(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 5:
      raise ValueError(f"latent shape={shape} is not (B, T, H, W, C)")
    for name, size, p in zip(("frames", "height", "width"), shape[1:4], self.patch):
      check_multiple(name, size, p, what="latent")
    return tuple(size // p for size, p in zip(shape[1:4], self.patch))

  def _check_anchor(self, x, anchor, anchor_mask) -> None:
    if not self.anchor_frame:
      raise ValueError("this DiT takes no anchor frame; build it with anchor_frame=True "
                       "(flow.anchor > 0)")
    if self.patch[0] != 1:
      raise ValueError(f"an anchor frame needs temporal patch 1, not {self.patch[0]}")
    if anchor.shape != (x.shape[0], 1) + x.shape[2:]:
      raise ValueError(f"anchor shape={anchor.shape} must be one latent frame "
                       f"{(x.shape[0], 1) + x.shape[2:]}")
    if anchor_mask is not None and anchor_mask.shape != x.shape[:1]:
      raise ValueError(f"anchor_mask shape={anchor_mask.shape} must be (batch,)={x.shape[:1]}")

  @nn.compact
  def __call__(self, x, t, context, context_mask, anchor=None, anchor_mask=None):
    """Velocity (B, T, H, W, out_channels) for latents x (B, T, H, W, C) at times t in [0, 1].

    t is (B,) for one time per clip or (B, T) per latent frame; with a temporal patch pt > 1 a
    token takes the time of the first frame it covers. context (B, L, D) holds text embeddings;
    context_mask (B, L) is True for real tokens. anchor (B, 1, H, W, C), with `anchor_frame`, is a
    clean latent frame of the same video at another time; anchor_mask (B,) False where an example
    has none (None: every example has one).
    """
    grid = self._grid(x.shape)
    if t.shape not in (x.shape[:1], x.shape[:2]):
      raise ValueError(f"t shape={t.shape} must be (batch,)={x.shape[:1]} or "
                       f"(batch, frames)={x.shape[:2]}")
    if anchor is not None:
      self._check_anchor(x, anchor, anchor_mask)
      t = jnp.broadcast_to(t[:, None] if t.ndim == 1 else t, x.shape[:2])
      t = jnp.concatenate([jnp.zeros_like(t[:, :1]), t], axis=1)  # the anchor is clean
    t = t[:, None] if t.ndim == 1 else t[:, :: self.patch[0]]  # (B, 1) or (B, token frames)
    if context_mask.shape != context.shape[:2]:
      raise ValueError(
        f"context_mask shape={context_mask.shape} must equal context[:2]={context.shape[:2]}"
      )
    embed = layers.Dense(self.hidden, (None, "embed"), dtype=self.dtype, name="patch_embed")
    h = embed(patchify(x.astype(self.dtype), self.patch))
    if self.positions not in POSITIONS:
      raise ValueError(f"positions={self.positions!r} is unknown; valid: {', '.join(POSITIONS)}")
    rope_angles = None
    if "rope" in self.positions.split("+"):
      rope_angles = jnp.asarray(rope.rope_angles(grid, self.hidden // self.num_heads))
    table = None
    if "sincos" in self.positions.split("+"):
      table = jnp.asarray(sincos_3d(grid, self.hidden), self.dtype)
      h = h + table
    mark = None
    if self.anchor_frame:
      mark = self.param("anchor_embed", nn.with_logical_partitioning(
          nn.initializers.normal(0.02), ("embed",)), (self.hidden,), jnp.float32)
    num_anchor, token_mask = 0, None
    if anchor is not None:
      # The anchor sits at time 0 at its own place in the frame, told apart by its embedding.
      num_anchor = grid[1] * grid[2]
      a = embed(patchify(anchor.astype(self.dtype), self.patch)) + mark.astype(self.dtype)
      if table is not None:
        a = a + table[:num_anchor]
      h = jnp.concatenate([a, h], axis=1)
      if rope_angles is not None:
        rope_angles = jnp.concatenate([rope_angles[:num_anchor], rope_angles])
      if anchor_mask is not None:
        token_mask = jnp.concatenate([
            jnp.broadcast_to(anchor_mask.astype(bool)[:, None], (x.shape[0], num_anchor)),
            jnp.ones((x.shape[0], h.shape[1] - num_anchor), bool)], axis=1)
    h = layers.constrain(h, layers.TOKENS)
    cond = layers.TimestepEmbedder(self.hidden, dtype=self.dtype, name="t_embed")(t)
    context = context.astype(self.dtype)
    context_mask = context_mask.astype(bool)
    if self.pooled_text:
      weights = context_mask.astype(self.dtype)[:, :, None]
      pooled = (context * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
      pooled = layers.Dense(self.hidden, (None, "mlp"), dtype=self.dtype,
                            name="text_pool_fc1")(pooled)
      pooled = layers.Dense(self.hidden, ("mlp", "embed"), dtype=self.dtype,
                            name="text_pool_fc2")(nn.silu(pooled))
      cond = cond + pooled[:, None, :]
    if self.text_attention not in TEXT_ATTENTION:
      raise ValueError(f"text_attention={self.text_attention!r} is unknown; valid: "
                       f"{', '.join(TEXT_ATTENTION)}")
    joint = self.text_attention == "joint"
    text = None
    if joint:  # the text stream, in the DiT's width
      text = layers.Dense(self.hidden, (None, "embed"), dtype=self.dtype,
                          name="text_embed")(context)
    carry, context = ((h, text), None) if joint else (h, context)
    carry, _ = self._block_stack()(self.hidden, self.num_heads, self.mlp_ratio, self.attention,
                                   joint, self.dtype, self.context_parallel, int(num_anchor > 0),
                                   name="blocks")(
        carry, cond, context, context_mask, rope_angles, token_mask)
    h = carry[0] if joint else carry
    if num_anchor:  # only the clip's tokens are read out
      h, cond = h[:, num_anchor:], cond[:, 1:]
    # Final adaLN layer and zero-initialised projection back to patches.
    mod = layers.Dense(
      2 * self.hidden,
      ("embed", "mlp"),
      kernel_init=_zeros,
      dtype=self.dtype,
      name="final_modulation",
    )(nn.silu(cond))
    shift, scale = jnp.split(_per_frame(mod, h.shape[1]), 2, axis=-1)
    h = layers.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name="final_norm")(h)
    out = layers.Dense(
      int(np.prod(self.patch)) * self.out_channels,
      ("embed", None),
      kernel_init=_zeros,
      dtype=self.dtype,
      name="final_proj",
    )(_modulate(h, shift, scale))
    return unpatchify(out, grid, self.patch).astype(jnp.float32)


VARIANTS: dict[str, dict] = {
  "tiny": dict(hidden=32, depth=2, num_heads=2),  # unit tests
  "demo": dict(hidden=128, depth=4, num_heads=4),  # the CPU shapes demo
  # Twice the demo's depth: at the demo's 2400 steps it keeps as many windows of a minute-long
  # rollout as the demo DiT does at 4800, for 1.5x the step time (bench/RESULTS.md, issue 5).
  "demo8": dict(hidden=128, depth=8, num_heads=4),
  # The DiT paper's sizes (Peebles & Xie, 2023), with patch (1, 2, 2).
  "S/2": dict(hidden=384, depth=12, num_heads=6),
  "B/2": dict(hidden=768, depth=12, num_heads=12),
  "L/2": dict(hidden=1024, depth=24, num_heads=16),
  "XL/2": dict(hidden=1152, depth=28, num_heads=16),
}
_DEFAULTS = dict(out_channels=4, patch=(1, 2, 2))


def get_dit(variant: str, **overrides) -> DiT:
  """Build a DiT from a named variant; keyword overrides replace fields (e.g. out_channels=16)."""
  if variant not in VARIANTS:
    raise ValueError(f"DiT variant={variant!r} is unknown; valid: {', '.join(VARIANTS)}")
  fields = {f.name for f in dataclasses.fields(DiT)} - {"parent", "name"}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"DiT override {unknown[0]!r} is unknown; valid: {', '.join(sorted(fields))}")
  return DiT(**{**_DEFAULTS, **VARIANTS[variant], **overrides})
