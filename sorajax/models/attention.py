"""The one attention dispatch point: every model calls `attend`, the config picks the kernel.

Shapes follow `jax.nn.dot_product_attention`: q (B, Lq, heads, head_dim), k and v
(B, Lk, heads, head_dim). `mask` is boolean, True where a query may attend to a key, and
broadcastable to (B, heads, Lq, Lk); a key padding mask of shape (B, Lk) is passed as
`mask[:, None, None, :]`.

Implementations: "xla" (plain einsum softmax, the reference); "cudnn" (fused, NVIDIA GPUs);
"blockwise" (online softmax over key blocks in plain JAX, memory linear in sequence length, any
backend); "splash" (Pallas splash attention, TPU; key-padding masks only).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sorajax.parallel import mesh as mesh_lib


def _xla(q, k, v, mask):
  """Plain einsum softmax; logits, softmax and both matmul accumulations in float32."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    # A finite minimum (not -inf) keeps a fully masked row finite instead of NaN.
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  # Softmax normalised after the value matmul: the division touches (Lq, head_dim) per head
  # instead of (Lq, Lk), one pass less over the logits forward and backward.
  weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  total = jnp.einsum("bhqk->bqh", weights)[..., None]
  return (out / total).astype(q.dtype)


def _cudnn(q, k, v, mask):
  """cuDNN fused attention (flash-style); needs an NVIDIA GPU and float16/bfloat16 inputs."""
  if mask is not None:
    mask = jnp.broadcast_to(mask, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]))
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


# Keys per block of the blockwise path: its logits take Lq x this per head instead of Lq x Lk.
BLOCKWISE_KEYS = 512


def _block_logits(q, k_block, mask_block, real_block):
  """Scaled float32 logits (B, heads, Lq, keys) of one key block; masked keys get the float32
  minimum (as in `_xla`) and padding keys -inf, so padding never counts, even in a masked row."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k_block, preferred_element_type=jnp.float32)
  logits = logits * q.shape[-1] ** -0.5
  if mask_block is not None:
    logits = jnp.where(mask_block, logits, jnp.finfo(jnp.float32).min)
  return jnp.where(real_block, logits, -jnp.inf)


def key_blocks(k, v, mask, block: int):
  """Splits keys into blocks of `block` for the online softmax: (k, v, mask, real) blocks stacked
  on a leading axis. The last block is padded; `real` marks real keys. `mask`, if given, is
  broadcastable to (B, heads, Lq, Lk) and comes back as (blocks, B|1, heads|1, Lq|1, block)."""
  b, lk, h, d = k.shape
  block = min(block, lk)
  num_blocks = -(-lk // block)
  pad = num_blocks * block - lk
  if pad:
    k, v = (jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0))) for a in (k, v))
  k_blocks, v_blocks = (jnp.moveaxis(a.reshape(b, num_blocks, block, h, d), 1, 0) for a in (k, v))
  real_blocks = jnp.asarray(np.arange(num_blocks * block).reshape(num_blocks, block) < lk)
  mask_blocks = None
  if mask is not None:
    mask = jnp.asarray(mask, bool)
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)  # size-1 dims stay size 1
    mask = jnp.broadcast_to(mask, mask.shape[:3] + (lk,))
    mask = jnp.pad(mask, ((0, 0),) * 3 + ((0, pad),), constant_values=True)
    mask_blocks = jnp.moveaxis(mask.reshape(mask.shape[:3] + (num_blocks, block)), -2, 0)
  return k_blocks, v_blocks, mask_blocks, real_blocks


def unblock(blocks):
  """(blocks, B, block, heads, d) -> (B, blocks * block, heads, d); the inverse of `key_blocks`
  up to the padding, which the caller slices off."""
  n, b, block, h, d = blocks.shape
  return jnp.moveaxis(blocks, 0, 1).reshape(b, n * block, h, d)


def softmax_start(q):
  """The online softmax's empty state for queries q (B, Lq, heads, d): running maximum logit m and
  denominator l, (B, heads, Lq) each, and the unnormalised output (B, Lq, heads, d), all float32."""
  b, lq, h, d = q.shape
  return (jnp.full((b, h, lq), jnp.finfo(jnp.float32).min), jnp.zeros((b, h, lq)),
          jnp.zeros((b, lq, h, d)))


def merge_key_blocks(q, state, blocks):
  """Flash attention's forward pass over `key_blocks`, one block at a time, into `state`."""

  def step(carry, block):
    m, l, acc = carry
    k_block, v_block, mask_block, real_block = block
    logits = _block_logits(q, k_block, mask_block, real_block)
    m_new = jnp.maximum(m, logits.max(-1))
    correction = jnp.exp(m - m_new)
    probs = jnp.exp(logits - m_new[..., None])
    l = l * correction + probs.sum(-1)
    acc = acc * correction.transpose(0, 2, 1)[..., None] + jnp.einsum(
        "bhqk,bkhd->bqhd", probs.astype(v_block.dtype), v_block,
        preferred_element_type=jnp.float32)
    return (m_new, l, acc), None

  return jax.lax.scan(step, state, blocks)[0]


def softmax_finish(q, state):
  m, l, acc = state
  return (acc / l.transpose(0, 2, 1)[..., None]).astype(q.dtype)


def key_block_gradients(q, out, d_out, m, l, blocks):
  """The backward pass over `key_blocks`: recomputes each block's probabilities from the softmax
  statistics m and l of the whole key set, so it too holds one block of logits at a time.
  Returns dq (float32, this key set's share) and dk, dv blocks (float32)."""
  scale = q.shape[-1] ** -0.5
  d_out32 = d_out.astype(jnp.float32)
  # sum_k p * dp, per query and head: the softmax Jacobian's correction term.
  delta = jnp.einsum("bqhd,bqhd->bhq", d_out32, out.astype(jnp.float32))

  def step(dq, block):
    k_block, v_block, mask_block, real_block = block
    logits = _block_logits(q, k_block, mask_block, real_block)
    probs = jnp.exp(logits - m[..., None]) / l[..., None]
    dv = jnp.einsum("bhqk,bqhd->bkhd", probs, d_out32)
    dp = jnp.einsum("bqhd,bkhd->bhqk", d_out32, v_block, preferred_element_type=jnp.float32)
    d_logits = probs * (dp - delta[..., None]) * scale
    if mask_block is not None:  # a masked key's logit is a constant: no gradient flows through it
      d_logits = jnp.where(mask_block, d_logits, 0.0)
    dq = dq + jnp.einsum("bhqk,bkhd->bqhd", d_logits, k_block, preferred_element_type=jnp.float32)
    dk = jnp.einsum("bhqk,bqhd->bkhd", d_logits, q, preferred_element_type=jnp.float32)
    return dq, (dk, dv)

  return jax.lax.scan(step, jnp.zeros(q.shape, jnp.float32), blocks)


@jax.custom_vjp
def _online_softmax(q, blocks):
  return _online_softmax_forward(q, blocks)[0]


def _online_softmax_forward(q, blocks):
  m, l, acc = merge_key_blocks(q, softmax_start(q), blocks)
  out = softmax_finish(q, (m, l, acc))
  # m and l, (B, heads, Lq) each, are all the backward pass needs of the softmax. Kept apart, not
  # as m + log(l): in a fully masked row m is the float32 minimum, which would swallow log(l).
  return out, (q, blocks, out, m, l)


def _online_softmax_backward(residuals, d_out):
  q, blocks, out, m, l = residuals
  dq, (dk, dv) = key_block_gradients(q, out, d_out, m, l, blocks)
  k_blocks, v_blocks = blocks[:2]
  no_grad = jax.tree.map(lambda _: None, blocks[2:])
  return dq.astype(q.dtype), (dk.astype(k_blocks.dtype), dv.astype(v_blocks.dtype), *no_grad)


_online_softmax.defvjp(_online_softmax_forward, _online_softmax_backward)


def _blockwise(q, k, v, mask, block: int = BLOCKWISE_KEYS):
  """Exact attention in key blocks (online softmax, custom backward): activation memory grows
  linearly with sequence length on any backend; the result equals `_xla` up to rounding."""
  return _online_softmax(q, key_blocks(k, v, mask, block))


def _splash_kernel(heads: int, q_len: int, kv_len: int, block: int, interpret: bool):
  # Built inside the trace (its mask tables become traced constants), so not cached across calls.
  # Imported here: the Pallas TPU modules are only needed where splash attention runs.
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # pylint: disable=import-outside-toplevel
      splash_attention_kernel as kernel, splash_attention_mask as mask_lib)
  full = mask_lib.MultiHeadMask([mask_lib.FullMask((q_len, kv_len))] * heads)
  sizes = kernel.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                            block_q_dq=block, block_kv_dq=block)
  return kernel.make_splash_mha(full, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                interpret=interpret), kernel.SegmentIds


def splash(q, k, v, mask=None, interpret: bool = False):
  """Pallas splash attention (TPU), batched over examples; `interpret` runs it anywhere, slowly.

  The mask may only be a key-padding mask (B, 1, 1, Lk): it becomes segment ids, pads and masked
  keys in segment 1 and queries in segment 0. Lengths are padded to a multiple of the kernel's
  block. A row whose keys are all masked has no defined result here (the DiT never makes one).
  """
  b, lq, h, d = q.shape
  lk = k.shape[1]
  if mask is not None and (mask.ndim != 4 or mask.shape[1:3] != (1, 1)):
    raise ValueError(f"splash attention takes a key-padding mask (B, 1, 1, Lk), not {mask.shape}; "
                     "use implementation='blockwise' for other masks")
  round_up = lambda n, m: -(-n // m) * m
  block = min(512, round_up(max(lq, lk), 128))
  q_pad, kv_pad = round_up(lq, block) - lq, round_up(lk, block) - lk
  keys_real = jnp.broadcast_to(jnp.arange(lk + kv_pad) < lk, (b, lk + kv_pad))
  if mask is not None:
    keys_real = keys_real & jnp.pad(jnp.broadcast_to(mask[:, 0, 0, :], (b, lk)),
                                    ((0, 0), (0, kv_pad)))
  heads_major = lambda a, pad: jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  qh = heads_major(q * d ** -0.5, q_pad)  # the kernel does not scale the logits
  kh, vh = heads_major(k, kv_pad), heads_major(v, kv_pad)
  run, segment_ids = _splash_kernel(h, lq + q_pad, lk + kv_pad, block, interpret)
  q_segments = jnp.zeros((lq + q_pad,), jnp.int32)
  out = jax.vmap(lambda q1, k1, v1, real: run(
      q1, k1, v1, segment_ids=segment_ids(q=q_segments, kv=(~real).astype(jnp.int32))))(
          qh, kh, vh, keys_real)
  return out.transpose(0, 2, 1, 3)[:, :lq].astype(q.dtype)


def _target_platform() -> str:
  """The platform the program is for: the current mesh's devices (an ahead-of-time compile may
  target a TPU topology from a CPU host), else the default backend."""
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def _splash_on_tpu(q, k, v, mask):
  if _target_platform() != "tpu":
    raise ValueError(f"attention implementation='splash' needs a TPU (this program is for "
                     f"{_target_platform()}); use 'blockwise' or 'xla' here")
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1 or mesh.are_all_axes_manual:  # one device, or in a shard_map
    return splash(q, k, v, mask)
  # XLA cannot partition a Pallas kernel: each device runs it on its own examples and heads.
  return mesh_lib.per_device(splash, mesh, q, k, v, mask)


_IMPLEMENTATIONS: dict[str, Callable] = {
  "xla": _xla, "cudnn": _cudnn, "blockwise": _blockwise, "splash": _splash_on_tpu}


def implementations() -> tuple[str, ...]:
  """Names accepted by `attend`, for config validation and error messages."""
  return tuple(sorted(_IMPLEMENTATIONS))


def attend(q, k, v, mask=None, implementation: str = "xla"):
  """Scaled dot-product attention over (B, L, heads, head_dim); returns q's shape and dtype."""
  fn = _IMPLEMENTATIONS.get(implementation)
  if fn is None:
    valid = ", ".join(implementations())
    raise ValueError(f"attention implementation={implementation!r} is unknown; valid: {valid}")
  return fn(q, k, v, mask)
