"""The one attention dispatch point: every model calls `attend`, the config picks the kernel.

Shapes follow `jax.nn.dot_product_attention`: q (B, Lq, heads, head_dim), k and v
(B, Lk, heads, head_dim). `mask` is boolean, True where a query may attend to a key, and
broadcastable to (B, heads, Lq, Lk); a key padding mask of shape (B, Lk) is passed as
`mask[:, None, None, :]`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp


def _xla(q, k, v, mask):
  """Plain einsum softmax; logits, softmax and both matmul accumulations in float32."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    # A finite minimum (not -inf) keeps a fully masked row finite instead of NaN.
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return out.astype(q.dtype)


def _cudnn(q, k, v, mask):
  """cuDNN fused attention (flash-style); needs an NVIDIA GPU and float16/bfloat16 inputs."""
  if mask is not None:
    mask = jnp.broadcast_to(mask, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]))
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


_IMPLEMENTATIONS: dict[str, Callable] = {"xla": _xla, "cudnn": _cudnn}


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
