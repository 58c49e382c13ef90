"""The built-in world: procedurally rendered, captioned videos of moving shapes.

Every example is a pure function of (seed, split, index, frames, height, width), so the
dataset needs no files, is random-access, and every host agrees on it. Captions follow a
tiny fixed grammar, so they can be parsed back into the structured `Prompt` they came from:

    a red circle moving left and a blue square bouncing on a black background

Some (color, shape, motion) triples are held out of training entirely; a model that draws
them has composed attributes it only ever saw apart. `shapes_judge` checks the videos.
"""
import dataclasses
import math

import numpy as np

# Saturated colors: any two differ by 200 in at least one channel, so a judge can tell them
# apart through noise, blur and color drift. Dicts keep insertion order; the order fixes the
# held-out split, so only append.
COLORS = {
    "red": (230, 30, 30),
    "green": (30, 230, 30),
    "blue": (30, 30, 230),
    "yellow": (230, 230, 30),
    "cyan": (30, 230, 230),
    "magenta": (230, 30, 230),
}
SHAPES = ("square", "circle", "triangle")
MOTIONS = ("left", "right", "up", "down", "static", "bouncing")
# Plain dark backgrounds, each at least 170 away (RGB distance) from every object color.
BACKGROUNDS = {
    "black": (0, 0, 0),
    "gray": (60, 60, 60),
    "navy": (15, 20, 60),
    "brown": (60, 40, 20),
}

SIZE_RANGE = (0.22, 0.3)  # object side, as a fraction of min(height, width)
TRAVEL = 0.4  # fraction of the frame a moving object crosses over one clip
GAP = 0.06  # clearance kept between objects, as a fraction of min(height, width)
SUPERSAMPLE = 4  # anti-aliasing: SUPERSAMPLE x SUPERSAMPLE samples per pixel
PLACEMENT_TRIES = 256  # candidate placements drawn per object; the first that fits wins
LAYOUT_RESTARTS = 16  # whole-layout retries before objects are dropped
# Fraction of an object's square bounding box that the shape fills.
AREA_FACTOR = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5}

_MOTION_PHRASES = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "static": "standing still",
    "bouncing": "bouncing",
}
# motion -> (axis, sign); axis 0 is x (grows right), axis 1 is y (grows down).
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}
_SPLITS = {"train": 0, "heldout": 1}
# Where a bouncing clip starts in its period (`trajectories`): "middle" touches the wall at
# mid-clip, "any" at a random point of the clip, so the far end's turn can fall inside it too.
BOUNCE_PHASES = ("middle", "any")


def _check_name(kind: str, name: str, valid) -> None:
  if name not in valid:
    raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
  color: str
  shape: str
  motion: str

  def __post_init__(self):
    _check_name("color", self.color, COLORS)
    _check_name("shape", self.shape, SHAPES)
    _check_name("motion", self.motion, MOTIONS)

  @property
  def phrase(self) -> str:
    return f"a {self.color} {self.shape} {_MOTION_PHRASES[self.motion]}"


@dataclasses.dataclass(frozen=True)
class Prompt:
  objects: tuple[ObjectSpec, ...]
  background: str

  def __post_init__(self):
    # Accept a list for convenience but store a tuple, so prompts stay hashable.
    object.__setattr__(self, "objects", tuple(self.objects))
    if not self.objects:
      raise ValueError("a prompt needs at least one object")
    _check_name("background", self.background, BACKGROUNDS)

  @property
  def caption(self) -> str:
    objects = " and ".join(obj.phrase for obj in self.objects)
    return f"{objects} on a {self.background} background"

  def to_json(self) -> dict:
    return {
        "objects": [dataclasses.asdict(obj) for obj in self.objects],
        "background": self.background,
    }

  @classmethod
  def from_json(cls, data: dict) -> "Prompt":
    objects = tuple(ObjectSpec(**obj) for obj in data["objects"])
    return cls(objects, data["background"])


# ---------------------------------------------------------------------------
# Caption grammar.
# ---------------------------------------------------------------------------


def caption_vocabulary(reworded: bool = False) -> list[str]:
  """Every word any caption can contain, sorted; `reworded`: then the words of REWORDINGS and
  REWORDED_FRAMES, sorted after them (so the plain captions' words keep their places)."""
  words = {"a", "and", "on", "background"}
  words.update(COLORS, SHAPES, BACKGROUNDS)
  for phrase in _MOTION_PHRASES.values():
    words.update(phrase.split())
  if not reworded:
    return sorted(words)
  more = {w for options in REWORDINGS.values() for phrase in options for w in phrase.split()}
  more.update(w for frame in REWORDED_FRAMES for w in frame.split() if "{" not in w)
  return sorted(words) + sorted(more - words)


def longest_caption(max_objects: int, count, reworded: bool = False) -> str:
  """The caption with up to `max_objects` objects that `count` (a tokenizer's token count) finds
  longest, taking in each slot its longest choice (captions tokenize word by word)."""
  longest = lambda options: max(options, key=count)
  choices = lambda name, plain: (plain,) + (REWORDINGS[name] if reworded else ())
  color = longest([w for c in COLORS for w in choices(c, c)])
  shape = longest([w for s in SHAPES for w in choices(s, s)])
  motion = longest([w for m in MOTIONS for w in choices(m, _MOTION_PHRASES[m])])
  background = longest([w for b in BACKGROUNDS for w in choices(b, b)])
  objects = " and ".join([f"a {color} {shape} {motion}"] * max_objects)
  frames = REWORDED_FRAMES if reworded else (_PLAIN_FRAME,)
  return longest([f.format(objects=objects, background=background) for f in frames])


def max_caption_words(max_objects: int) -> int:
  """Words in the longest caption with up to `max_objects` objects (size text inputs by this)."""
  longest_phrase = 3 + max(len(phrase.split()) for phrase in _MOTION_PHRASES.values())
  return max_objects * longest_phrase + (max_objects - 1) + len("on a _ background".split())


class _WordReader:
  """Walks a caption word by word; errors name the bad word and what would fit."""

  def __init__(self, text: str):
    self.text = text
    self.words = text.lower().split()
    self.pos = 0

  def take(self, valid) -> str:
    valid = tuple(valid)
    if self.pos == len(self.words):
      raise ValueError(
          f"caption ends early; expected one of: {', '.join(valid)} (caption: {self.text!r})")
    word = self.words[self.pos]
    if word not in valid:
      raise ValueError(f"unknown word {word!r} at position {self.pos + 1}; expected one of: "
                       f"{', '.join(valid)} (caption: {self.text!r})")
    self.pos += 1
    return word

  def finish(self) -> None:
    if self.pos != len(self.words):
      raise ValueError(f"unexpected word {self.words[self.pos]!r} after the end of the caption "
                       f"(caption: {self.text!r})")


def _read_motion(reader: _WordReader) -> str:
  first = reader.take(("moving", "standing", "bouncing"))
  if first == "moving":
    return reader.take(DIRECTIONS)
  if first == "standing":
    reader.take(("still",))
    return "static"
  return "bouncing"


def parse_caption(text: str) -> Prompt:
  """Inverse of `Prompt.caption`; raises ValueError for text outside the grammar."""
  reader = _WordReader(text)
  objects = []
  while True:
    reader.take(("a",))
    color = reader.take(COLORS)
    shape = reader.take(SHAPES)
    objects.append(ObjectSpec(color, shape, _read_motion(reader)))
    if reader.take(("and", "on")) == "on":
      break
  reader.take(("a",))
  background = reader.take(BACKGROUNDS)
  reader.take(("background",))
  reader.finish()
  return Prompt(tuple(objects), background)


# ---------------------------------------------------------------------------
# Held-out split.
# ---------------------------------------------------------------------------


def is_held_out(obj: ObjectSpec) -> bool:
  """About 12% of triples (13 of 108); every color, shape and motion stays in training."""
  ci = list(COLORS).index(obj.color)
  si = SHAPES.index(obj.shape)
  mi = MOTIONS.index(obj.motion)
  return (ci + 2 * si + mi) % 9 == 0


def all_triples() -> list[ObjectSpec]:
  return [ObjectSpec(c, s, m) for c in COLORS for s in SHAPES for m in MOTIONS]


def seen_counterpart(obj: ObjectSpec) -> ObjectSpec:
  """The same shape and motion in the next color (COLORS order) that training shows them in: the
  same drawing task without the unseen combination, to tell what a held-out triple costs apart
  from what the task does. With is_held_out's split the next color is always seen."""
  colors = list(COLORS)
  start = colors.index(obj.color)
  for step in range(1, len(colors)):
    other = ObjectSpec(colors[(start + step) % len(colors)], obj.shape, obj.motion)
    if not is_held_out(other):
      return other
  raise ValueError(f"no color shows a {obj.shape} {obj.motion} in training")


# Other wordings training captions may take (ShapesWorld's `rewording`), so that a model learns
# that several words mean one color, shape or motion. None of them is a PARAPHRASES word: the
# paraphrased prompts stay unseen.
REWORDINGS = {
    "red": ("ruby", "cherry"), "green": ("jade", "grassy"), "blue": ("sapphire", "ultramarine"),
    "yellow": ("canary", "sunflower"), "cyan": ("teal", "peacock"),
    "magenta": ("purple", "violet"),
    "square": ("cube", "tile"), "circle": ("dot", "orb"), "triangle": ("arrowhead", "cone"),
    "left": ("sliding leftward", "gliding to the left"),
    "right": ("sliding rightward", "gliding to the right"),
    "up": ("ascending", "floating upward"), "down": ("descending", "dropping downward"),
    "static": ("stationary", "frozen in place"), "bouncing": ("bounding", "springing repeatedly"),
    "black": ("ebony", "inky"), "gray": ("slate", "charcoal"), "navy": ("ink", "deep"),
    "brown": ("coffee", "walnut"),
}
_PLAIN_FRAME = "{objects} on a {background} background"
REWORDED_FRAMES = (_PLAIN_FRAME, "{objects} over a {background} background",
                   "{objects} in front of a {background} background")


def reword(prompt: Prompt, rng: np.random.Generator) -> str:
  """`prompt`'s caption with each word kept or swapped for a REWORDINGS one, in a drawn frame."""
  pick = lambda name, plain: ((plain,) + REWORDINGS[name])[rng.integers(3)]
  objects = " and ".join(
      f"a {pick(o.color, o.color)} {pick(o.shape, o.shape)} "
      f"{pick(o.motion, _MOTION_PHRASES[o.motion])}" for o in prompt.objects)
  frame = REWORDED_FRAMES[rng.integers(len(REWORDED_FRAMES))]
  return frame.format(objects=objects, background=pick(prompt.background, prompt.background))


# Other words for every color, shape, motion and background, none of them a caption word: prompts
# in them ask whether a text encoder knows words the world's captions never use (evaluate.py).
PARAPHRASES = {
    "red": ("crimson", "scarlet"), "green": ("emerald", "lime"), "blue": ("azure", "cobalt"),
    "yellow": ("golden", "lemon"), "cyan": ("turquoise", "aqua"),
    "magenta": ("fuchsia", "pink"),
    "square": ("box", "block"), "circle": ("disc", "ball"), "triangle": ("wedge", "pyramid"),
    "left": ("heading west", "drifting westward"), "right": ("heading east", "drifting eastward"),
    "up": ("rising", "climbing skyward"), "down": ("falling", "plunging"),
    "static": ("motionless", "at rest"), "bouncing": ("hopping around", "ricocheting about"),
    "black": ("dark", "jet"), "gray": ("grey", "ash"), "navy": ("midnight", "indigo"),
    "brown": ("chocolate", "umber"),
}


def paraphrase(prompt: Prompt, variant: int) -> str:
  """`prompt` in other words (PARAPHRASES, choice `variant` mod 2), e.g. "one crimson disc heading
  west against a dark backdrop"."""
  word = lambda name: PARAPHRASES[name][variant % 2]
  objects = " and ".join(f"one {word(o.color)} {word(o.shape)} {word(o.motion)}"
                         for o in prompt.objects)
  return f"{objects} against a {word(prompt.background)} backdrop"


def held_out_prompts(background: str = "black") -> list[Prompt]:
  """One single-object prompt per held-out triple, in a fixed order."""
  return [Prompt((obj,), background) for obj in all_triples() if is_held_out(obj)]


_TRAIN_OBJECTS = {c: [o for o in all_triples() if o.color == c and not is_held_out(o)]
                  for c in COLORS}
_HELD_OUT_OBJECTS = [o for o in all_triples() if is_held_out(o)]


# ---------------------------------------------------------------------------
# Layout: sizes and per-frame positions, kept apart in every frame.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Placement:
  obj: ObjectSpec
  size: float  # side of the object's square bounding box, pixels
  xy: np.ndarray  # (frames, 2) top-left corner (x, y) of the bounding box, pixels


def _progress(frames: int) -> np.ndarray:
  """Clip time in [0, 1] per frame; a single frame sits at the start."""
  return np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)


def trajectories(motion: str, sizes: np.ndarray, *, frames: int, height: int, width: int,
                 rng: np.random.Generator, bounce_phase: str = "middle") -> np.ndarray:
  """(k, frames, 2) top-left corners for k candidate objects of side `sizes` (k,).

  Every path stays inside the frame. Moving objects cross TRAVEL of the frame per clip,
  whatever the frame count. Bouncing ones go back and forth between a wall and a point TRAVEL
  from it, one round trip a clip, so a clip ends where it starts: with bounce_phase="middle" it
  starts at the far point and touches the wall at mid-clip; with "any" it starts anywhere in
  the round trip. A minute-long rollout continues the bounce from every point of it, which only
  "any" shows in training (bench/RESULTS.md, issue 5 twentieth pass).
  """
  _check_name("bounce_phase", bounce_phase, BOUNCE_PHASES)
  k = len(sizes)
  rows = np.arange(k)
  extent = np.array([width, height], np.float64)
  room = extent - sizes[:, None]  # the top-left corner may range over [0, room] per axis
  start = rng.uniform(0.0, 1.0, (k, 2)) * room
  tau = _progress(frames)
  offset = np.zeros((k, frames, 2))
  if motion in DIRECTIONS:
    axis, sign = DIRECTIONS[motion]
    travel = TRAVEL * extent[axis]
    # Leave `travel` free on the side it moves towards.
    free = rng.uniform(0.0, 1.0, k) * (room[:, axis] - travel)
    start[:, axis] = free + (travel if sign < 0 else 0.0)
    offset[:, :, axis] = sign * travel * tau
  elif motion == "bouncing":
    axis = rng.integers(0, 2, k)
    sign = np.where(rng.integers(0, 2, k) == 1, 1.0, -1.0)
    excursion = TRAVEL * extent[axis]
    # Start `excursion` away from the wall it heads for; the path is a triangle wave.
    start[rows, axis] = np.where(sign > 0, room[rows, axis] - excursion, excursion)
    # Drawn after the other draws, so "middle" keeps the world's random stream.
    phase = rng.uniform(0.0, 1.0, k) if bounce_phase == "any" else np.zeros(k)
    cycle = (tau[None, :] + phase[:, None]) % 1.0  # where each frame is in the round trip
    offset[rows, :, axis] = (sign * excursion)[:, None] * (1.0 - np.abs(2.0 * cycle - 1.0))
  return start[:, None, :] + offset


def _collides(xy: np.ndarray, sizes: np.ndarray, other: Placement, gap: float) -> np.ndarray:
  """(k,) True where a candidate's box, grown by `gap`, touches `other` in any frame."""
  near = xy + sizes[:, None, None] + gap > other.xy
  far = other.xy + other.size + gap > xy
  return np.any(np.all(near & far, axis=-1), axis=-1)


def _place(obj: ObjectSpec, placed: list[Placement], *, frames: int, height: int, width: int,
           rng: np.random.Generator, bounce_phase: str = "middle") -> Placement | None:
  """Draws PLACEMENT_TRIES candidates at once and keeps the first that fits, if any."""
  short = min(height, width)
  sizes = rng.uniform(*SIZE_RANGE, PLACEMENT_TRIES) * short
  xy = trajectories(obj.motion, sizes, frames=frames, height=height, width=width, rng=rng,
                    bounce_phase=bounce_phase)
  blocked = np.zeros(PLACEMENT_TRIES, bool)
  for other in placed:
    blocked |= _collides(xy, sizes, other, GAP * short)
  free = np.flatnonzero(~blocked)
  if free.size == 0:
    return None
  return Placement(obj, float(sizes[free[0]]), xy[free[0]])


def _check_size(frames: int, height: int, width: int) -> None:
  if frames < 1 or height < 16 or width < 16:
    raise ValueError(f"need frames >= 1 and height, width >= 16; got {frames}x{height}x{width}")


def _layout_once(prompt: Prompt, *, frames: int, height: int, width: int,
                 rng: np.random.Generator, bounce_phase: str) -> list[Placement]:
  placed = []
  for obj in prompt.objects:
    placement = _place(obj, placed, frames=frames, height=height, width=width, rng=rng,
                       bounce_phase=bounce_phase)
    if placement is not None:
      placed.append(placement)
  return placed


def layout(prompt: Prompt, *, frames: int, height: int, width: int, rng: np.random.Generator,
           allow_drop: bool = False,
           bounce_phase: str = "middle") -> tuple[Prompt, list[Placement]]:
  """Places the prompt's objects so that none overlap in any frame (bounce_phase: `trajectories`).

  Objects go in one at a time; when one does not fit, the whole layout starts over (early
  objects often block the rest by bad luck). After LAYOUT_RESTARTS failures the fullest
  layout wins: with allow_drop the returned prompt lists only the objects that fit,
  otherwise that raises ValueError.
  """
  _check_size(frames, height, width)
  best = []
  for _ in range(LAYOUT_RESTARTS):
    placed = _layout_once(prompt, frames=frames, height=height, width=width, rng=rng,
                          bounce_phase=bounce_phase)
    if len(placed) > len(best):
      best = placed
    if len(best) == len(prompt.objects):
      break
  if len(best) < len(prompt.objects) and not allow_drop:
    raise ValueError(f"could not place all of {prompt.caption!r} without overlap at "
                     f"{height}x{width}; use fewer objects or a larger frame")
  kept = Prompt(tuple(p.obj for p in best), prompt.background)
  return kept, best


# ---------------------------------------------------------------------------
# Drawing.
# ---------------------------------------------------------------------------


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Membership test in box coordinates: the bounding box is [0, 1) x [0, 1)."""
  if shape == "square":
    return (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
  if shape == "circle":
    return (u - 0.5) ** 2 + (v - 0.5) ** 2 < 0.25
  if shape == "triangle":  # apex at the top middle, base along the bottom edge
    return (v >= 0) & (v < 1) & (np.abs(u - 0.5) <= v / 2)
  raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")


def shape_coverage(shape: str, x0, y0, size, ox, oy, h: int, w: int) -> np.ndarray:
  """Fraction of each pixel a shape covers, in an h x w window per frame.

  x0, y0, size: (n,) bounding-box corner and side in pixels; ox, oy: (n,) integer window
  corners. Pixel (i, j) of a window spans [ox + j, ox + j + 1) x [oy + i, oy + i + 1).
  Returns (n, h, w) float32.
  """
  x0, y0, size, ox, oy = (np.asarray(a, np.float64).reshape(-1) for a in (x0, y0, size, ox, oy))
  sub = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
  xs = ox[:, None] + (np.arange(w)[:, None] + sub).reshape(-1)  # (n, w * SUPERSAMPLE)
  ys = oy[:, None] + (np.arange(h)[:, None] + sub).reshape(-1)
  u = (xs - x0[:, None]) / size[:, None]
  v = (ys - y0[:, None]) / size[:, None]
  inside = _inside(shape, u[:, None, :], v[:, :, None])  # (n, h * S, w * S)
  blocks = inside.reshape(len(x0), h, SUPERSAMPLE, w, SUPERSAMPLE).view(np.uint8)
  # Adding slices beats numpy's reductions over short axes by a wide margin.
  rows = sum(blocks[:, :, i] for i in range(SUPERSAMPLE))  # (n, h, w, S)
  count = sum(rows[..., j] for j in range(SUPERSAMPLE))
  return count.astype(np.float32) / SUPERSAMPLE**2


def draw(placements: list[Placement], background: str, *, frames: int, height: int,
         width: int) -> np.ndarray:
  """Composites anti-aliased objects over the background: (frames, height, width, 3) uint8."""
  win = max((int(math.ceil(p.size)) + 2 for p in placements), default=0)
  # Pad the canvas by one window so windows never need clipping at the borders.
  canvas = np.empty((frames, height + 2 * win, width + 2 * win, 3), np.float32)
  canvas[:] = BACKGROUNDS[background]
  t = np.arange(frames)[:, None, None]
  for p in placements:
    corner = np.floor(p.xy).astype(np.int64)  # (frames, 2) window corner
    cover = shape_coverage(p.obj.shape, p.xy[:, 0], p.xy[:, 1], np.full(frames, p.size),
                           corner[:, 0], corner[:, 1], win, win)
    yy = corner[:, 1, None, None] + win + np.arange(win)[None, :, None]
    xx = corner[:, 0, None, None] + win + np.arange(win)[None, None, :]
    under = canvas[t, yy, xx]
    color = np.asarray(COLORS[p.obj.color], np.float32)
    canvas[t, yy, xx] = under + (color - under) * cover[..., None]
  video = canvas[:, win:win + height, win:win + width]
  return np.round(video).astype(np.uint8)


def render(prompt: Prompt, *, frames: int, height: int, width: int,
           rng: np.random.Generator) -> np.ndarray:
  """Renders every object of `prompt` (ValueError if they cannot all be placed)."""
  _, placements = layout(prompt, frames=frames, height=height, width=width, rng=rng)
  return draw(placements, prompt.background, frames=frames, height=height, width=width)


def render_prompt(prompt: Prompt, frames: int, height: int, width: int,
                  seed: int = 0) -> np.ndarray:
  return render(prompt, frames=frames, height=height, width=width,
                rng=np.random.default_rng(seed))


def on_repeat(clip: np.ndarray, frames: int) -> np.ndarray:
  """The first `frames` frames of `clip` played on repeat: a still or bouncing clip ends where it
  starts, so its frames but the last, looped, make its true video of any length."""
  period = len(clip) - 1
  if period < 1:
    raise ValueError(f"a clip of {len(clip)} frame(s) has no motion to repeat; give 2 or more")
  return np.concatenate([clip[:-1]] * -(-frames // period))[:frames]


# ---------------------------------------------------------------------------
# The dataset.
# ---------------------------------------------------------------------------


class ShapesWorld:
  """Random-access captioned videos; example `index` depends only on the constructor args.

  split="train" never shows a held-out triple; split="heldout" shows exactly one object,
  always a held-out triple (max_objects and min_objects are ignored there). With `anchor`, each
  example also holds "anchor": one frame (1, height, width, 3) of the same scene at another time,
  every object at a place of its own drawn anywhere in the frame (`anchor_frame`).
  `bounce_phase`: where bouncing clips start in their round trip (`trajectories`).
  """

  def __init__(self, *, frames: int, height: int, width: int, split: str = "train",
               max_objects: int = 3, min_objects: int = 1, seed: int = 0,
               num_examples: int = 1_000_000, rewording: float = 0.0, anchor: bool = False,
               bounce_phase: str = "middle"):
    _check_name("split", split, _SPLITS)
    _check_name("bounce_phase", bounce_phase, BOUNCE_PHASES)
    _check_size(frames, height, width)
    if not 1 <= min_objects <= max_objects <= len(COLORS):
      raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(COLORS)} "
                       f"(one color each); got {min_objects}, {max_objects}")
    self.frames, self.height, self.width = frames, height, width
    self.split = split
    self.min_objects, self.max_objects = min_objects, max_objects
    self.seed = seed
    self.num_examples = num_examples
    if not 0.0 <= rewording <= 1.0:
      raise ValueError(f"rewording={rewording} must be a share in [0, 1]")
    self.rewording = rewording  # share of captions worded with REWORDINGS (see `reword`)
    self.anchor = anchor
    self.bounce_phase = bounce_phase

  def __len__(self) -> int:
    return self.num_examples

  def __repr__(self) -> str:
    # Stable across runs: grain stores it in checkpoints to check a resumed run reads the same data.
    return (f"ShapesWorld(frames={self.frames}, height={self.height}, width={self.width}, "
            f"split={self.split!r}, min_objects={self.min_objects}, "
            f"max_objects={self.max_objects}, seed={self.seed}, num_examples={self.num_examples}"
            + (f", rewording={self.rewording}" if self.rewording else "")
            + (f", bounce_phase={self.bounce_phase!r}" if self.bounce_phase != "middle" else "")
            + (", anchor=True)" if self.anchor else ")"))

  def _sample_prompt(self, rng: np.random.Generator) -> Prompt:
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    if self.split == "heldout":
      return Prompt((_HELD_OUT_OBJECTS[rng.integers(len(_HELD_OUT_OBJECTS))],), background)
    count = int(rng.integers(self.min_objects, self.max_objects + 1))
    # Distinct colors, so every object can be told apart by color alone.
    colors = rng.choice(list(COLORS), size=count, replace=False)
    objects = []
    for color in colors:
      choices = _TRAIN_OBJECTS[str(color)]
      objects.append(choices[rng.integers(len(choices))])
    return Prompt(tuple(objects), background)

  def scene(self, index: int) -> tuple[Prompt, list[Placement]]:
    """The prompt actually rendered for `index` and where its objects are."""
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for {self.num_examples} examples")
    rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
    prompt = self._sample_prompt(rng)
    return layout(prompt, frames=self.frames, height=self.height, width=self.width, rng=rng,
                  allow_drop=True, bounce_phase=self.bounce_phase)

  def __getitem__(self, index: int) -> dict:
    prompt, placements = self.scene(index)
    video = draw(placements, prompt.background, frames=self.frames, height=self.height,
                 width=self.width)
    caption = prompt.caption
    if self.rewording:  # its own stream, so the scenes stay those of the plain world
      rng = np.random.default_rng([self.seed, _SPLITS[self.split], index, 1])
      if rng.random() < self.rewording:
        caption = reword(prompt, rng)
    example = {"video": video, "caption": caption, "prompt": prompt}
    if self.anchor:  # its own stream too
      rng = np.random.default_rng([self.seed, _SPLITS[self.split], index, 2])
      example["anchor"] = anchor_frame(placements, prompt.background, height=self.height,
                                       width=self.width, rng=rng)
    return example


def anchor_frame(placements: list[Placement], background: str, *, height: int, width: int,
                 rng: np.random.Generator) -> np.ndarray:
  """(1, height, width, 3): the placed objects, each at a uniform place in the frame, as a frame of
  the same video a long time away would show them: same look, anywhere. Objects may overlap."""
  moved = []
  for p in placements:
    room = np.array([width, height], np.float64) - p.size
    moved.append(Placement(p.obj, p.size, (rng.uniform(0.0, 1.0, 2) * room)[None]))
  return draw(moved, background, frames=1, height=height, width=width)
