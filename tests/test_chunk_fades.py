"""bench/chunk_fades.py: one rollout chunk from a true context, judged on what it hands on."""
import importlib.util
import os

import numpy as np
import pytest

from sorajax import evaluate_modes
from sorajax.data import shapes

from tiny import ROOT

_spec = importlib.util.spec_from_file_location(
    "chunk_fades", os.path.join(ROOT, "bench", "chunk_fades.py"))
chunk_fades = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chunk_fades)

FRAMES, SIZE, CONTEXT, NEW = 9, 32, 5, 4
PLACEMENTS, SAMPLES, PHASE_STEP = 1, 2, 4


@pytest.fixture(scope="module")
def prompts():
  return [p for p in shapes.held_out_prompts("black") if evaluate_modes.in_view(p)]


def _fades(extend, prompts):
  return chunk_fades.fades(extend, prompts, PLACEMENTS, SAMPLES, PHASE_STEP, FRAMES, SIZE, CONTEXT)


def _prompt_of(caption, prompts):
  return next(p for p in prompts if p.caption == caption)


def test_a_chunk_that_holds_its_last_frame_keeps_every_object(prompts):
  shown_lengths = []

  def hold(clips, caption, seeds):
    assert len(seeds) == len(clips) == SAMPLES and len(set(seeds)) == SAMPLES
    shown_lengths.append(clips.shape[1])
    return np.concatenate([clips, np.repeat(clips[:, -1:], NEW, axis=1)], axis=1)

  counts, rows = _fades(hold, prompts)
  phases = len(range(0, FRAMES - 1, PHASE_STEP))
  assert counts == {"kept": len(prompts) * PLACEMENTS * phases * SAMPLES, "lost": 0,
                    "misshaped": 0}
  assert sorted(set(shown_lengths)) == [CONTEXT + p for p in range(0, FRAMES - 1, PHASE_STEP)]
  assert [row.split("  ")[1] for row in rows] == [p.caption for p in prompts]


def test_a_chunk_that_goes_black_loses_every_object(prompts):
  def black(clips, caption, seeds):
    return np.concatenate([clips, np.zeros_like(clips[:, :NEW])], axis=1)

  counts, rows = _fades(black, prompts)
  assert counts["kept"] == counts["misshaped"] == 0 and counts["lost"] > 0
  entries = [entry for row in rows for entry in row.split("  ")[0].split()]
  assert entries and all(entry.endswith(f":{SAMPLES}/0") for entry in entries)


def test_a_chunk_that_redraws_the_object_as_another_shape_is_misshaped(prompts):
  def reshape(clips, caption, seeds):
    obj = _prompt_of(caption, prompts).objects[0]
    other = next(s for s in shapes.SHAPES if s != obj.shape)
    placement = shapes.Placement(shapes.ObjectSpec(obj.color, other, "static"), 0.3 * SIZE,
                                 np.full((NEW, 2), 0.3 * SIZE))
    drawn = shapes.draw([placement], "black", frames=NEW, height=SIZE, width=SIZE)
    return np.concatenate([clips, np.repeat(drawn[None], len(clips), axis=0)], axis=1)

  counts, _ = _fades(reshape, prompts)
  assert counts["kept"] == counts["lost"] == 0 and counts["misshaped"] > 0


def test_the_last_frame_decides_lost(prompts):
  prompt = prompts[0]
  clip = shapes.render_prompt(prompt, FRAMES, SIZE, SIZE, 400)
  assert chunk_fades.chunk_verdict(clip[:NEW], prompt) == "kept"
  faded = clip[:NEW].copy()
  faded[-1] = 0  # present in three of four frames, gone from the one handed on
  assert chunk_fades.chunk_verdict(faded, prompt) == "lost"
