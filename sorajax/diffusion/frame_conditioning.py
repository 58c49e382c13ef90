"""Which latent frames a training clip hands to the model clean, so one DiT learns to continue them.

Each training example draws one *mode* (or none, generating the whole clip from text):
  first   the first frame (animate an image; the second stage of text -> image -> video)
  prefix  the first k frames, k uniform in [1, T-1] (extend forward; chunked long videos)
  last    the last frame (end on a given image)
  suffix  the last k frames, k uniform in [1, T-1] (extend backward in time)
  ends    the first and the last frame (connect two clips; seamless loops)
  random  each frame given with probability 1/2, at least one left to generate (in-between frames)
A mode is a function (rng, batch, frames) -> (batch, frames) bool, True where a frame is given.

Design: given frames are marked by their *time*, not by extra input channels. A given frame enters
the DiT clean, with its own timestep t=0, while the other frames carry the example's noise level
(per-token timesteps, as in Open-Sora 2.0 and LTX-Video; flow.frame_times), and it is left out of
the loss. Compared with concatenating a mask and the clean latents on the channel axis (Wan 2.1's
image-to-video), this needs no new weights, serves any subset of frames with one set of weights,
keeps text-to-video the same model at t>0 everywhere, and the sampler feeds the model exactly what
it saw in training: the given latents at t=0 at every step.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp


def _first(rng, batch, frames):
  del rng
  return jnp.broadcast_to(jnp.arange(frames) == 0, (batch, frames))


def _prefix(rng, batch, frames):
  length = jax.random.randint(rng, (batch, 1), 1, frames)  # at least one frame left to generate
  return jnp.arange(frames)[None, :] < length


def _last(rng, batch, frames):
  del rng
  return jnp.broadcast_to(jnp.arange(frames) == frames - 1, (batch, frames))


def _suffix(rng, batch, frames):
  length = jax.random.randint(rng, (batch, 1), 1, frames)
  return jnp.arange(frames)[None, :] >= frames - length


def _random(rng, batch, frames):
  coin_rng, keep_rng = jax.random.split(rng)
  given = jax.random.bernoulli(coin_rng, 0.5, (batch, frames))
  # A clip drawn all-given frees one frame at random, so every example has something to learn.
  free = jax.random.randint(keep_rng, (batch, 1), 0, frames) == jnp.arange(frames)[None, :]
  return given & ~(given.all(axis=1, keepdims=True) & free)


def _ends(rng, batch, frames):
  del rng
  index = jnp.arange(frames)
  return jnp.broadcast_to((index == 0) | (index == frames - 1), (batch, frames))


MODES = {"first": _first, "prefix": _prefix, "last": _last, "suffix": _suffix, "ends": _ends,
         "random": _random}
# The fewest latent frames each mode needs so that at least one frame is generated.
_MIN_FRAMES = {"first": 2, "prefix": 2, "last": 2, "suffix": 2, "ends": 3, "random": 2}


def check_probabilities(probabilities: Mapping[str, float], frames: int) -> None:
  """Raises ValueError (one line) for unknown modes, bad probabilities, or too few frames."""
  for mode, p in probabilities.items():
    if mode not in MODES:
      raise ValueError(f"frame-conditioning mode {mode!r} is unknown; valid: {', '.join(MODES)}")
    if not 0.0 <= p <= 1.0:
      raise ValueError(f"probability of frame-conditioning mode {mode!r} is {p}; use [0, 1]")
    if p > 0 and frames < _MIN_FRAMES[mode]:
      raise ValueError(f"frame-conditioning mode {mode!r} needs "
                       f"{_MIN_FRAMES[mode]}+ latent frames, "
                       f"the clip has {frames}; set its probability to 0 or train longer clips")
  total = sum(probabilities.values())
  if total > 1.0 + 1e-6:
    raise ValueError(f"frame-conditioning probabilities sum to {total:.3f}; they must sum to <= 1 "
                     "(the rest of the batch is generated from text alone)")


def usable(probabilities: Mapping[str, float], frames: int) -> dict[str, float]:
  """The modes a clip of `frames` latent frames can take (a one-frame image takes none)."""
  return {m: p for m, p in probabilities.items() if frames >= _MIN_FRAMES[m]}


def sample_given(rng: jax.Array, batch: int, frames: int,
                 probabilities: Mapping[str, float]) -> jax.Array:
  """(batch, frames) bool: per example, the frames of the mode it drew (none: all False)."""
  modes = [m for m, p in probabilities.items() if p > 0]
  given = jnp.zeros((batch, frames), bool)
  if not modes:
    return given
  pick_rng, *mode_rngs = jax.random.split(rng, len(modes) + 1)
  probs = jnp.asarray([probabilities[m] for m in modes]
                      + [1.0 - sum(probabilities[m] for m in modes)])
  choice = jax.random.categorical(pick_rng, jnp.log(jnp.maximum(probs, 0.0)), shape=(batch,))
  for i, (mode, mode_rng) in enumerate(zip(modes, mode_rngs)):
    given = jnp.where((choice == i)[:, None], MODES[mode](mode_rng, batch, frames), given)
  return given
