"""The rule-based judge: right on rendered truth, robust to generator-like damage, and it
rejects prompts the video does not show."""
import dataclasses

import numpy as np
import pytest

from sorajax.data import shapes
from sorajax.data import shapes_judge as judge

ATTRIBUTES = ("color", "shape", "motion")
# (frames, size, examples judged against their own prompt, examples judged against a changed one)
SETTINGS = {"9x32x32": (9, 32, 200, 150), "17x64x64": (17, 64, 200, 150)}


def _prompt(*objects, background="black"):
  return shapes.Prompt(tuple(shapes.ObjectSpec(*o) for o in objects), background)


@pytest.fixture(scope="module", params=list(SETTINGS))
def rendered(request):
  frames, size, count, _ = SETTINGS[request.param]
  world = shapes.ShapesWorld(frames=frames, height=size, width=size, seed=11)
  return request.param, [world[i] for i in range(count)]


def _rates(verdicts):
  return {key: float(np.mean([v[key] for v in verdicts])) for key in ATTRIBUTES}


def test_right_on_rendered_truth(rendered):
  name, examples = rendered
  verdicts = [v for ex in examples for v in judge.judge_video(ex["video"], ex["prompt"])]
  rates = _rates(verdicts)
  print(f"{name} truth accuracy over {len(verdicts)} objects: {rates}")
  assert all(rate >= 0.98 for rate in rates.values()), rates


def _changed(prompt: shapes.Prompt, attribute: str, rng) -> shapes.Prompt:
  """The prompt with `attribute` of every object changed to another valid value."""
  used = {obj.color for obj in prompt.objects}
  objects = []
  for obj in prompt.objects:
    current = getattr(obj, attribute)
    if attribute == "color":
      choices = [c for c in shapes.COLORS if c not in used]
    else:
      choices = [v for v in {"shape": shapes.SHAPES, "motion": shapes.MOTIONS}[attribute]
                 if v != current]
    value = choices[rng.integers(len(choices))]
    used.add(value)
    objects.append(dataclasses.replace(obj, **{attribute: value}))
  return shapes.Prompt(tuple(objects), prompt.background)


def test_rejects_mismatched_prompts(rendered):
  name, examples = rendered
  count = SETTINGS[name][3]
  rng = np.random.default_rng(0)
  rejected = {key: [] for key in ATTRIBUTES}
  for index, ex in enumerate(examples[:count]):
    attribute = ATTRIBUTES[index % 3]
    wrong = _changed(ex["prompt"], attribute, rng)
    for verdict in judge.judge_video(ex["video"], wrong):
      rejected[attribute].append(verdict[attribute] is False)
  rates = {key: float(np.mean(v)) for key, v in rejected.items()}
  print(f"{name} mismatch rejection rate: {rates}")
  assert all(rate >= 0.95 for rate in rates.values()), rates


def _damage(video, rng):
  """What a small generator does: a 3x3 blur, a global color shift of 20, noise of std 12."""
  x = video.astype(np.float32)
  padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="edge")
  h, w = x.shape[1:3]
  x = sum(padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9
  x = x + rng.choice([-20.0, 20.0], size=3) + rng.normal(0.0, 12.0, x.shape)
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def test_survives_noise_blur_and_color_shift():
  world = shapes.ShapesWorld(frames=9, height=32, width=32, seed=12)
  rng = np.random.default_rng(1)
  verdicts = []
  for index in range(100):
    ex = world[index]
    verdicts += judge.judge_video(_damage(ex["video"], rng), ex["prompt"])
  rates = _rates(verdicts)
  print(f"damaged 9x32x32 accuracy over {len(verdicts)} objects: {rates}")
  assert all(rate >= 0.95 for rate in rates.values()), rates


@pytest.mark.parametrize("truth,claimed", [
    ("left", "right"), ("right", "left"), ("up", "down"), ("static", "left"),
    ("left", "static"), ("bouncing", "left"), ("left", "bouncing"), ("bouncing", "static"),
])
def test_motion_confusions_are_caught(truth, claimed):
  for seed in range(4):
    video = shapes.render_prompt(_prompt(("green", "circle", truth)), 9, 32, 32, seed=seed)
    [right] = judge.judge_video(video, _prompt(("green", "circle", truth)))
    [wrong] = judge.judge_video(video, _prompt(("green", "circle", claimed)))
    assert right["motion"] is True and wrong["motion"] is False, (seed, right["details"])


def test_held_out_prompts_are_judged_right():
  for background in shapes.BACKGROUNDS:
    for seed, prompt in enumerate(shapes.held_out_prompts(background)):
      video = shapes.render_prompt(prompt, 9, 32, 32, seed=seed)
      verdict = judge.judge_prompt(video, prompt)
      assert verdict["color_and_motion"] and verdict["shape"], (prompt.caption, verdict)


@pytest.mark.parametrize("frames,height,width", [(5, 32, 48), (9, 48, 32), (3, 128, 128)])
def test_other_sizes(frames, height, width):
  world = shapes.ShapesWorld(frames=frames, height=height, width=width, seed=13)
  for index in range(10):
    ex = world[index]
    verdict = judge.judge_prompt(ex["video"], ex["prompt"])
    assert verdict["color"] and verdict["shape"] and verdict["motion"], ex["caption"]


def test_shape_margin_sides_with_the_reading():
  prompt = _prompt(("yellow", "circle", "static"))
  video = shapes.render_prompt(prompt, 9, 32, 32, seed=3)
  [verdict] = judge.judge_video(video, prompt)
  assert verdict["shape"] and judge.shape_margin(verdict, "circle") > 0
  # The same blob asked about as a square: the circle template beats it, by the same gap.
  assert judge.shape_margin(verdict, "square") < 0
  assert -judge.shape_margin(verdict, "square") >= judge.shape_margin(verdict, "circle")
  # Blurring the drawing (as a lossy coder does) brings the circle closer to the square.
  soft = video.astype(np.float32)
  for _ in range(2):
    soft = (soft + np.roll(soft, 1, 1) + np.roll(soft, 1, 2) + np.roll(soft, (1, 1), (1, 2))) / 4
  [blurred] = judge.judge_video(soft.round().astype(np.uint8), prompt)
  assert judge.shape_margin(blurred, "circle") < judge.shape_margin(verdict, "circle")
  empty = np.zeros_like(video)
  assert np.isnan(judge.shape_margin(judge.judge_video(empty, prompt)[0], "circle"))


def test_single_frame_motion_is_not_observable():
  prompt = _prompt(("red", "triangle", "left"), ("blue", "square", "static"))
  video = shapes.render_prompt(prompt, 1, 32, 32)
  verdict = judge.judge_prompt(video, prompt)
  assert verdict["color"] is True and verdict["shape"] is True
  assert verdict["motion"] is None and verdict["color_and_motion"] is None
  assert all(obj["motion"] is None for obj in verdict["objects"])
  summary = judge.judge_summary([verdict])
  assert summary["color"] == 1.0 and np.isnan(summary["motion"])


def test_background_only_video_shows_nothing():
  prompt = _prompt(("red", "circle", "left"), background="gray")
  video = np.zeros((9, 32, 32, 3), np.uint8) + np.array(shapes.BACKGROUNDS["gray"], np.uint8)
  [verdict] = judge.judge_video(video, prompt)
  assert verdict == {**verdict, "color": False, "shape": False, "motion": False}


def test_judge_summary_rates():
  results = [
      {"color": True, "shape": True, "motion": True, "color_and_motion": True},
      {"color": True, "shape": False, "motion": False, "color_and_motion": False},
      {"color": False, "shape": False, "motion": None, "color_and_motion": None},
  ]
  summary = judge.judge_summary(results)
  assert summary["count"] == 3
  assert summary["color"] == pytest.approx(2 / 3)
  assert summary["motion"] == 0.5 and summary["color_and_motion"] == 0.5


def test_bad_inputs_raise():
  prompt = _prompt(("red", "circle", "left"))
  with pytest.raises(ValueError, match="uint8"):
    judge.judge_video(np.zeros((9, 32, 32, 3), np.float32), prompt)
  with pytest.raises(ValueError, match="distinct"):
    judge.judge_video(np.zeros((9, 32, 32, 3), np.uint8),
                      _prompt(("red", "circle", "left"), ("red", "square", "up")))


@pytest.mark.parametrize("track,motion", [
    ([[10, 10], [10.5, 10], [10, 10.5]], "static"),
    ([[10, 10], [15, 10], [20, 10]], "right"),
    ([[20, 10], [15, 10], [10, 10]], "left"),
    ([[10, 20], [10, 15], [10, 10]], "up"),  # y grows downward
    ([[10, 10], [10, 15], [10, 20]], "down"),
    ([[10, 10], [20, 10], [11, 10]], "bouncing"),
])
def test_classify_motion(track, motion):
  assert judge.classify_motion(np.array(track, float), 32, 32)[0] == motion


def test_largest_blobs_keeps_the_biggest_component_per_frame():
  mask = np.zeros((2, 8, 8), bool)
  mask[0, :2, :2] = True  # 4 pixels
  mask[0, 4:7, 4:7] = True  # 9 pixels: kept
  mask[1, 0, :] = True  # a row of 8: kept
  mask[1, 3, 3] = True
  blobs = judge.largest_blobs(mask)
  assert blobs[0].sum() == 9 and blobs[0, 5, 5]
  assert blobs[1].sum() == 8 and not blobs[1, 3, 3]


def _pace_of(video, prompt):
  [verdict] = judge.judge_video(video, prompt)
  return verdict["details"]


def test_pace_of_rendered_movers_is_the_training_pace():
  for seed, prompt in enumerate(p for p in shapes.held_out_prompts() if p.objects[0].motion
                                in shapes.DIRECTIONS):
    details = _pace_of(shapes.render_prompt(prompt, 9, 32, 32, seed=seed), prompt)
    assert details["travel"] == pytest.approx(1.0, abs=0.08), prompt.caption
    assert details["evenness"] > 0.7, (prompt.caption, details["track"])


def test_pace_sees_slow_and_stalling_movers():
  prompt = _prompt(("red", "square", "right"))
  video = shapes.render_prompt(prompt, 17, 32, 32, seed=3)
  slow = video[::2]  # the same path over 9 frames: a steady mover at the training pace
  assert _pace_of(slow, prompt)["travel"] == pytest.approx(1.0, abs=0.08)
  half = video[:9]  # half the path in a clip's length
  assert _pace_of(half, prompt)["travel"] == pytest.approx(0.5, abs=0.06)
  stalled = video[[0, 2, 2, 4, 6, 8, 8, 10, 12]]  # holds still across two frame pairs
  details = _pace_of(stalled, prompt)
  assert abs(details["evenness"]) < 0.1 and details["travel"] == pytest.approx(0.75, abs=0.08)
  back = video[[0, 4, 2, 6, 8, 10, 12, 14, 16]]  # one step back
  assert _pace_of(back, prompt)["evenness"] < -0.5
  still = _prompt(("red", "square", "static"))
  assert "travel" not in _pace_of(shapes.render_prompt(still, 9, 32, 32), still)
