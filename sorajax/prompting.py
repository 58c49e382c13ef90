"""Prompting with images and videos: every Sora mode from one frame-conditioned DiT run.

  text      text -> video (`VideoGenerator.generate`)
  image     text -> image: a one-frame clip
  animate   image -> video: the image is latent frame 0, held clean
  extend    a clip continued forward (its last frames given as the first latent frames) or
            backward (its first frames given as the last ones), chunk after chunk, to any length
  connect   the end of clip A and the start of clip B given at the two ends of a chunk; the frames
            between them are generated
  loop      the clip's last latent frames redrawn from part-way noised (or new ones added) to lead
            from its end back into its start; coded and decoded as a cycle played on repeat
  edit      SDEdit: the clip's latents noised part of the way (`strength`) and denoised under a
            new prompt
  rollout   text (or an image) -> the first chunk, then each chunk given the last latent frames of
            the one before, yielding frames as they are made: memory holds one chunk, however long
            the video

The run must have been trained with the matching `flow.given_frames` modes (prefix for forward
extension and rollouts, suffix for backward, ends for connect and loop, first for animate).

Latent frames of the causal VAE: frame 0 codes one video frame (an image), every later one codes f
frames (f = the VAE's temporal factor). A clip given at the start of a chunk is encoded as it is. A
clip given later in the chunk is encoded behind one copy of its own first frame, so it gets the code
of later frames, with a still frame as the history the causal encoder reads (a loop codes its
clip as played on repeat instead: `cycle_codes`).

Every function is batched: N videos, N captions and N seeds, one output per (video, caption, seed).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import jax.numpy as jnp
import numpy as np

from sorajax.data import video_io
from sorajax.diffusion.samplers import MAX_GUIDANCE, check_temperature

EDIT_STRENGTH = 0.7  # an edit's default: keeps the layout, lets colors and shapes follow the prompt
MODES = ("text", "image", "animate", "extend", "extend_back", "connect", "loop", "edit", "rollout")


def check_captions(captions: Sequence[str], seeds: Sequence[int]) -> None:
  if len(captions) != len(seeds):
    raise ValueError(f"{len(captions)} captions but {len(seeds)} seeds; pass one seed per caption")
  for caption in captions:
    if not caption.strip():
      raise ValueError("empty prompt; describe the video in words (the null prompt is only used "
                       "for guidance)")


class Chunk:
  """The clip size one generation call makes, and how its latent frames map to video frames."""

  def __init__(self, generator, frames: int | None = None, height: int | None = None,
               width: int | None = None):
    d = generator.config.data
    self.frames, self.height, self.width = frames or d.frames, height or d.height, width or d.width
    generator.objective.check_shape(self.frames, self.height, self.width)
    self.latent_shape = generator.objective.latent_shape(self.frames, self.height, self.width)
    self.latents = self.latent_shape[0]
    self.factor = generator.objective.temporal_factor

  def video_frames(self, latents: int, first: bool) -> int:
    """Video frames coded by `latents` latent frames, starting at latent frame 0 or later."""
    return 1 + self.factor * (latents - 1) if first else self.factor * latents

  def needs(self, given: int) -> None:
    if not 1 <= given < self.latents:
      raise ValueError(f"{given} given latent frames leave no room in a chunk of {self.latents}; "
                       f"use 1 to {self.latents - 1} (or longer chunks, --frames)")


def fit(videos: np.ndarray, chunk: Chunk, max_frames: int | None = None):
  """uint8 (N, T, H, W, 3) or (T, H, W, 3) -> (N, 1+f*k, height, width, 3) at the chunk's size, and
  the notes of what changed for the first clip (video_io.fit_video)."""
  videos = np.asarray(videos)
  if videos.ndim == 4:
    videos = videos[None]
  fitted = [video_io.fit_video(v, chunk.height, chunk.width, chunk.factor, max_frames)
            for v in videos]
  return np.stack([v for v, _ in fitted]), fitted[0][1]


def _encode_later(generator, clips: np.ndarray) -> jnp.ndarray:
  """Latents of f*m video frames placed after latent frame 0: (N, m, h, w, C)."""
  return generator.encode(np.concatenate([clips[:, :1], clips], axis=1))[:, 1:]


def _context_latents(generator, frames: np.ndarray, latents: jnp.ndarray,
                     context: int) -> jnp.ndarray:
  """The `context` latent frames that continue a clip from its end without re-encoding it: the
  image latent of the frame before the last context - 1 latent frames, then those frames as they
  are. `frames` (N, 1+f*k, ...) are what `latents` (N, 1+k, ...) code, frame for frame."""
  f = (frames.shape[1] - 1) // (latents.shape[1] - 1)
  image = frames.shape[1] - 1 - f * (context - 1)
  return jnp.concatenate([generator.encode(frames[:, image:image + 1]),
                          latents[:, latents.shape[1] - (context - 1):]], axis=1)


def _check_length(videos: np.ndarray, needed: int, mode: str, chunk: Chunk) -> None:
  if videos.shape[1] < needed:
    raise ValueError(f"{mode} needs a clip of at least {needed} frames, got {videos.shape[1]}; "
                     f"pass a longer clip or fewer context latent frames "
                     f"(1 to {chunk.latents - 1})")


def _conditioned(generator, chunk: Chunk, captions, seeds, given_mask: np.ndarray,
                 given_latents: dict[int, jnp.ndarray], **settings) -> jnp.ndarray:
  """One chunk of latents with the latent frames at the keys of `given_latents` held clean."""
  n = len(captions)
  latents = jnp.zeros((n,) + tuple(chunk.latent_shape), jnp.float32)
  for index, value in given_latents.items():
    latents = latents.at[:, index:index + value.shape[1]].set(value)
  given = np.broadcast_to(given_mask, (n, chunk.latents))
  return generator.sample_latents(list(captions), list(seeds), chunk.latent_shape, given=given,
                                  given_latents=latents, **_one_pass(settings))


def _one_pass(settings: dict) -> dict:
  """Prompted chunks are sampled in one pass unless the caller asks for stages."""
  return {"stage_frames": 0, **settings}


def text_to_image(generator, captions, seeds, height=None, width=None, **settings) -> np.ndarray:
  """uint8 images (N, height, width, 3): one-frame clips."""
  check_captions(captions, seeds)
  return generator.generate(list(captions), list(seeds), frames=1, height=height, width=width,
                            **settings)[:, 0]


def animate(generator, images: np.ndarray, captions, seeds, chunk: Chunk | None = None,
            **settings) -> np.ndarray:
  """uint8 videos (N, frames, H, W, 3) that start from `images` (N, H, W, 3)."""
  check_captions(captions, seeds)
  chunk = chunk or Chunk(generator)
  return generator.decode(_animated_latents(generator, images, captions, seeds, chunk,
                                            **settings))


def _animated_latents(generator, images, captions, seeds, chunk: Chunk, **settings):
  images = fit(np.asarray(images)[:, None], chunk, max_frames=1)[0]
  given = np.arange(chunk.latents) == 0
  return _conditioned(generator, chunk, captions, seeds, given, {0: generator.encode(images)},
                      **settings)


def _extend_chunk(generator, chunk, videos, captions, seeds, context, backward, **settings):
  """The new frames one chunk adds before (backward) or after the clip."""
  if backward:  # the clip's first f*context frames become the chunk's last latent frames
    clip = videos[:, :chunk.video_frames(context, first=False)]
    given = np.arange(chunk.latents) >= chunk.latents - context
    latents = _conditioned(generator, chunk, captions, seeds, given,
                           {chunk.latents - context: _encode_later(generator, clip)}, **settings)
    return generator.decode(latents)[:, :chunk.frames - clip.shape[1]]
  clip = videos[:, videos.shape[1] - chunk.video_frames(context, first=True):]
  given = np.arange(chunk.latents) < context
  latents = _conditioned(generator, chunk, captions, seeds, given, {0: generator.encode(clip)},
                         **settings)
  return generator.decode(latents)[:, clip.shape[1]:]


def _chunk_seeds(seeds, index: int) -> list[int]:
  """Seeds of chunk `index` > 0 of a multi-chunk job: one per chunk, fixed by the job's seed."""
  return [(int(s) + 0x9E3779B9 * index) % 2 ** 32 for s in seeds]


def _refresh_seeds(seeds) -> list[int]:
  """Seeds of a rollout chunk's redraw: apart from every chunk's own (`_chunk_seeds`)."""
  return [(int(s) + 0x85EBCA6B) % 2 ** 32 for s in seeds]


def _default_context(chunk: Chunk, context: int | None, backward: bool = False) -> int:
  """Forward: all but one latent frame of the chunk (1 + f*(L-2) frames of context, f new ones).
  Backward, where every given latent frame is f frames and the new part starts with an image
  frame: all but two, so a chunk adds 1 + f frames rather than one."""
  if context is None:
    context = max(1, chunk.latents - (2 if backward else 1))
  chunk.needs(context)
  return context


def _wants_anchor(generator, anchor: bool | None) -> bool:
  """Whether chunks are shown an anchor frame: as asked, or by default if the run trained with
  them (generation.sample_latents refuses anchors to a run that did not)."""
  return generator.objective.anchor > 0 if anchor is None else bool(anchor)


def extend(generator, videos: np.ndarray, captions, seeds, new_frames: int, backward: bool = False,
           context: int | None = None, chunk: Chunk | None = None, anchor: bool | None = None,
           **settings) -> np.ndarray:
  """The clips (N, T, H, W, 3) with `new_frames` generated frames after them (or before them),
  made chunk by chunk, each chunk given `context` latent frames of what is there (default:
  `_default_context`). The clips' own frames come back unchanged.

  `anchor` shows every chunk the given clip's first frame as an anchor frame, as `rollout` shows
  its later chunks the video's first frame: however many chunks the extension takes, each sees
  what the objects looked like in the clip. Default: on for runs trained with flow.anchor > 0."""
  check_captions(captions, seeds)
  chunk = chunk or Chunk(generator)
  context = _default_context(chunk, context, backward)
  if new_frames < 1:
    raise ValueError(f"new_frames={new_frames} must be at least 1")
  videos = np.asarray(videos)
  if videos.shape[2:4] != (chunk.height, chunk.width):
    raise ValueError(f"clips are {videos.shape[3]}x{videos.shape[2]}, the chunk is "
                     f"{chunk.width}x{chunk.height}; fit them first (prompting.fit)")
  mode = "extend_back" if backward else "extend"
  _check_length(videos, chunk.video_frames(1, first=not backward), mode, chunk)
  if _wants_anchor(generator, anchor):
    settings = {**settings, "anchor": generator.encode(videos[:, :1])}
  made, index = 0, 0
  while made < new_frames:
    # A short clip gives what it has: fewer context latent frames in the first chunks.
    have = (videos.shape[1] // chunk.factor if backward
            else 1 + (videos.shape[1] - 1) // chunk.factor)
    piece = _extend_chunk(generator, chunk, videos, captions,
                          seeds if index == 0 else _chunk_seeds(seeds, index),
                          min(context, have), backward, **settings)
    videos = (np.concatenate([piece, videos], axis=1) if backward
              else np.concatenate([videos, piece], axis=1))
    made, index = made + piece.shape[1], index + 1
  surplus = made - new_frames
  return videos[:, surplus:] if backward else videos[:, :videos.shape[1] - surplus]


def connect_context(chunk: Chunk) -> int:
  """Default latent frames given at each end of a connecting chunk: half of what leaves one free."""
  return max(1, (chunk.latents - 1) // 2)


def connect(generator, first: np.ndarray, second: np.ndarray, captions, seeds,
            chunk: Chunk | None = None, first_context: int | None = None,
            second_context: int | None = None, **settings) -> np.ndarray:
  """first (N, Ta, ...) + generated transition + second (N, Tb, ...): one chunk whose first latent
  frames are the end of `first` and whose last ones are the start of `second`. Between them the
  chunk generates f * (latents - first_context - second_context) frames."""
  check_captions(captions, seeds)
  chunk = chunk or Chunk(generator)
  first_context = first_context or connect_context(chunk)
  second_context = second_context or connect_context(chunk)
  chunk.needs(first_context + second_context)
  head = chunk.video_frames(first_context, first=True)
  tail = chunk.video_frames(second_context, first=False)
  _check_length(first, head, "connect (first clip)", chunk)
  _check_length(second, tail, "connect (second clip)", chunk)
  given = ((np.arange(chunk.latents) < first_context)
           | (np.arange(chunk.latents) >= chunk.latents - second_context))
  latents = _conditioned(generator, chunk, captions, seeds, given, {
      0: generator.encode(first[:, first.shape[1] - head:]),
      chunk.latents - second_context: _encode_later(generator, second[:, :tail])}, **settings)
  transition = generator.decode(latents)[:, head:chunk.frames - tail]
  return np.concatenate([first, transition, second], axis=1)


def loop(generator, videos: np.ndarray, captions, seeds, chunk: Chunk | None = None,
         first_context: int | None = None, second_context: int | None = None,
         periods: int | None = None, replace_end: bool = True, strength: float | None = None,
         **settings) -> np.ndarray:
  """Seamless loops of clips (N, 1+f*k, H, W, 3).

  The loop is a cycle of latent frames: the clip's latent frames after the first, then the m
  frames one chunk generates between the clip's end (`first_context` latent frames: the image
  latent of a frame, then the clip's latent frames before it) and its start (the clip's first
  `second_context` latent frames after the image one). With `replace_end` the m generated
  latent frames take the place of the clip's last m, so the loop keeps the clip's length
  (N, f*k, ...) and its motion need not change pace: a bouncing clip's return, or a still one,
  is redrawn to close the cycle. Without it they are added after the clip's end (N, f*(k+m), ...),
  and the object must cover the way back in those m frames.

  `strength` in (0, 1] (with `replace_end`; default: the run's sample.loop_strength) starts the m
  latent frames from the clip's own last m, noised that far towards noise (SDEdit); 1 draws them
  from noise. Below 1, a clip that nearly loops keeps its end and has only the seam mended.
  Unless `settings` name a guidance, a mend (strength < 1) runs at the run's sample.loop_guidance
  (`loop_guidance`): the clip already fixes what the loop shows, and stronger guidance pushes the
  redrawn frames' look away from the coded ones around them, a step at each seam. Frames drawn
  from noise take the run's sample.guidance, as any frames made from the prompt do.

  Coding and decoding both see the loop on repeat: the clip's frames after the first are encoded
  played on repeat (`cycle_codes`), and the cycle is decoded played on repeat (`decode_cycle`),
  the last period kept each time; `periods` sets both counts (default: enough to cover the causal
  reach of each). So the latent frames at the clip's start are coded, and decoded, with a loop's
  end as history rather than as the start of a video: played on repeat, the last frame leads into
  the first like any other pair of frames. The coding is exact for a clip that already loops; a
  clip whose end is redrawn was coded behind its own end, the nearest history known before the
  redraw. Frame 0 of the clip, the one frame its image latent codes, has no place in the cycle.
  """
  check_captions(captions, seeds)
  chunk = chunk or Chunk(generator)
  first_context = first_context or connect_context(chunk)
  second_context = second_context or connect_context(chunk)
  chunk.needs(first_context + second_context)
  videos = np.asarray(videos)
  f = chunk.factor
  new = chunk.latents - first_context - second_context
  kept = max(second_context, first_context - 1) + (new if replace_end else 0)
  if (videos.shape[1] - 1) % f:
    raise ValueError(f"loop needs a clip of 1 + {f}k frames, got {videos.shape[1]}; fit it first "
                     f"(prompting.fit)")
  if videos.shape[1] < 1 + f * kept:
    raise ValueError(f"loop needs a clip of at least {1 + f * kept} frames, got {videos.shape[1]}; "
                     f"pass a longer clip" + (", or replace_end=False to add the transition after "
                                              "the clip" if replace_end else ""))
  if strength is None:
    strength = default_loop_strength(generator) if replace_end else 1.0
  check_loop_strength(strength)
  if strength < 1.0 and not replace_end:
    raise ValueError(f"strength={strength} redraws the clip's own end; it needs replace_end=True")
  settings = {**settings, "guidance": loop_guidance(generator, strength, settings.get("guidance"))}
  # The clip's latent frames after the first are coded as the loop plays them, on repeat: the
  # causal encoder reads the clip's end before its start, not the start of a video.
  clip = cycle_codes(generator, videos, periods)
  end = clip[:, clip.shape[1] - new:]  # what the transition replaces, where it does
  if replace_end:
    videos, clip = videos[:, :videos.shape[1] - f * new], clip[:, :clip.shape[1] - new]
  image = generator.encode(videos[:, :1])
  start = _context_latents(generator, videos, jnp.concatenate([image, clip], axis=1),
                           first_context)
  index = np.arange(chunk.latents)
  given = (index < first_context) | (index >= chunk.latents - second_context)
  ends = {0: start, chunk.latents - second_context: clip[:, :second_context]}
  if strength < 1.0:
    settings = {**settings, "strength": strength,
                "source": jnp.concatenate([start, end, clip[:, :second_context]], axis=1)}
  latents = _conditioned(generator, chunk, captions, seeds, given, ends, **settings)
  cycle = jnp.concatenate([clip, latents[:, first_context:chunk.latents - second_context]], axis=1)
  return decode_cycle(generator, image, cycle, periods)


def _periods(generator, cycle: int, periods: int | None) -> int:
  """Times a cycle of latent frames is played: `periods`, or by default enough that the last
  period has a whole causal reach of the cycle behind it (the encoder's blocks mirror the
  decoder's: the same reach)."""
  if periods is None:
    return 1 + max(1, -(-generator.objective.vae.decoder_history() // cycle))
  if periods < 2:
    raise ValueError(f"periods={periods}; play at least 2 so the loop's start has its end "
                     f"as history")
  return periods


def cycle_codes(generator, videos: np.ndarray, periods: int | None = None) -> jnp.ndarray:
  """Latent frames (N, k, ...) of clips' frames after the first (N, 1+f*k, ...) played on repeat:
  the last of `periods` periods coded behind the clip's first frame (`_periods`)."""
  f = generator.objective.temporal_factor
  if (videos.shape[1] - 1) % f or videos.shape[1] == 1:
    raise ValueError(f"a cycle needs a clip of 1 + {f}k frames (k >= 1), got {videos.shape[1]}; "
                     f"fit it first (prompting.fit)")
  k = (videos.shape[1] - 1) // f
  stream = np.concatenate([videos[:, :1]] + [videos[:, 1:]] * _periods(generator, k, periods),
                          axis=1)
  return generator.encode(stream)[:, -k:]


def decode_cycle(generator, image: jnp.ndarray, cycle: jnp.ndarray,
                 periods: int | None = None) -> np.ndarray:
  """Video frames (N, f*k, ...) of a cycle of k latent frames: the last of `periods` periods
  decoded behind the image latent (`_periods`), so each frame has the cycle as history."""
  stream = jnp.concatenate([image] + [cycle] * _periods(generator, cycle.shape[1], periods),
                           axis=1)
  return generator.decode(stream)[:, -generator.objective.temporal_factor * cycle.shape[1]:]


def check_loop_strength(strength: float, name: str = "strength") -> None:
  if not 0.0 < strength <= 1.0:
    raise ValueError(f"{name}={strength} must be in (0, 1]; 1 redraws the clip's end from noise, "
                     f"small values keep more of it")


def default_loop_strength(generator) -> float:
  """The run's sample.loop_strength (1 in runs saved before it), checked."""
  strength = float(generator.config.sample.get("loop_strength", 1.0))
  check_loop_strength(strength, "sample.loop_strength")
  return strength


def _mode_guidance(generator, field: str) -> float:
  """The run's sample.<field> (its sample.guidance in runs saved before it), checked."""
  sample = generator.config.sample
  name = f"sample.{field}" if field in sample else "sample.guidance"
  guidance = float(sample.get(field, sample.guidance))
  if not 0.0 <= guidance <= MAX_GUIDANCE:
    raise ValueError(f"{name}={guidance} must be in [0, {MAX_GUIDANCE:g}]; 1 is no guidance")
  return guidance


def default_loop_guidance(generator) -> float:
  """The run's sample.loop_guidance (its sample.guidance in runs saved before it), checked."""
  return _mode_guidance(generator, "loop_guidance")


def default_rollout_guidance(generator) -> float:
  """The run's sample.rollout_guidance (its sample.guidance in runs saved before it), checked."""
  return _mode_guidance(generator, "rollout_guidance")


def default_rollout_temperature(generator) -> float:
  """The run's sample.rollout_temperature (1 in runs saved before it), checked."""
  temperature = float(generator.config.sample.get("rollout_temperature", 1.0))
  check_temperature(temperature, "sample.rollout_temperature")
  return temperature


def loop_guidance(generator, strength: float, guidance: float | None = None) -> float:
  """The guidance a loop samples at: `guidance` if given; else the run's loop guidance for a
  mend of the clip's end (strength < 1), and its sample.guidance for frames drawn from noise."""
  if guidance is not None:
    return float(guidance)
  if strength < 1.0:
    return default_loop_guidance(generator)
  return float(generator.config.sample.guidance)


def edit(generator, videos: np.ndarray, captions, seeds, strength: float,
         **settings) -> np.ndarray:
  """The clips (N, 1+f*k, H, W, 3) redrawn under new captions: their latents are noised to the
  time `strength` of the way from data to noise and denoised from there (SDEdit)."""
  check_captions(captions, seeds)
  videos = np.asarray(videos)
  frames, height, width = videos.shape[1:4]
  chunk = Chunk(generator, frames, height, width)
  source = generator.encode(videos)
  latents = generator.sample_latents(list(captions), list(seeds), chunk.latent_shape,
                                     source=source, strength=strength, **_one_pass(settings))
  return generator.decode(latents)


def default_refresh(generator) -> float:
  return float(generator.config.sample.get("rollout_refresh", 0.0))


def check_refresh(refresh: float, name: str = "refresh") -> None:
  if not 0.0 <= refresh < 1.0:
    raise ValueError(f"{name}={refresh} must be in [0, 1); 0 carries each rollout chunk on as "
                     f"generated, larger values redraw more of it")


def rollout(generator, captions, seeds, total_frames: int, images: np.ndarray | None = None,
            context: int | None = None, chunk: Chunk | None = None, carry: str = "latents",
            refresh: float | None = None, anchor: bool | None = None,
            temperature: float | None = None, **settings) -> Iterator[np.ndarray]:
  """Yields uint8 pieces (N, t, H, W, 3) of videos `total_frames` long, first to last.

  The first chunk comes from text (or animates `images`); each later one is given the last
  `context` latent frames of the one before. Only that chunk is kept between chunks, so memory
  does not grow with the length, and a caller can write each piece out as it comes
  (video_io.Mp4Writer).

  carry="latents" gives the next chunk the previous chunk's latent frames as generated, behind
  the image latent of the frame before them (a chunk's latent frame 0 always codes one frame).
  carry="frames" re-encodes the last decoded frames instead, as `extend` does with a clip; a
  minute of that is a hundred decode-encode round trips, whose errors add up.

  `refresh` in [0, 1) redraws each later chunk, context and new frames alike, from that far
  towards noise under its caption (an SDEdit, as `edit` does) before it is decoded and carried on.
  Each chunk otherwise copies its context's errors forward and adds its own, so over a minute
  shapes smear and split; the redraw pulls every chunk back towards what the caption describes,
  at the price of larger steps where chunks meet and round(refresh * steps) more sampler steps per
  chunk (bench/RESULTS.md, issue 5). Default: the run's sample.rollout_refresh with
  carry="latents" (0 for runs saved before it), 0 with carry="frames".

  `anchor` shows every later chunk the first chunk's first latent frame (the image latent of the
  video's first frame) as an anchor frame: a sharp view of what the objects look like, however
  far the context has drifted. Default: on for runs trained with flow.anchor > 0.

  Every chunk samples at the guidance in `settings`, default the run's sample.rollout_guidance:
  a rollout's later chunks are given what the objects look like, and strong guidance pulls an
  unseen combination towards the seen ones its words share, chunk after chunk.

  Later chunks start from their noise scaled by `temperature` (default: the run's
  sample.rollout_temperature, 1 for runs saved before it); the first chunk keeps the full noise,
  so seeds still differ. A continuation has one right answer, what its context already shows;
  full noise redraws the objects' look in every chunk, and over a minute some draws cross to
  another shape (bench/RESULTS.md, issue 5 twenty-fourth pass).
  """
  check_captions(captions, seeds)
  if carry not in ("latents", "frames"):
    raise ValueError(f"carry={carry!r}; use 'latents' or 'frames'")
  if refresh is None:
    refresh = default_refresh(generator) if carry == "latents" else 0.0
  check_refresh(refresh)
  if refresh and carry != "latents":
    raise ValueError("refresh redraws the carried latents; use carry='latents'")
  chunk = chunk or Chunk(generator)
  context = _default_context(chunk, context)
  if total_frames < 1:
    raise ValueError(f"total_frames={total_frames} must be at least 1")
  anchor = _wants_anchor(generator, anchor)
  if temperature is None:
    temperature = default_rollout_temperature(generator)
  check_temperature(temperature)
  if settings.get("guidance") is None:
    settings = {**settings, "guidance": default_rollout_guidance(generator)}
  if images is None:
    latents = generator.sample_latents(list(captions), list(seeds), chunk.latent_shape,
                                       **_one_pass(settings))
  else:
    latents = _animated_latents(generator, images, captions, seeds, chunk, **settings)
  decoded = generator.decode(latents)
  piece, keep, made, index = decoded, chunk.video_frames(context, first=True), 0, 0
  given = np.arange(chunk.latents) < context
  if anchor:
    settings = {**settings, "anchor": latents[:, :1]}
  while True:
    piece = piece[:, :total_frames - made]
    yield piece
    made += piece.shape[1]
    if made >= total_frames:
      return
    index += 1
    seeds_now = _chunk_seeds(seeds, index)
    if carry == "frames":
      piece = _extend_chunk(generator, chunk, decoded[:, -keep:], captions, seeds_now, context,
                            backward=False, temperature=temperature, **settings)
      decoded = np.concatenate([decoded[:, -keep:], piece], axis=1)
      continue
    latents = _conditioned(generator, chunk, captions, seeds_now, given,
                           {0: _context_latents(generator, decoded, latents, context)},
                           temperature=temperature, **settings)
    if refresh:  # nothing held: the context frames are redrawn too, and carried on as redrawn
      latents = generator.sample_latents(list(captions), _refresh_seeds(seeds_now),
                                         chunk.latent_shape, source=latents, strength=refresh,
                                         **_one_pass(settings))
    decoded = generator.decode(latents)
    piece = decoded[:, keep:]
