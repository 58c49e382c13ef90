r"""Attention memory against sequence length: plain (XLA) and blockwise, forward + backward.

  python bench/attention_memory.py [--lengths 1024,2048,4096,8192] [--heads 4] [--head_dim 64]

Compiles the gradient of sum(attention(q, k, v)) for one example at each length and reads XLA's
temporary-buffer size from the compiled program (nothing runs). The log-log slope of that size
against length is about 2 for plain attention (the logits) and about 1 for blockwise.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from sorajax.models import attention


def temp_bytes(implementation: str, length: int, heads: int, head_dim: int) -> int:
  shape = jax.ShapeDtypeStruct((1, length, heads, head_dim), jnp.float32)
  loss = lambda q, k, v: jnp.sum(attention.attend(q, k, v, implementation=implementation))
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(shape, shape, shape).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--lengths", default="1024,2048,4096,8192")
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--head_dim", type=int, default=64)
  args = parser.parse_args()
  lengths = [int(n) for n in args.lengths.split(",")]
  print(f"devices: {jax.devices()}; keys per block: {attention.BLOCKWISE_KEYS}")
  for implementation in ("xla", "blockwise"):
    sizes = [temp_bytes(implementation, n, args.heads, args.head_dim) for n in lengths]
    slope = np.polyfit(np.log(lengths), np.log(sizes), 1)[0]
    cells = ", ".join(f"{n}: {s / 2**20:.1f} MiB" for n, s in zip(lengths, sizes))
    print(f"{implementation}: {cells}; log-log slope {slope:.2f}")


if __name__ == "__main__":
  main()
