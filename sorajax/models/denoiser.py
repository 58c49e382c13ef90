"""The learned text encoder and the DiT as one module: how a run with text.encoder="learned"
initialises its {"text", "dit"} parameters (one seed, the same weights as ever). Training and
sampling apply the two parts apart (training/objectives.py), so a caption is encoded once per
sample, not once per sampler step."""
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
