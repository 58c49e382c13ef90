"""Judging every prompting mode on the built-in world's held-out prompts (the demo report's second
half; figures in bench/RESULTS.md).

Conditioning clips are drawn by the world's own renderer. Extension and connect need a clip whose
object still has room to move on, so those modes draw their own straight paths at the training
clips' speed (`directed_clip`), which also gives the true frames the model should have made.
Each mode returns {"metrics": {name: value}, "videos": [...]} for the report.
"""
from __future__ import annotations

import numpy as np

from sorajax import prompting
from sorajax.data import shapes, shapes_judge


def _speed(chunk: prompting.Chunk) -> float:
  """Pixels per frame of a moving object in the training clips (TRAVEL per clip)."""
  return shapes.TRAVEL * min(chunk.height, chunk.width) / (chunk.frames - 1)


def directed_clip(obj: shapes.ObjectSpec, background: str, frames: int, height: int, width: int,
                  step: float, rng: np.random.Generator) -> np.ndarray:
  """uint8 (frames, H, W, 3): `obj` moving `step` pixels a frame in its direction, all in view."""
  axis, sign = shapes.DIRECTIONS[obj.motion]
  size = rng.uniform(*shapes.SIZE_RANGE) * min(height, width)
  room = np.array([width, height], np.float64) - size
  path = step * (frames - 1)
  if path > room[axis]:
    raise ValueError(f"a {frames}-frame path of {path:.1f} px does not fit in {room[axis]:.1f} px")
  start = rng.uniform(0.0, 1.0, 2) * room
  start[axis] = rng.uniform(0.0, room[axis] - path) + (path if sign < 0 else 0.0)
  xy = np.repeat(start[None], frames, axis=0)
  xy[:, axis] += sign * step * np.arange(frames)
  placement = shapes.Placement(obj, size, xy)
  return shapes.draw([placement], background, frames=frames, height=height, width=width)


def centroids(video: np.ndarray, prompt: shapes.Prompt) -> np.ndarray:
  """(T, 2) centroid (x, y) of the prompt's color per frame (NaN where it is absent)."""
  color = list(shapes.COLORS).index(prompt.objects[0].color)
  mask = shapes_judge.classify_pixels(video, prompt.background) == color
  count = mask.sum(axis=(1, 2)).astype(np.float64)
  ys, xs = np.mgrid[:video.shape[1], :video.shape[2]]
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.stack([(mask * xs).sum(axis=(1, 2)) / count,
                     (mask * ys).sum(axis=(1, 2)) / count], axis=1)


def _mean(values) -> float:
  values = [float(v) for v in values if v is not None]
  return float(np.mean(values)) if values else float("nan")


def _jobs(prompts, seeds):
  return [(p, s) for p in prompts for s in range(seeds)]


def _directional(prompts):
  return [p for p in prompts if p.objects[0].motion in shapes.DIRECTIONS]


def animate(generator, chunk, prompts, seeds, settings) -> dict:
  """Image -> video: the first frame of a rendered clip of the prompt, animated under the prompt."""
  jobs = _jobs(prompts, seeds)
  images = np.stack([shapes.render_prompt(p, 1, chunk.height, chunk.width, 100 + s)[0]
                     for p, s in jobs])
  videos = prompting.animate(generator, images, [p.caption for p, _ in jobs],
                             [s for _, s in jobs], chunk, **settings)
  verdicts = [shapes_judge.judge_prompt(v, p) for v, (p, _) in zip(videos, jobs)]
  return {"metrics": {k: _mean(v[k] for v in verdicts) for k in ("color", "shape", "motion")},
          "videos": list(videos)}


def extend(generator, chunk, prompts, seeds, settings, backward: bool) -> dict:
  """One chunk of extension of a clip whose object moves in the prompt's direction: does the new
  part keep moving that way (judged on the new frames and the given frame next to them)?"""
  jobs = _jobs(_directional(prompts), seeds)
  context = prompting._default_context(chunk, None, backward)  # pylint: disable=protected-access
  new = (chunk.frames - chunk.video_frames(context, first=False) if backward
         else chunk.frames - chunk.video_frames(context, first=True))
  frames = chunk.frames + new
  full = [directed_clip(p.objects[0], p.background, frames, chunk.height, chunk.width,
                        _speed(chunk), np.random.default_rng(200 + s)) for p, s in jobs]
  sources = np.stack([f[new:] if backward else f[:chunk.frames] for f in full])
  videos = prompting.extend(generator, sources, [p.caption for p, _ in jobs],
                            [s for _, s in jobs], new, backward=backward, chunk=chunk, **settings)
  window = slice(0, new + 1) if backward else slice(chunk.frames - 1, frames)
  verdicts = [shapes_judge.judge_prompt(v[window], p) for v, (p, _) in zip(videos, jobs)]
  error = np.mean([np.abs(v[window].astype(float) - f[window]).mean()
                   for v, f in zip(videos, full)])
  return {"metrics": {"motion_continues": _mean(v["motion"] for v in verdicts),
                      "color": _mean(v["color"] for v in verdicts),
                      "shape": _mean(v["shape"] for v in verdicts),
                      "new_frames": new, "pixel_error_vs_truth": float(error)},
          "videos": list(videos)}


def connect(generator, chunk, prompts, seeds, settings) -> dict:
  """Two clips cut from one straight path, with the chunk's gap between them: the joined clip
  should show no jump at either given end (largest boundary step over the median step inside
  the given clips), the prompt's color and shape, and one direction of motion throughout.

  The path moves at the training clips' pace, the world's only one, so the clips are as long as
  the whole path lets them be inside the frame (5 frames each at the demo's size). Slower paths
  ask for a pace the model never saw: given clips at 2/3 of it, the demo DiT waits at the first
  clip's end and then catches up in a jump (bench/RESULTS.md, issue 5 fifth pass)."""
  jobs = _jobs(_directional(prompts), seeds)
  first_context = second_context = prompting.connect_context(chunk)
  head = chunk.video_frames(first_context, first=True)
  tail = chunk.video_frames(second_context, first=False)
  gap = chunk.frames - head - tail
  room = min(chunk.height, chunk.width) * (1 - shapes.SIZE_RANGE[1])
  shortest = max(head, tail) + 1  # at least one step inside each given clip
  clip = max(shortest, min(chunk.frames, int((room / _speed(chunk) + 1 - gap) // 2)))
  frames = 2 * clip + gap
  step = min(_speed(chunk), room / (frames - 1))
  full = [directed_clip(p.objects[0], p.background, frames, chunk.height, chunk.width, step,
                        np.random.default_rng(300 + s)) for p, s in jobs]
  first = np.stack([f[:clip] for f in full])
  second = np.stack([f[clip + gap:] for f in full])
  videos = prompting.connect(generator, first, second, [p.caption for p, _ in jobs],
                             [s for _, s in jobs], chunk, **settings)
  ratios, verdicts = [], []
  for video, (prompt, _) in zip(videos, jobs):
    steps = np.linalg.norm(np.diff(centroids(video, prompt), axis=0), axis=1)
    inside = np.concatenate([steps[:clip - 1], steps[clip + gap:]])
    boundary = max(steps[clip - 1], steps[clip + gap - 1])
    ratios.append(boundary / max(np.nanmedian(inside), 0.5))  # NaN if the object vanished
    verdicts.append(shapes_judge.judge_prompt(video, prompt))
  ratios = np.asarray(ratios)
  return {"metrics": {"ends_matched": float(np.mean(ratios <= 2.0)),
                      "boundary_step_over_median": float(np.nanmedian(ratios)),
                      "color": _mean(v["color"] for v in verdicts),
                      "shape": _mean(v["shape"] for v in verdicts),
                      "motion": _mean(v["motion"] for v in verdicts), "gap_frames": gap,
                      "clip_frames": clip, "pace": step / _speed(chunk)},
          "videos": list(videos)}


def frame_differences(video: np.ndarray) -> tuple[np.ndarray, float]:
  """Mean absolute pixel change of each consecutive pair, and of the wrap from last to first."""
  video = video.astype(np.float32)
  steps = np.abs(np.diff(video, axis=0)).mean(axis=(1, 2, 3))
  return steps, float(np.abs(video[0] - video[-1]).mean())


def _wrap_ratios(videos) -> tuple[np.ndarray, np.ndarray]:
  """Each loop's wrap over its median step, and the wrap's rank among its steps."""
  ratios, ranks = [], []
  for video in videos:
    steps, wrap = frame_differences(video)
    # A still clip changes by ~0 a frame: one gray level is the floor of a visible change.
    ratios.append(wrap / max(float(np.median(steps)), 1.0))
    ranks.append(float(np.mean(steps < wrap)))
  return np.asarray(ratios), np.asarray(ranks)


# Motions whose path comes back to its start within a clip, so a loop of the clip's length exists
# in the world. A straight mover crosses TRAVEL of the frame per clip and never turns: its loop
# has to carry it back against its prompt.
CYCLIC_MOTIONS = ("static", "bouncing")


def in_view(prompt: shapes.Prompt) -> bool:
  return prompt.objects[0].motion in CYCLIC_MOTIONS


def loop(generator, chunk, prompts, seeds, settings, strength: float | None = None) -> dict:
  """Loops of rendered clips: is the wrap from the last frame to the first no larger than a
  typical (median) frame-to-frame change of the loop? The chunk redraws the clip's last latent
  frame, given one latent frame at each end, from `strength` (default: the run's
  sample.loop_strength) of the way towards noise, at the guidance in `settings` (default:
  `prompting.loop_guidance`). A wrap no different from any other step would be at or below the
  median only half the time, so its rank among the loop's steps is given too (0.5 for such a
  wrap, 1 for a wrap larger than every step).

  Figures are given over all prompts and over those with cyclic motions; `reference_*` is the
  rendered clip's own frames coded and decoded on repeat as a loop is, with nothing generated,
  which shows where the judge puts a seamless loop of decoded frames."""
  if strength is None:
    strength = prompting.default_loop_strength(generator)
  guidance = prompting.loop_guidance(generator, strength, settings.get("guidance"))
  jobs = _jobs(prompts, seeds)
  sources = np.stack([shapes.render_prompt(p, chunk.frames, chunk.height, chunk.width, 400 + s)
                      for p, s in jobs])
  videos = prompting.loop(generator, sources, [p.caption for p, _ in jobs], [s for _, s in jobs],
                          chunk=chunk, first_context=1, second_context=1, strength=strength,
                          **{**settings, "guidance": guidance})
  cyclic = np.asarray([in_view(p) for p, _ in jobs])
  ratios, ranks = _wrap_ratios(videos)
  reference, reference_ranks = np.full(1, np.nan), np.full(1, np.nan)
  if cyclic.any():
    clips = sources[cyclic]
    reference, reference_ranks = _wrap_ratios(prompting.decode_cycle(
        generator, generator.encode(clips[:, :1]), prompting.cycle_codes(generator, clips)))
  verdicts = [shapes_judge.judge_prompt(v, p) for v, (p, _) in zip(videos, jobs)]
  return {"metrics": {"wrap_within_typical": float(np.mean(ratios <= 1.0)),
                      "wrap_over_median_step": float(np.median(ratios)),
                      "wrap_rank": float(np.mean(ranks)),
                      "wrap_within_typical_cyclic": _mean(ratios[cyclic] <= 1.0),
                      "wrap_over_median_step_cyclic": (float(np.median(ratios[cyclic]))
                                                       if cyclic.any() else float("nan")),
                      "wrap_rank_cyclic": _mean(ranks[cyclic]),
                      "reference_wrap_over_median_step_cyclic": float(np.median(reference)),
                      "reference_wrap_rank_cyclic": float(np.mean(reference_ranks)),
                      "strength": float(strength), "guidance": float(guidance),
                      "color": _mean(v["color"] for v in verdicts),
                      "shape": _mean(v["shape"] for v in verdicts)},
          "videos": list(videos)}


def _recolored(prompt: shapes.Prompt) -> shapes.Prompt:
  obj = prompt.objects[0]
  colors = list(shapes.COLORS)
  other = colors[(colors.index(obj.color) + 3) % len(colors)]  # a far color (red -> yellow...)
  return shapes.Prompt((shapes.ObjectSpec(other, obj.shape, obj.motion),), prompt.background)


def edit(generator, chunk, prompts, seeds, settings, strength: float) -> dict:
  """Video -> video by text: a rendered clip of the prompt in another color, edited under the
  prompt. The edit should take the prompt's color and keep the clip's shape and motion."""
  jobs = _jobs(prompts, seeds)
  sources = np.stack([shapes.render_prompt(_recolored(p), chunk.frames, chunk.height, chunk.width,
                                           500 + s) for p, s in jobs])
  videos = prompting.edit(generator, sources, [p.caption for p, _ in jobs], [s for _, s in jobs],
                          strength, **settings)
  verdicts = [shapes_judge.judge_prompt(v, p) for v, (p, _) in zip(videos, jobs)]
  # How much of the source's layout survives: the object's path against the source's.
  offsets = [np.nanmean(np.linalg.norm(centroids(v, p) - centroids(s, _recolored(p)), axis=1))
             for v, s, (p, _) in zip(videos, sources, jobs)]
  return {"metrics": {"color": _mean(v["color"] for v in verdicts),
                      "shape": _mean(v["shape"] for v in verdicts),
                      "motion": _mean(v["motion"] for v in verdicts),
                      "path_offset_px": float(np.nanmedian(offsets)), "strength": strength},
          "videos": list(videos)}


def true_minute_kept(generator, chunk, prompts, total: int, placements: int = 1) -> float:
  """Share of chunk-long windows the judge keeps on the true `total`-frame videos of the prompts
  whose motion stays in view (CYCLIC_MOTIONS: the rendered clip played on repeat, since a still or
  bouncing path ends where it starts), coded and decoded by the run's VAE, `placements` per prompt
  (render seeds from 400, a size and place each). This is where the judge puts a rollout that
  never drifts; nan without such prompts. It depends on the placement: the demo VAE draws some
  large circles rounded square enough to read as squares (bench/judge_ceiling.py)."""
  staying = [p for p in prompts if in_view(p)]
  if not staying:
    return float("nan")
  window = chunk.frames - 1
  # The VAE codes 1 + factor * k frames; code the fewest that cover `total`, then cut.
  coded_frames = chunk.video_frames(-(-(total - 1) // chunk.factor) + 1, first=True)
  kept = []
  for prompt in staying:
    for seed in range(400, 400 + placements):  # one at a time: a video's frames are all held here
      # Seed 400 is the loop mode's first clip, so both references judge the same clip.
      clip = shapes.render_prompt(prompt, chunk.frames, chunk.height, chunk.width, seed)
      video = shapes.on_repeat(clip, coded_frames)
      video = generator.decode(generator.encode(video[None]))[0, :total]
      kept.extend(_window_verdict(video[start:start + window + 1], prompt) == "kept"
                  for start in range(0, total - window, window))
  return float(np.mean(kept))


def _window_verdict(video: np.ndarray, prompt: shapes.Prompt) -> str:
  """"kept" (color and shape), "misshaped" (the object is there in its color, read as another
  shape) or "lost" (no object of the prompt's color and size)."""
  verdict = shapes_judge.judge_prompt(video, prompt)
  if not verdict["color"]:
    return "lost"
  return "kept" if verdict["shape"] else "misshaped"


class BouncePace:
  """A streamed video's bouncing object against the world's: its mean centroid step in its
  prompt's color, over the steps whose both frames show that color, with each axis in units of
  the world's bounce speed along it (2 TRAVEL of the frame per clip), so 1 is the world's pace."""

  def __init__(self, prompt: shapes.Prompt, chunk: prompting.Chunk):
    self.prompt, self.last, self.total, self.steps = prompt, None, 0.0, 0
    self.scale = (np.array([chunk.width, chunk.height], np.float64) * 2 * shapes.TRAVEL
                  / (chunk.frames - 1))

  def add(self, frames: np.ndarray) -> None:
    track = centroids(frames, self.prompt) / self.scale
    if self.last is not None:
      track = np.concatenate([self.last[None], track])
    step = np.linalg.norm(np.diff(track, axis=0), axis=1)
    step = step[np.isfinite(step)]
    self.total, self.steps, self.last = self.total + step.sum(), self.steps + step.size, track[-1]

  def speed(self) -> float | None:
    return self.total / self.steps if self.steps else None


def check_rollout_seeds(seeds: int, name: str = "rollout seeds") -> None:
  # bool is an int in Python; True is a slip, not one seed.
  if isinstance(seeds, bool) or not (isinstance(seeds, (int, np.integer)) and seeds >= 1):
    raise ValueError(f"{name}={seeds} must be a whole number of rollouts per prompt, 1 or more")


def rollout(generator, chunk, prompts, settings, seconds: float, fps: int,
            refresh: float | None = None, seeds: int = 1, seen: bool = True) -> dict:
  """Minute-long videos, `seeds` per prompt: the share of chunk-long windows (and the worst video's
  share) that still show the prompt's color and shape, and the share of videos that keep every
  window, over all prompts and over those whose motion stays in view for a minute (bouncing,
  standing still; the world's straight movers reach a wall within two clips, and training never
  shows what happens there). Which windows a minute keeps varies from seed to seed (and at few
  training steps a rollout that drifts mostly stays drifted), so one video per prompt measures
  little; `seeds` > 1 counts over more. `refresh`: how far each chunk is redrawn
  (default: the run's sample.rollout_refresh; prompting.rollout). `reference_windows_in_view` is
  the judge on the in-view prompts' true videos (true_minute_kept), `seeds` placements each.

  `seen`: also roll out each in-view prompt's seen counterpart (shapes.seen_counterpart: its
  shape and motion in a color training shows them in) on the prompt's own seed, so that
  `..._seen_in_view` tells what the minute loses on any prompt from what it loses on unseen
  combinations. The other measures are of `prompts` alone: `misshaped_in_view` is the share of
  their in-view windows not kept whose object is there in its color but reads as another shape
  (nan when every window is kept); `first_sixth_in_view` and `last_sixth_in_view` the share kept
  in the minute's first and last sixth, apart when the rollout drifts; `bounce_pace` the
  bouncing objects' mean speed against the world's (BouncePace; 1 is the world's pace)."""
  check_rollout_seeds(seeds)
  total = round(seconds * fps)
  if refresh is None:
    refresh = prompting.default_refresh(generator)
  if settings.get("guidance") is None:
    settings = {**settings, "guidance": prompting.default_rollout_guidance(generator)}
  if settings.get("temperature") is None:
    settings = {**settings, "temperature": prompting.default_rollout_temperature(generator)}
  videos_of = [p for _ in range(seeds) for p in prompts]  # seed i + r * len(prompts): r-th repeat
  asked = len(videos_of)
  seeds_of = list(range(asked))
  if seen:  # each on its partner's seed: the two sides differ by the prompt, not the noise
    partners = [i for i, p in enumerate(videos_of) if in_view(p)]
    videos_of += [shapes.Prompt((shapes.seen_counterpart(videos_of[i].objects[0]),),
                                videos_of[i].background) for i in partners]
    seeds_of += partners
  pieces = prompting.rollout(generator, [p.caption for p in videos_of], seeds_of, total,
                             chunk=chunk, refresh=refresh, **settings)
  window = chunk.frames - 1
  verdicts, carry, firsts, lasts = [[] for _ in videos_of], None, None, None
  seams, inside = [], []  # mean pixel change across each chunk boundary, and within chunks
  bouncing = [i for i, p in enumerate(videos_of[:asked]) if p.objects[0].motion == "bouncing"]
  paces = {i: BouncePace(videos_of[i], chunk) for i in bouncing}
  for piece in pieces:  # judged as it streams: nothing but one window is held per video
    if carry is not None:
      seams.extend(np.abs(p[0].astype(np.float32) - c[-1]).mean()
                   for c, p in zip(carry[:asked], piece[:asked]))
    inside.extend(np.median(frame_differences(p)[0]) for p in piece[:asked] if len(p) > 1)
    for i, pace in paces.items():
      pace.add(piece[i])
    carry = piece if carry is None else np.concatenate([carry, piece], axis=1)
    if firsts is None:
      firsts = carry[:asked, :window + 1].copy()
    while carry.shape[1] >= window + 1:
      for i, prompt in enumerate(videos_of):
        verdicts[i].append(_window_verdict(carry[i, :window + 1], prompt))
      lasts = carry[:asked, :window + 1].copy()
      carry = carry[:, window:]
  shares = np.asarray([float(np.mean([v == "kept" for v in vs])) for vs in verdicts])
  staying = np.asarray([in_view(p) for p in videos_of[:asked]])
  shares, seen_shares = shares[:asked], shares[asked:]
  staying_verdicts = [vs for vs, stays in zip(verdicts[:asked], staying) if stays]
  not_kept = [v for vs in staying_verdicts for v in vs if v != "kept"]
  # The minute's first and last sixth (10 of its 59 windows): a rollout that drifts keeps fewer
  # at the end.
  sixth = max(1, round(len(verdicts[0]) / 6))
  first = [v == "kept" for vs in staying_verdicts for v in vs[:sixth]]
  last = [v == "kept" for vs in staying_verdicts for v in vs[-sixth:]]
  return {"metrics": {"frames": total, "windows": len(verdicts[0]), "seeds": seeds,
                      "color_and_shape_windows": float(shares.mean()),
                      "worst_video": float(shares.min()),
                      "videos_kept_whole": float(np.mean(shares == 1.0)),
                      "color_and_shape_windows_in_view": _mean(shares[staying]),
                      "worst_video_in_view": float(shares[staying].min()) if staying.any()
                                             else float("nan"),
                      "videos_kept_whole_in_view": _mean(shares[staying] == 1.0),
                      "misshaped_in_view": _mean(v == "misshaped" for v in not_kept),
                      "first_sixth_in_view": _mean(first),
                      "last_sixth_in_view": _mean(last),
                      "color_and_shape_windows_seen_in_view": _mean(seen_shares),
                      "videos_kept_whole_seen_in_view": _mean(seen_shares == 1.0),
                      # A chunk's first new frame against the last one before it: 1 when the
                      # seams between chunks are no larger than a typical step.
                      "seam_over_median_step": float(np.median(seams) / max(
                          float(np.median(inside)), 1.0)) if seams and inside else float("nan"),
                      # The bouncing objects' mean speed against the world's (1: its pace;
                      # lower temperatures trade pace for kept windows, bench/RESULTS.md).
                      "bounce_pace": _mean(pace.speed() for pace in paces.values()),
                      "refresh": refresh, "guidance": float(settings["guidance"]),
                      "temperature": float(settings["temperature"]),
                      "reference_windows_in_view": true_minute_kept(generator, chunk, prompts,
                                                                    total, seeds)},
          "videos": list(np.concatenate([firsts, lasts], axis=1)),
          # Per in-view video, its windows in order (where in a minute they go, which the shares
          # hide): "1" kept, "s" misshaped, "-" lost.
          "traces": [(p.caption, "".join(_TRACE_MARKS[v] for v in vs))
                     for p, vs, stays in zip(videos_of, verdicts, staying) if stays]}


_TRACE_MARKS = {"kept": "1", "misshaped": "s", "lost": "-"}


def evaluate_modes(generator, seeds: int = 2, settings: dict | None = None,
                   rollout_prompts: int | None = None, seconds: float = 60.0, fps: int = 8,
                   strength: float = prompting.EDIT_STRENGTH,
                   rollout_refresh: float | None = None,
                   loop_strength: float | None = None,
                   rollout_seeds: int = 1, rollout_seen: bool = True) -> dict[str, dict]:
  """Every mode on the held-out prompts (black background): {mode: {"metrics", "videos"}}.
  `strength` is the edit's; `rollout_refresh` and `loop_strength` default to the run's
  sample.rollout_refresh and sample.loop_strength; `rollout_seeds` minutes per prompt;
  `rollout_seen`: also the in-view prompts' seen counterparts (`rollout`)."""
  settings = settings or {}
  chunk = prompting.Chunk(generator)
  prompts = shapes.held_out_prompts("black")
  return {
      "animate": animate(generator, chunk, prompts, seeds, settings),
      "extend": extend(generator, chunk, prompts, seeds, settings, backward=False),
      "extend_back": extend(generator, chunk, prompts, seeds, settings, backward=True),
      "connect": connect(generator, chunk, prompts, seeds, settings),
      "loop": loop(generator, chunk, prompts, seeds, settings, loop_strength),
      "edit": edit(generator, chunk, prompts, seeds, settings, strength),
      "rollout": rollout(generator, chunk, prompts[:rollout_prompts], settings, seconds, fps,
                         rollout_refresh, rollout_seeds, seen=rollout_seen),
  }
