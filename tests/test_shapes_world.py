"""The built-in shapes world: determinism, captions, the held-out split, layout, motion."""
import itertools

import numpy as np
import pytest

from sorajax.data import shapes
from sorajax.data import shapes_judge

BLACK = "black"


def _world(**kwargs):
  return shapes.ShapesWorld(**({"frames": 9, "height": 32, "width": 32} | kwargs))


def _prompt(*objects, background=BLACK):
  return shapes.Prompt(tuple(shapes.ObjectSpec(*o) for o in objects), background)


def _centroids(video, color):
  """(frames, 2) centroid (x, y) of the pixels closest to `color`."""
  dist = np.abs(video.astype(int) - np.array(shapes.COLORS[color])).sum(-1)
  mask = dist < 60
  ys, xs = np.mgrid[:video.shape[1], :video.shape[2]]
  count = mask.sum(axis=(1, 2))
  return np.stack([(mask * xs).sum(axis=(1, 2)) / count, (mask * ys).sum(axis=(1, 2)) / count], -1)


def test_palette_is_well_separated():
  colors = np.array(list(shapes.COLORS.values()), float)
  backgrounds = np.array(list(shapes.BACKGROUNDS.values()), float)
  assert list(shapes.COLORS)[:6] == ["red", "green", "blue", "yellow", "cyan", "magenta"]
  between_colors = np.linalg.norm(colors[:, None] - colors[None], axis=-1)
  assert between_colors[~np.eye(len(colors), dtype=bool)].min() >= 150
  assert np.linalg.norm(colors[:, None] - backgrounds[None], axis=-1).min() >= 150


def test_same_index_same_example_and_indices_differ():
  world = _world()
  first, again = world[7], _world()[7]
  np.testing.assert_array_equal(first["video"], again["video"])
  assert first["caption"] == again["caption"] and first["prompt"] == again["prompt"]
  videos = [world[i]["video"] for i in range(8)]
  assert all(not np.array_equal(a, b) for a, b in itertools.combinations(videos, 2))
  assert not np.array_equal(first["video"], _world(seed=1)[7]["video"])


@pytest.mark.parametrize("frames,height,width", [(1, 16, 16), (2, 16, 24), (9, 32, 32),
                                                 (17, 64, 64), (5, 40, 24), (3, 256, 256)])
def test_shapes_and_dtypes(frames, height, width):
  world = _world(frames=frames, height=height, width=width)
  for index in range(3):
    example = world[index]
    assert example["video"].shape == (frames, height, width, 3)
    assert example["video"].dtype == np.uint8
    assert isinstance(example["caption"], str)
    assert example["prompt"].caption == example["caption"]
    # Every object named in the caption is visible in the first frame.
    for obj in example["prompt"].objects:
      assert not np.isnan(_centroids(example["video"][:1], obj.color)).any()


def test_len_and_index_errors():
  world = _world(num_examples=5)
  assert len(world) == 5
  with pytest.raises(IndexError):
    world[5]
  with pytest.raises(ValueError, match="split"):
    _world(split="validation")
  with pytest.raises(ValueError, match="max_objects"):
    _world(max_objects=7)


def test_caption_text_and_round_trip():
  prompt = _prompt(("red", "circle", "left"), ("blue", "square", "bouncing"))
  assert prompt.caption == ("a red circle moving left and a blue square bouncing "
                            "on a black background")
  still = _prompt(("green", "triangle", "static"), background="navy")
  assert still.caption == "a green triangle standing still on a navy background"
  vocabulary = set(shapes.caption_vocabulary())
  world = _world(frames=1, max_objects=4)
  for index in range(200):
    example = world[index]
    assert shapes.parse_caption(example["caption"]) == example["prompt"]
    assert set(example["caption"].split()) <= vocabulary
  for obj in shapes.all_triples():
    assert shapes.parse_caption(shapes.Prompt((obj,), BLACK).caption).objects == (obj,)


def test_max_caption_words_is_the_longest_caption():
  longest = shapes.Prompt([shapes.ObjectSpec(c, "triangle", "static")
                           for c in ("yellow", "magenta", "green")], BLACK)
  assert len(longest.caption.split()) == shapes.max_caption_words(3)
  world = _world(frames=1, max_objects=3)
  assert max(len(world[i]["caption"].split()) for i in range(200)) <= shapes.max_caption_words(3)
  assert shapes.max_caption_words(1) == len(
      "a red circle moving left on a black background".split())


def test_json_round_trip():
  prompt = _prompt(("cyan", "circle", "up"), ("yellow", "triangle", "down"), background="gray")
  assert shapes.Prompt.from_json(prompt.to_json()) == prompt


@pytest.mark.parametrize("text,word", [
    ("a purple circle moving left on a black background", "purple"),
    ("a red circle moving sideways on a black background", "sideways"),
    ("a red circle standing still on a white background", "white"),
    ("a red circle bouncing on a black background please", "please"),
])
def test_bad_caption_names_the_word_and_the_choices(text, word):
  with pytest.raises(ValueError) as error:
    shapes.parse_caption(text)
  message = str(error.value)
  assert word in message and "\n" not in message
  if word != "please":
    assert "expected one of" in message


def test_truncated_caption_raises():
  with pytest.raises(ValueError, match="ends early"):
    shapes.parse_caption("a red circle moving")


def test_unknown_names_rejected():
  with pytest.raises(ValueError, match="purple"):
    shapes.ObjectSpec("purple", "circle", "left")
  with pytest.raises(ValueError, match="background"):
    _prompt(("red", "circle", "left"), background="white")


def test_held_out_split_definition():
  triples = shapes.all_triples()
  held = [t for t in triples if shapes.is_held_out(t)]
  assert 0.10 <= len(held) / len(triples) <= 0.15
  train = [t for t in triples if not shapes.is_held_out(t)]
  assert {t.color for t in train} == set(shapes.COLORS)
  assert {t.shape for t in train} == set(shapes.SHAPES)
  assert {t.motion for t in train} == set(shapes.MOTIONS)
  prompts = shapes.held_out_prompts()
  assert [p.objects[0] for p in prompts] == held
  assert all(p.background == BLACK for p in prompts)
  assert shapes.held_out_prompts("brown")[0].background == "brown"


def test_seen_counterparts_keep_the_task_in_a_seen_color():
  for prompt in shapes.held_out_prompts():
    held = prompt.objects[0]
    seen = shapes.seen_counterpart(held)
    assert not shapes.is_held_out(seen)
    assert (seen.shape, seen.motion) == (held.shape, held.motion) and seen.color != held.color
  # The next color in COLORS order that training shows the pair in; magenta wraps to red.
  assert shapes.seen_counterpart(shapes.ObjectSpec("cyan", "square", "bouncing")).color == "magenta"
  assert shapes.seen_counterpart(shapes.ObjectSpec("magenta", "square", "static")).color == "red"


def test_seen_counterparts_skip_colors_held_out_too(monkeypatch):
  real = shapes.is_held_out
  monkeypatch.setattr(shapes, "is_held_out",
                      lambda obj: real(obj) or obj == shapes.ObjectSpec("green", "triangle",
                                                                        "bouncing"))
  held = shapes.ObjectSpec("red", "triangle", "bouncing")
  assert shapes.seen_counterpart(held).color == "blue"
  monkeypatch.setattr(shapes, "is_held_out", lambda obj: obj.motion == "bouncing")
  with pytest.raises(ValueError, match="no color shows a triangle bouncing in training"):
    shapes.seen_counterpart(held)


def test_train_split_never_shows_held_out_triples():
  world = _world(frames=1, height=16, width=16)
  seen = set()
  for index in range(2000):
    prompt, _ = world.scene(index)
    assert not any(shapes.is_held_out(obj) for obj in prompt.objects)
    seen.update(prompt.objects)
  assert {o.color for o in seen} == set(shapes.COLORS)
  assert {o.shape for o in seen} == set(shapes.SHAPES)
  assert {o.motion for o in seen} == set(shapes.MOTIONS)


def test_heldout_split_has_one_held_out_object():
  world = _world(split="heldout")
  seen = set()
  for index in range(300):
    prompt = world[index]["prompt"]
    assert len(prompt.objects) == 1 and shapes.is_held_out(prompt.objects[0])
    seen.add(prompt.objects[0])
  assert len(seen) == len(shapes.held_out_prompts())


def test_object_counts_and_distinct_colors():
  world = _world(min_objects=2, max_objects=3)
  counts = set()
  for index in range(100):
    objects = world[index]["prompt"].objects
    counts.add(len(objects))
    assert len({o.color for o in objects}) == len(objects)
  assert counts == {2, 3}


def _boxes_apart(a, b):
  """True if two placements' boxes are disjoint in every frame."""
  apart = (a.xy + a.size <= b.xy) | (b.xy + b.size <= a.xy)
  return bool(apart.any(axis=1).all())


@pytest.mark.parametrize("height,width", [(32, 32), (16, 16), (64, 48)])
def test_objects_never_overlap_and_stay_inside(height, width):
  world = _world(height=height, width=width, min_objects=3, max_objects=3)
  for index in range(100):
    prompt, placements = world.scene(index)
    assert [p.obj for p in placements] == list(prompt.objects)
    for a, b in itertools.combinations(placements, 2):
      assert _boxes_apart(a, b)
    for p in placements:
      assert (p.xy >= -1e-9).all()
      assert (p.xy + p.size <= np.array([width, height]) + 1e-9).all()


def test_crowded_scenes_drop_objects_and_say_so():
  world = _world(height=16, width=16, min_objects=6, max_objects=6)
  palette = np.array(list(shapes.COLORS.values()))
  counts = set()
  for index in range(10):
    example = world[index]
    named = {o.color for o in example["prompt"].objects}
    counts.add(len(named))
    pixels = example["video"].reshape(-1, 1, 3).astype(int)
    # Pixels mostly covered by one color; edges blend only with the background.
    near = (np.abs(pixels - palette).sum(-1) < 150).any(axis=0)
    shown = {name for name, hit in zip(shapes.COLORS, near) if hit}
    assert shown == named
  assert min(counts) < 6  # six objects do not fit in 16x16, so some were dropped
  with pytest.raises(ValueError, match="could not place"):
    crowd = [(c, "square", "right") for c in shapes.COLORS]
    shapes.render(_prompt(*crowd), frames=9, height=16, width=16, rng=np.random.default_rng(0))


def test_single_frame_is_a_still_image():
  video = shapes.render_prompt(_prompt(("red", "square", "right")), frames=1, height=32, width=32)
  assert video.shape == (1, 32, 32, 3)


@pytest.mark.parametrize("motion,axis,sign", [("right", 0, 1), ("left", 0, -1), ("down", 1, 1),
                                              ("up", 1, -1)])
def test_moving_objects_travel_a_fixed_fraction(motion, axis, sign):
  for frames, size in [(9, 32), (17, 64), (4, 48)]:
    video = shapes.render_prompt(_prompt(("cyan", "circle", motion)), frames, size, size, seed=3)
    track = _centroids(video, "cyan")
    net = (track[-1] - track[0]) / size
    assert sign * net[axis] == pytest.approx(shapes.TRAVEL, abs=0.03)
    assert abs(net[1 - axis]) < 0.02
    steps = np.diff(track[:, axis]) * sign
    assert (steps > 0).all()  # steady motion, no jumps back


def test_static_objects_do_not_move():
  video = shapes.render_prompt(_prompt(("red", "triangle", "static")), 9, 32, 32)
  assert (video == video[0]).all()


def test_bouncing_reaches_a_wall_and_comes_back():
  for seed in range(8):
    video = shapes.render_prompt(_prompt(("yellow", "square", "bouncing")), 9, 32, 32, seed=seed)
    track = _centroids(video, "yellow")
    from_start = np.abs(track - track[0]).max(axis=0) / 32
    axis = int(np.argmax(from_start))
    assert from_start[axis] == pytest.approx(shapes.TRAVEL, abs=0.03)
    assert np.abs(track[-1] - track[0]).max() < 0.5  # back where it started
    # At mid-clip it touches a wall along the bounce axis.
    mask = np.abs(video[4].astype(int) - shapes.COLORS["yellow"]).sum(-1) < 300
    profile = mask.any(axis=0) if axis == 0 else mask.any(axis=1)  # columns for x, rows for y
    assert profile[0] or profile[-1]


def test_a_bouncing_clip_on_repeat_is_seamless():
  clip = shapes.render_prompt(_prompt(("yellow", "square", "bouncing")), 9, 32, 32, seed=2)
  video = shapes.on_repeat(clip, 30)
  assert video.shape == (30, 32, 32, 3)
  for t in (0, 7, 8, 16, 29):  # frame t is the clip's frame t mod 8, across every seam
    np.testing.assert_array_equal(video[t], clip[t % 8])
  # Across the seam the step is the clip's own last step, since the clip ends where it starts.
  seam = np.abs(video[8].astype(int) - video[7]).mean()
  assert seam == pytest.approx(np.abs(clip[8].astype(int) - clip[7]).mean(), abs=0.5)
  with pytest.raises(ValueError, match="1 frame"):
    shapes.on_repeat(clip[:1], 30)


def _bouncing_paths(bounce_phase, seed=0, k=64):
  rng = np.random.default_rng(seed)
  sizes = rng.uniform(*shapes.SIZE_RANGE, k) * 32
  return sizes, shapes.trajectories("bouncing", sizes, frames=9, height=32, width=32, rng=rng,
                                    bounce_phase=bounce_phase)


def test_bouncing_at_any_phase_is_one_round_trip_in_view():
  sizes, middle = _bouncing_paths("middle")
  _, any_phase = _bouncing_paths("any")
  # The same draws before the phase: the same segment between far point and wall, another start.
  assert (any_phase >= middle.min(axis=1, keepdims=True) - 1e-9).all()
  assert (any_phase <= middle.max(axis=1, keepdims=True) + 1e-9).all()
  assert np.abs(any_phase[:, 0] - middle[:, 0]).max() > 1.0
  np.testing.assert_allclose(any_phase[:, -1], any_phase[:, 0], atol=1e-9)  # ends where it starts
  assert (any_phase >= 0).all() and (any_phase <= 32 - sizes[:, None, None] + 1e-9).all()
  # Frame to frame it moves at the world's bouncing pace (slower only at a turn).
  steps = np.abs(np.diff(any_phase, axis=1)).max(axis=-1)
  assert steps.max() == pytest.approx(2 * shapes.TRAVEL * 32 / 8)
  # Starts spread over the round trip, where "middle" always starts at the far point.
  reach = np.abs(middle - middle[:, :1]).max(axis=(1, 2))
  start_offset = np.abs(any_phase[:, 0] - middle[:, 0]).max(axis=-1) / reach
  assert start_offset.min() < 0.2 and start_offset.max() > 0.8


def test_bouncing_at_any_phase_reads_as_bouncing():
  world = _world(bounce_phase="any", max_objects=1, seed=3)
  assert "bounce_phase='any'" in repr(world) and "bounce_phase" not in repr(_world())
  for seed in range(12):
    prompt = _prompt(("green", "circle", "bouncing"))
    rng = np.random.default_rng(seed)
    _, placements = shapes.layout(prompt, frames=9, height=32, width=32, rng=rng,
                                  bounce_phase="any")
    video = shapes.draw(placements, BLACK, frames=9, height=32, width=32)
    verdict = shapes_judge.judge_prompt(video, prompt)
    assert verdict["motion"] and verdict["shape"] and verdict["color"], seed


def test_an_unknown_bounce_phase_names_the_valid_ones():
  with pytest.raises(ValueError, match="unknown bounce_phase 'late'; valid: middle, any"):
    _world(bounce_phase="late")


def test_edges_are_anti_aliased():
  video = shapes.render_prompt(_prompt(("red", "circle", "static")), 1, 64, 64)
  reds = np.unique(video[0, :, :, 0])
  assert len(reds) > 4  # partial coverage gives in-between shades


def test_paraphrases_use_no_caption_word_and_say_every_attribute():
  vocabulary = set(shapes.caption_vocabulary(reworded=True)) - {"a", "and"}
  names = (list(shapes.COLORS) + list(shapes.SHAPES) + list(shapes.MOTIONS)
           + list(shapes.BACKGROUNDS))
  assert set(shapes.PARAPHRASES) == set(names)
  prompt = shapes.Prompt((shapes.ObjectSpec("red", "circle", "left"),
                          shapes.ObjectSpec("cyan", "triangle", "bouncing")), "navy")
  for variant in (0, 1):
    text = shapes.paraphrase(prompt, variant)
    assert not vocabulary & set(text.split()), text  # other words, but for a and and
    for name in ("red", "circle", "left", "cyan", "triangle", "bouncing", "navy"):
      assert shapes.PARAPHRASES[name][variant] in text
  assert shapes.paraphrase(prompt, 0) != shapes.paraphrase(prompt, 1)


def test_reworded_captions_name_the_same_scene_in_training_words():
  plain = shapes.ShapesWorld(frames=3, height=16, width=16, max_objects=3, seed=4)
  reworded = shapes.ShapesWorld(frames=3, height=16, width=16, max_objects=3, seed=4,
                                rewording=0.5)
  vocabulary = shapes.caption_vocabulary(reworded=True)
  assert vocabulary[:len(shapes.caption_vocabulary())] == shapes.caption_vocabulary()  # ids kept
  changed = 0
  for i in range(40):
    a, b = plain[i], reworded[i]
    np.testing.assert_array_equal(a["video"], b["video"])
    assert a["prompt"] == b["prompt"]
    assert set(b["caption"].split()) <= set(vocabulary)
    changed += a["caption"] != b["caption"]
  assert 10 <= changed <= 30  # about half
  assert reworded[7]["caption"] == reworded[7]["caption"]  # a pure function of the index
  count = lambda text: len(text.split())
  longest = count(shapes.longest_caption(3, count, reworded=True))
  assert max(count(reworded[i]["caption"]) for i in range(200)) <= longest
  assert count(shapes.longest_caption(3, count)) == shapes.max_caption_words(3)
  with pytest.raises(ValueError, match=r"rewording=1.5 must be a share in \[0, 1\]"):
    shapes.ShapesWorld(frames=3, height=16, width=16, rewording=1.5)


def test_anchor_frames_show_the_scene_elsewhere_and_leave_the_clip_as_it_was():
  plain, anchored = _world(max_objects=1), _world(max_objects=1, anchor=True)
  assert "anchor=True" in repr(anchored) and "anchor" not in repr(plain)
  places = []
  for index in range(20):
    example, other = anchored[index], plain[index]
    assert "anchor" not in other
    np.testing.assert_array_equal(example["video"], other["video"])  # same clip, same caption
    assert example["caption"] == other["caption"]
    anchor = example["anchor"]
    assert anchor.shape == (1, 32, 32, 3) and anchor.dtype == np.uint8
    np.testing.assert_array_equal(anchor, anchored[index]["anchor"])  # fixed by the index
    (obj,) = example["prompt"].objects
    # The object's color covers as many pixels as in the clip (same size, same shape) ...
    covered = lambda v: (np.abs(v.astype(int) - shapes.COLORS[obj.color]).sum(-1) < 60).sum()
    assert covered(anchor[0]) == pytest.approx(covered(example["video"][0]), rel=0.35)
    # ... and the background is the clip's.
    corner_free = np.abs(anchor[0].astype(int) - shapes.BACKGROUNDS[example["prompt"].background])
    assert (corner_free.sum(-1) < 3).mean() > 0.5
    places.append(_centroids(anchor, obj.color)[0] - _centroids(example["video"][:1], obj.color)[0])
  # Elsewhere in the frame: not where the clip starts.
  assert np.median(np.linalg.norm(places, axis=1)) > 4
