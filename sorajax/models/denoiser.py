"""The trainable text-to-video velocity model: a text encoder feeding a DiT's cross-attention."""
from __future__ import annotations

import flax.linen as nn
import jax

from sorajax.models.dit import DiT
from sorajax.models.text import TextEncoder


class TextToVideo(nn.Module):
  text: TextEncoder
  dit: DiT

  def __call__(self, latents: jax.Array, t: jax.Array, tokens: jax.Array,
               token_mask: jax.Array) -> jax.Array:
    context = self.text(tokens, token_mask)
    return self.dit(latents, t, context, token_mask)
