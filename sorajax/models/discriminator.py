"""3D patch discriminator and hinge losses for the VAE's optional adversarial term.

The discriminator scores overlapping spacetime patches rather than whole clips, so it judges local
texture and edges (what an L2 loss blurs) and not layout. It is fully convolutional: any clip size
the VAE takes, it takes. Downsampling is space-to-depth (as in the VAE) followed by a conv, and
time is never folded, so clips need not have an even frame count.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from sorajax.models import layers

Dtype = layers.Dtype


def _fold_space(x: jax.Array) -> jax.Array:
  """(B, T, H, W, C) -> (B, T, H/2, W/2, 4C); odd sizes lose their last row or column."""
  b, t, h, w, c = x.shape
  x = x[:, :, : h - h % 2, : w - w % 2]
  x = x.reshape(b, t, h // 2, 2, w // 2, 2, c).transpose(0, 1, 2, 4, 3, 5, 6)
  return x.reshape(b, t, h // 2, w // 2, 4 * c)


class PatchDiscriminator3D(nn.Module):
  """Video (B, T, H, W, 3) in [-1, 1] -> logits (B, T, H/2^n, W/2^n), n = len(channels) - 1."""

  channels: tuple[int, ...] = (32, 64, 128)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, video: jax.Array) -> jax.Array:
    x = video.astype(self.dtype)
    for i, width in enumerate(self.channels):
      if i > 0:
        x = _fold_space(x)
      x = layers.CausalConv3D(width, (3, 3, 3), dtype=self.dtype, name=f"conv{i}")(x)
      if i > 0:  # no norm on the first layer: it would remove the colours the judge should see
        x = layers.GroupNorm(dtype=self.dtype, name=f"norm{i}")(x)
      x = nn.leaky_relu(x, 0.2)
    logits = layers.CausalConv3D(1, (3, 3, 3), dtype=self.dtype, name="logits")(x)
    return logits[..., 0].astype(jnp.float32)


def hinge_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """mean(relu(1 - D(real))) + mean(relu(1 + D(fake))): zero once real > 1 and fake < -1."""
  return jnp.mean(nn.relu(1.0 - real_logits)) + jnp.mean(nn.relu(1.0 + fake_logits))


def hinge_generator_loss(fake_logits: jax.Array) -> jax.Array:
  """-mean(D(fake)): the generator raises the score of its reconstructions."""
  return -jnp.mean(fake_logits)
