"""Context (sequence) parallel self-attention: the tokens of one example split over a mesh axis.

A 720p clip is 30k-120k tokens; activations that long do not fit on one chip, so the sequence is
split over the mesh's context axis (the axis `activation_length` maps to) and attention, the one
layer that mixes tokens, exchanges them:

- "ulysses" (DeepSpeed-Ulysses): two all-to-alls turn a sequence shard of every head into the whole
  sequence of a share of the heads, attention runs locally with any kernel (`attention.attend`),
  and two more turn it back. Moves 4 activations per layer; needs heads divisible by the context
  size (after tensor parallelism).
- "ring" (ring attention): queries stay; key/value shards travel round the ring (ppermute) and
  each device folds every shard into an online softmax, so no device ever holds more than its own
  keys plus one shard in flight. Any head count; the backward pass sends the key/value shards
  round again with their gradients (a custom VJP), holding one block of logits at a time.

Both run inside `shard_map` over the whole mesh: batch over the axes `activation_batch` maps to,
heads over `activation_heads`, tokens over `activation_length`. Key-padding masks (B, 1, 1, Lk)
travel with the keys; other masks are refused.
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sorajax.models import attention
from sorajax.parallel import mesh as mesh_lib

STRATEGIES = ("ulysses", "ring")


def context_size() -> int:
  """Devices the sequence is split over in the current mesh (1 outside a mesh or without rules)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return 1
  return math.prod(mesh.shape[a] for a in mesh_lib.mesh_axes("activation_length"))


def check_mesh_split(mesh, rules, num_tokens: int, num_heads: int, strategy: str) -> None:
  """`check_split` for a mesh and logical rules ahead of tracing (only the strategy's name is
  checked without a context axis)."""
  _check_strategy(strategy)
  with nn.logical_axis_rules(rules):
    context = math.prod(mesh.shape[a] for a in mesh_lib.mesh_axes("activation_length"))
    tensor = math.prod(mesh.shape[a] for a in mesh_lib.mesh_axes("activation_heads"))
  _check_heads(num_heads, tensor)
  if context > 1:
    check_split(num_tokens, num_heads, strategy, context, tensor)


def _check_strategy(strategy: str) -> None:
  if strategy not in STRATEGIES:
    raise ValueError(f"context_parallel={strategy!r} is unknown; valid: {', '.join(STRATEGIES)}")


def _check_heads(num_heads: int, tensor: int) -> None:
  if num_heads % tensor:
    fits = max(t for t in range(1, tensor + 1) if num_heads % t == 0)
    raise ValueError(f"num_heads={num_heads} does not split over tensor={tensor}; use a tensor "
                     f"size that divides it (e.g. {fits})")


def check_split(num_tokens: int, num_heads: int, strategy: str, context: int, tensor: int) -> None:
  """One-line ValueErrors, each naming a valid alternative, for shapes a strategy cannot split."""
  _check_strategy(strategy)
  if num_tokens % context:
    fits = [c for c in range(context, 0, -1) if num_tokens % c == 0][0]
    raise ValueError(f"a sequence of {num_tokens} tokens does not split over context={context}; "
                     f"use a context size that divides it (e.g. {fits}) or another clip size")
  _check_heads(num_heads, tensor)
  if strategy == "ulysses" and (num_heads // tensor) % context:
    raise ValueError(f"ulysses attention needs the {num_heads // tensor} heads per tensor shard "
                     f"to split over context={context}; use context_parallel='ring' or a context "
                     "size that divides them")


def attend(q, k, v, mask=None, *, strategy: str, implementation: str = "xla"):
  """Self-attention over (B, L, heads, head_dim) with L split over the context axis.

  Falls back to `attention.attend` when the current mesh does not split the sequence. `mask` may
  be None or a key-padding mask (B, 1, 1, L). `implementation` is the local kernel of "ulysses";
  "ring" folds key shards with its own online softmax.
  """
  context = context_size()
  if context == 1:
    return attention.attend(q, k, v, mask, implementation=implementation)
  if mask is not None and (mask.ndim != 4 or mask.shape[1:3] != (1, 1)):
    raise ValueError(f"context-parallel attention takes a key-padding mask (B, 1, 1, L), not "
                     f"{mask.shape}; pass one, or leave the context axis out of the mesh")
  mesh = jax.sharding.get_abstract_mesh()
  length_axes = mesh_lib.mesh_axes("activation_length")
  if len(length_axes) != 1:
    raise ValueError(f"context-parallel attention splits tokens over one mesh axis; the rules map "
                     f"activation_length to {length_axes}: map it to one (e.g. 'context')")
  (length_axis,) = length_axes
  tensor = math.prod(mesh.shape[a] for a in mesh_lib.mesh_axes("activation_heads"))
  check_split(q.shape[1], q.shape[2], strategy, context, tensor)
  local = functools.partial(_ulysses if strategy == "ulysses" else _ring, axis=length_axis,
                            size=context, implementation=implementation)
  return mesh_lib.per_device(local, mesh, q, k, v, mask, tokens_axis=length_axis)


def _ulysses(q, k, v, mask, *, axis: str, size: int, implementation: str):
  del size
  # Sequence shard of all local heads -> whole sequence of 1/size of them, and back.
  to_heads = lambda a: jax.lax.all_to_all(a, axis, split_axis=2, concat_axis=1, tiled=True)
  if mask is not None:
    mask = jax.lax.all_gather(mask, axis, axis=3, tiled=True)
  out = attention.attend(to_heads(q), to_heads(k), to_heads(v), mask, implementation=implementation)
  return jax.lax.all_to_all(out, axis, split_axis=1, concat_axis=2, tiled=True)


def _ring(q, k, v, mask, *, axis: str, size: int, implementation: str):
  del implementation
  real = jnp.ones(k.shape[:2], bool) if mask is None else mask[:, 0, 0, :]
  return _ring_attention(q, k, v, real, axis, size)


def _rotate(tree, axis: str, size: int):
  """Each device passes its shards to the next one round the ring."""
  return jax.lax.ppermute(tree, axis, [(i, (i + 1) % size) for i in range(size)])


def _shard_blocks(k, v, real):
  """A travelling key shard as `attention.key_blocks`; `real` (B, Lk) marks keys not padded out,
  which reach the softmax as masked keys (the float32 minimum, like every other path)."""
  return attention.key_blocks(k, v, real[:, None, None, :], attention.BLOCKWISE_KEYS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _ring_attention(q, k, v, real, axis, size):
  return _ring_forward(q, k, v, real, axis, size)[0]


def _ring_forward(q, k, v, real, axis, size):
  def step(carry, _):
    state, shard = carry
    state = attention.merge_key_blocks(q, state, _shard_blocks(*shard))
    return (state, _rotate(shard, axis, size)), None

  # `size` steps for a uniform loop; the last rotation only brings each shard home (the backward
  # pass starts from the residuals, not from these).
  (state, _), _ = jax.lax.scan(step, (attention.softmax_start(q), (k, v, real)), None, length=size)
  out = attention.softmax_finish(q, state)
  m, l, _ = state
  return out, (q, k, v, real, out, m, l)


def _ring_backward(axis, size, residuals, d_out):
  q, k, v, real, out, m, l = residuals

  def step(carry, _):
    dq, shard, dk, dv = carry
    blocks = _shard_blocks(*shard)
    dq_part, (dk_blocks, dv_blocks) = attention.key_block_gradients(q, out, d_out, m, l, blocks)
    length = shard[0].shape[1]  # drop the block padding
    dk = dk + attention.unblock(dk_blocks)[:, :length]
    dv = dv + attention.unblock(dv_blocks)[:, :length]
    # The gradients of a key shard travel with it and are home after `size` rotations.
    shard, dk, dv = _rotate((shard, dk, dv), axis, size)
    return (dq + dq_part, shard, dk, dv), None

  zeros = jnp.zeros(k.shape, jnp.float32)
  (dq, _, dk, dv), _ = jax.lax.scan(step, (jnp.zeros(q.shape, jnp.float32), (k, v, real), zeros,
                                           zeros), None, length=size)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_ring_attention.defvjp(_ring_forward, _ring_backward)
