"""How well a VAE reconstructs: PSNR and SSIM on held-out clips, what the built-in world's judge
reads in them, and side-by-side videos.

Both metrics read videos in [-1, 1] and score them on the [0, 1] scale images are usually scored
on, per clip, so a report can give a mean and a worst case.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sorajax.data import shapes_judge

# SSIM as defined by Wang et al. (2004): an 11x11 Gaussian window of std 1.5, K1 = 0.01, K2 = 0.03,
# computed where the window fits inside the frame ("valid"), per colour channel, then averaged.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(recon: jax.Array, target: jax.Array) -> jax.Array:
  """Videos (B, ...) in [-1, 1] -> PSNR in dB per clip, (B,), of the clipped reconstruction."""
  error = (jnp.clip(recon, -1.0, 1.0) - target) / 2.0  # on the [0, 1] scale: peak 1
  mse = jnp.mean(jnp.square(error).reshape(error.shape[0], -1), axis=-1)
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-12))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
  """(size, size) weights that sum to 1."""
  x = np.arange(size) - (size - 1) / 2
  g = np.exp(-0.5 * (x / sigma) ** 2)
  g /= g.sum()
  return np.outer(g, g)


def fits_ssim(height: int, width: int) -> bool:
  return min(height, width) >= SSIM_WINDOW


def ssim(recon: jax.Array, target: jax.Array) -> jax.Array:
  """Videos (B, T, H, W, C) in [-1, 1] -> mean SSIM per clip, (B,), over frames and channels."""
  b, t, h, w, c = target.shape
  if not fits_ssim(h, w):
    raise ValueError(f"frames of {h}x{w} are smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM "
                     "window; score them with PSNR only")
  x = (jnp.clip(recon, -1.0, 1.0).astype(jnp.float32) + 1.0) / 2.0
  y = (target.astype(jnp.float32) + 1.0) / 2.0
  # Channels into the batch: one single-channel depthwise filter serves every channel.
  as_images = lambda v: v.transpose(0, 1, 4, 2, 3).reshape(b * t * c, h, w, 1)
  kernel = jnp.asarray(gaussian_window(), jnp.float32)[:, :, None, None]
  blur = lambda v: jax.lax.conv_general_dilated(
      v, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  x, y = as_images(x), as_images(y)
  mu_x, mu_y = blur(x), blur(y)
  var_x = blur(x * x) - mu_x**2
  var_y = blur(y * y) - mu_y**2
  cov = blur(x * y) - mu_x * mu_y
  c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
  index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1)
                                                       * (var_x + var_y + c2))
  return jnp.mean(index.reshape(b, -1), axis=-1)


def judged_shapes(videos: np.ndarray, prompts) -> dict[str, float]:
  """What the world's judge reads in reconstructed clips (uint8 (N, T, H, W, 3)) of `prompts`:
  the share of objects whose shape it reads right, and their mean shape margin (how far each
  reading is from flipping, shapes_judge.shape_margin). A DiT on this VAE draws its shapes no
  better than the VAE decodes them, so a small margin here caps what its samples keep."""
  read, margins = [], []
  for video, prompt in zip(videos, prompts):
    for obj, verdict in zip(prompt.objects, shapes_judge.judge_video(video, prompt)):
      read.append(verdict["shape"])
      margins.append(shapes_judge.shape_margin(verdict, obj.shape))
  margins = [m for m in margins if not np.isnan(m)]
  return {"eval/judge_shape": float(np.mean(read)),
          "eval/shape_margin": float(np.mean(margins)) if margins else float("nan")}


def side_by_side(originals: np.ndarray, recons: np.ndarray, pad: int = 2) -> np.ndarray:
  """uint8 (N, T, H, W, 3) pairs -> a video (T, N*(H+pad)-pad, 2*W+pad, 3) of original | recon."""
  n, t, h, w, _ = originals.shape
  out = np.full((t, n * (h + pad) - pad, 2 * w + pad, 3), 255, np.uint8)
  for i in range(n):
    top = i * (h + pad)
    out[:, top:top + h, :w] = originals[i]
    out[:, top:top + h, w + pad:] = recons[i]
  return out
