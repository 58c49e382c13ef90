"""The prompting-mode judges: their conditioning clips and measures are right on known videos, and
every mode runs end to end on a tiny run."""
import types

import numpy as np
import pytest

from sorajax import evaluate_modes, prompting
from sorajax.data import shapes, shapes_judge


@pytest.mark.parametrize("motion", ["left", "right", "up", "down"])
def test_directed_clips_move_as_told_and_stay_in_view(motion):
  prompt = shapes.Prompt((shapes.ObjectSpec("red", "circle", motion),), "black")
  video = evaluate_modes.directed_clip(prompt.objects[0], "black", 14, 32, 32, 1.6,
                                       np.random.default_rng(0))
  verdict = shapes_judge.judge_prompt(video, prompt)
  assert verdict["color"] and verdict["shape"] and verdict["motion"]
  track = evaluate_modes.centroids(video, prompt)
  axis, sign = shapes.DIRECTIONS[motion]
  np.testing.assert_allclose(np.diff(track[:, axis]), sign * 1.6, atol=0.35)
  with pytest.raises(ValueError, match="does not fit"):
    evaluate_modes.directed_clip(prompt.objects[0], "black", 40, 32, 32, 1.6,
                                 np.random.default_rng(0))


def test_frame_differences_see_a_seamless_wrap():
  prompt = shapes.Prompt((shapes.ObjectSpec("blue", "square", "right"),), "black")
  there = evaluate_modes.directed_clip(prompt.objects[0], "black", 7, 32, 32, 1.6,
                                       np.random.default_rng(1))
  loop = np.concatenate([there, there[-2:0:-1]])  # right then back: frame 0 follows the last
  steps, wrap = evaluate_modes.frame_differences(loop)
  assert wrap <= np.median(steps)
  _, cut = evaluate_modes.frame_differences(there)  # played on repeat it jumps back
  assert cut > 2 * np.median(steps)


def test_every_mode_runs_and_reports_its_measures(dit_workdir):
  from sorajax.generation import VideoGenerator  # pylint: disable=import-outside-toplevel
  generator = VideoGenerator(dit_workdir)
  chunk = prompting.Chunk(generator, frames=9)
  prompts = shapes.held_out_prompts("black")[:3]
  settings = dict(steps=2)
  results = {
      "animate": evaluate_modes.animate(generator, chunk, prompts, 1, settings),
      "extend_back": evaluate_modes.extend(generator, chunk, prompts, 1, settings, backward=True),
      "connect": evaluate_modes.connect(generator, chunk, prompts, 1, settings),
      "loop": evaluate_modes.loop(generator, chunk, prompts, 1, settings),
      "edit": evaluate_modes.edit(generator, chunk, prompts, 1, settings, 0.5),
      # 26 frames: a first chunk of 9, four of 4 new frames, then a piece of one frame.
      "rollout": evaluate_modes.rollout(generator, chunk, prompts[:2], settings, seconds=3.25,
                                        fps=8, seeds=2),
  }
  for mode, result in results.items():
    for name, value in result["metrics"].items():
      if name in ("color", "shape", "motion", "motion_continues", "ends_matched",
                  "wrap_within_typical", "color_and_shape_windows", "worst_video",
                  "color_and_shape_windows_in_view", "worst_video_in_view", "wrap_rank",
                  "wrap_within_typical_cyclic", "reference_windows_in_view",
                  "videos_kept_whole", "videos_kept_whole_in_view", "wrap_rank_cyclic",
                  "reference_wrap_rank_cyclic", "misshaped_in_view",
                  "color_and_shape_windows_seen_in_view", "videos_kept_whole_seen_in_view",
                  "first_sixth_in_view", "last_sixth_in_view"):
        assert 0.0 <= value <= 1.0 or np.isnan(value), (mode, name, value)
    assert all(v.dtype == np.uint8 and v.ndim == 4 for v in result["videos"]), mode
  assert results["connect"]["metrics"]["gap_frames"] == 4
  assert all(v.shape[0] == 8 for v in results["loop"]["videos"])  # 4 clip frames + 4 redrawn
  assert results["loop"]["metrics"]["strength"] == generator.config.sample.loop_strength < 1
  assert results["loop"]["metrics"]["guidance"] == generator.config.sample.loop_guidance
  assert results["connect"]["metrics"]["pace"] == 1.0  # 16x16: clips of 5 frames fit the path
  assert results["extend_back"]["metrics"]["new_frames"] == 5
  rollout = results["rollout"]["metrics"]
  assert rollout["frames"] == 26
  assert rollout["windows"] == 3  # 9-frame windows, 8 frames apart
  assert rollout["refresh"] == generator.config.sample.rollout_refresh
  assert rollout["guidance"] == generator.config.sample.rollout_guidance
  assert rollout["temperature"] == generator.config.sample.rollout_temperature
  assert np.isfinite(rollout["seam_over_median_step"]) and rollout["seam_over_median_step"] > 0
  # Two minutes per prompt, each from its own seed; a whole video adds 1 to the windows' mean.
  videos = results["rollout"]["videos"]
  assert rollout["seeds"] == 2 and len(videos) == 4
  assert not np.array_equal(videos[0], videos[2])
  assert rollout["videos_kept_whole"] <= rollout["color_and_shape_windows"]
  # The one in-view prompt (the red triangle bouncing) is also rolled out as its seen counterpart.
  assert 0.0 <= rollout["color_and_shape_windows_seen_in_view"] <= 1.0
  seen_whole = rollout["videos_kept_whole_seen_in_view"]
  assert seen_whole <= rollout["color_and_shape_windows_seen_in_view"]
  # Three windows: the first and the last sixth are a window each, so three times the in-view
  # share is their sum plus the middle window's share, which is in [0, 1].
  ends = rollout["first_sixth_in_view"] + rollout["last_sixth_in_view"]
  middle = 3 * rollout["color_and_shape_windows_in_view"] - ends
  assert -1e-6 <= middle <= 1 + 1e-6
  with pytest.raises(ValueError, match="rollout seeds=0 must be a whole number"):
    evaluate_modes.rollout(generator, chunk, prompts[:2], settings, seconds=3.25, fps=8, seeds=0)
  for bad in (True, 2.0):
    with pytest.raises(ValueError, match=f"rollout seeds={bad} must be a whole number"):
      evaluate_modes.check_rollout_seeds(bad)


def test_window_verdicts_tell_a_misread_shape_from_a_lost_object():
  square = shapes.ObjectSpec("cyan", "square", "static")
  clip = shapes.render_prompt(shapes.Prompt((square,), "black"), 9, 32, 32, 3)

  def verdict(obj):
    return evaluate_modes._window_verdict(clip, shapes.Prompt((obj,), "black"))

  assert verdict(square) == "kept"
  assert verdict(shapes.ObjectSpec("cyan", "circle", "static")) == "misshaped"
  assert verdict(shapes.ObjectSpec("red", "square", "static")) == "lost"


class _Coder:
  """Stands in for a run's VAE: codes a video as itself, or blacks out frames from `lost_from`."""

  def __init__(self, lost_from=None):
    self.lost_from = lost_from

  def encode(self, videos):
    return np.array(videos)

  def decode(self, latents):
    if self.lost_from is not None:
      latents[:, self.lost_from:] = 0
    return latents


def _on_repeat(obj: shapes.ObjectSpec, frames: int) -> np.ndarray:
  clip = shapes.render_prompt(shapes.Prompt((obj,), "black"), 9, 32, 32, 5)
  return shapes.on_repeat(clip, frames)


def test_rollout_measures_each_side_on_known_minutes(monkeypatch):
  """Known videos in place of a model: the held-out triangle bouncing keeps its shape for half the
  minute, then turns into a circle; the mover is lost at once; the seen counterpart is true."""
  triangle = shapes.ObjectSpec("red", "triangle", "bouncing")
  mover = shapes.ObjectSpec("red", "square", "left")
  asked = []

  def known_minutes(generator, captions, seeds, total, **kwargs):
    del generator, kwargs
    asked.append((list(captions), list(seeds)))
    half = _on_repeat(triangle, total // 2)
    circle = shapes.ObjectSpec("red", "circle", "bouncing")
    turned = np.concatenate([half, _on_repeat(circle, total - total // 2)])
    videos = {shapes.Prompt((triangle,), "black").caption: turned,
              shapes.Prompt((mover,), "black").caption: np.zeros_like(half[:1]).repeat(total, 0),
              shapes.Prompt((shapes.seen_counterpart(triangle),), "black").caption:
                  _on_repeat(shapes.seen_counterpart(triangle), total)}
    yield np.stack([videos[c] for c in captions])

  monkeypatch.setattr(prompting, "rollout", known_minutes)
  # A stand-in generator has no run to take the defaults from.
  guided = {"guidance": 3.0, "temperature": 0.7}
  chunk = types.SimpleNamespace(frames=9, height=32, width=32, factor=4,
                                video_frames=lambda latents, first: 1 + 4 * (latents - 1))
  prompts = [shapes.Prompt((triangle,), "black"), shapes.Prompt((mover,), "black")]
  result = evaluate_modes.rollout(_Coder(), chunk, prompts, guided, seconds=10, fps=8,
                                  refresh=0.0)
  metrics = result["metrics"]
  # Only the in-view minute has a trace: kept while a triangle, misshaped once a circle.
  ((caption, trace),) = result["traces"]
  assert caption == prompts[0].caption and len(trace) == 9
  assert trace.startswith("1111") and trace.endswith("ssss") and set(trace) <= {"1", "s"}
  # The seen counterpart (the green triangle bouncing) runs on its partner's seed, 0.
  assert asked[0][1] == [0, 1, 0] and asked[0][0][2].startswith("a green triangle bouncing")
  assert metrics["guidance"] == guided["guidance"]
  assert metrics["temperature"] == guided["temperature"]
  assert metrics["windows"] == 9  # 80 frames: windows start every 8 frames up to frame 64
  assert metrics["first_sixth_in_view"] == 1.0 and metrics["last_sixth_in_view"] == 0.0
  assert metrics["misshaped_in_view"] == 1.0  # the lost windows still show a red object
  assert 0.9 <= metrics["bounce_pace"] <= 1.05  # both halves bounce at the world's pace
  assert 4 / 9 <= metrics["color_and_shape_windows_in_view"] <= 5 / 9
  assert metrics["color_and_shape_windows"] == metrics["color_and_shape_windows_in_view"] / 2
  assert metrics["videos_kept_whole_in_view"] == 0.0
  assert metrics["color_and_shape_windows_seen_in_view"] == 1.0
  assert metrics["videos_kept_whole_seen_in_view"] == 1.0
  alone = evaluate_modes.rollout(_Coder(), chunk, prompts, guided, seconds=10, fps=8, refresh=0.0,
                                 seen=False)["metrics"]
  assert len(asked[-1][0]) == 2 and np.isnan(alone["color_and_shape_windows_seen_in_view"])
  movers = evaluate_modes.rollout(_Coder(), chunk, prompts[1:], guided, seconds=10, fps=8,
                                  refresh=0.0)["metrics"]
  assert len(asked[-1][0]) == 1  # no prompt in view: no counterpart either
  assert all(np.isnan(movers[k]) for k in ("first_sixth_in_view", "misshaped_in_view",
                                           "color_and_shape_windows_seen_in_view"))


@pytest.mark.parametrize("height, width", [(32, 32), (32, 64), (64, 32)])
def test_bounce_pace_is_one_at_the_worlds_speed_and_halves_in_slow_motion(height, width):
  chunk = types.SimpleNamespace(frames=9, height=height, width=width)
  for seed in range(3):  # bounces along either axis
    prompt = shapes.Prompt((shapes.ObjectSpec("cyan", "square", "bouncing"),), "black")
    minute = shapes.on_repeat(shapes.render_prompt(prompt, 9, height, width, seed), 80)
    whole, streamed, slow = (evaluate_modes.BouncePace(prompt, chunk) for _ in range(3))
    whole.add(minute)
    for start in range(0, 80, 8):  # as a rollout streams it, steps across pieces included
      streamed.add(minute[start:start + 8])
    slow.add(np.repeat(minute, 2, axis=0))
    assert 0.93 <= whole.speed() <= 1.05, (height, width, seed, whole.speed())
    assert streamed.speed() == pytest.approx(whole.speed())
    assert slow.speed() == pytest.approx(whole.speed() / 2, rel=0.02)
  empty = evaluate_modes.BouncePace(prompt, chunk)
  empty.add(np.zeros_like(minute))
  assert empty.speed() is None  # never seen: no pace, not 0


def test_the_true_minute_keeps_every_window_through_a_faithful_coder():
  chunk = types.SimpleNamespace(frames=9, height=32, width=32, factor=4,
                                video_frames=lambda latents, first: 1 + 4 * (latents - 1))
  prompts = shapes.held_out_prompts("black")
  assert evaluate_modes.true_minute_kept(_Coder(), chunk, prompts, 480) == 1.0
  # A coder that loses the object halfway loses the windows after it: 29 of the 59 end before
  # frame 240, and the one across it may go either way.
  half = evaluate_modes.true_minute_kept(_Coder(lost_from=240), chunk, prompts, 480)
  assert 29 / 59 <= half <= 30 / 59
  movers = [p for p in prompts if p.objects[0].motion in shapes.DIRECTIONS]
  assert np.isnan(evaluate_modes.true_minute_kept(_Coder(), chunk, movers, 480))


def test_the_true_minute_is_judged_at_several_placements(monkeypatch):
  chunk = types.SimpleNamespace(frames=9, height=32, width=32, factor=4,
                                video_frames=lambda latents, first: 1 + 4 * (latents - 1))
  prompts = [p for p in shapes.held_out_prompts("black") if evaluate_modes.in_view(p)][:2]
  render, drawn = shapes.render_prompt, []
  monkeypatch.setattr(shapes, "render_prompt",
                      lambda prompt, *a: drawn.append(a[-1]) or render(prompt, *a))
  # A coder that blanks one placement of the first prompt: one video of the 2 x 3 loses all.
  blank = render(prompts[0], 9, 32, 32, 401)[0]

  class Blanks(_Coder):
    def encode(self, videos):
      if np.array_equal(videos[0, 0], blank):
        videos = np.zeros_like(videos)
      return super().encode(videos)
  assert evaluate_modes.true_minute_kept(Blanks(), chunk, prompts, 80, placements=3) == 5 / 6
  assert drawn == [400, 401, 402] * 2


def test_the_modes_report_shows_the_seen_side_only_when_it_was_rolled_out(tmp_path):
  from sorajax import evaluate_report  # pylint: disable=import-outside-toplevel
  video = [np.zeros((9, 16, 16, 3), np.uint8)]

  def report(seen_share):
    metrics = {"color_and_shape_windows": 0.8, "videos_kept_whole": 0.25,
               "color_and_shape_windows_seen_in_view": seen_share,
               "videos_kept_whole_seen_in_view": seen_share}
    return "\n".join(evaluate_report.write_modes(str(tmp_path), {"rollout": {"metrics": metrics,
                                                                      "videos": video}}, 1.0))

  with_seen = report(0.5)
  assert "seen counterpart" in with_seen
  assert "| videos_kept_whole_seen_in_view | 50.0% |" in with_seen
  assert "| videos_kept_whole | 25.0% |" in with_seen
  alone = report(float("nan"))  # --norollout_seen
  assert "seen" not in alone and "nan" not in alone and "| videos_kept_whole | 25.0% |" in alone
