"""bench/judge_ceiling.py: what the judge reads in true clips after a coder has been through
them."""
import dataclasses
import importlib.util
import math
import os

import numpy as np
import pytest

from sorajax import evaluate_modes
from sorajax.data import shapes

from tiny import ROOT

_spec = importlib.util.spec_from_file_location(
    "judge_ceiling", os.path.join(ROOT, "bench", "judge_ceiling.py"))
judge_ceiling = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(judge_ceiling)

PLACEMENTS = 3


@pytest.fixture(scope="module")
def prompts():
  return [p for p in shapes.held_out_prompts("black") if evaluate_modes.in_view(p)]


def test_a_lossless_coder_reads_as_the_truth(prompts):
  kept, rows = judge_ceiling.ceiling(lambda clips: clips, prompts, PLACEMENTS, 9, 32)
  assert set(rows) == {p.caption for p in prompts}
  for row in rows.values():
    assert row["coded_shape"] == row["raw_shape"]
    assert row["coded_margin"] == pytest.approx(row["raw_margin"])
    assert row["coded_margin_min"] > 0  # the truth is read right, so every margin is positive
  assert kept == pytest.approx(np.mean([row["coded_shape"] for row in rows.values()]))
  assert kept == 1.0


def test_a_coder_that_loses_the_object_keeps_nothing(prompts):
  kept, rows = judge_ceiling.ceiling(np.zeros_like, prompts, PLACEMENTS, 9, 32)
  assert kept == 0.0
  for row in rows.values():
    assert row["raw_shape"] == 1.0 and row["coded_shape"] == 0.0
    assert row["misread_seeds"] == list(range(PLACEMENTS))
    assert math.isnan(row["coded_margin"]) and math.isnan(row["coded_margin_min"])


def test_a_coder_that_misdraws_one_prompt_is_charged_to_that_prompt(prompts):
  cyan_square = next(p for p in prompts if p.objects[0].shape == "square")
  assert cyan_square.objects[0].color == "cyan"
  circle = dataclasses.replace(
      cyan_square, objects=(dataclasses.replace(cyan_square.objects[0], shape="circle"),))

  def placements(prompt):
    return np.stack([shapes.render_prompt(prompt, 9, 32, 32, s) for s in range(PLACEMENTS)])
  squares, circles = placements(cyan_square), placements(circle)

  def code(clips):  # the cyan squares come back round, at the same size and place
    return circles if np.array_equal(clips, squares) else clips

  kept, rows = judge_ceiling.ceiling(code, prompts, PLACEMENTS, 9, 32)
  assert rows[cyan_square.caption]["coded_shape"] == 0.0
  assert rows[cyan_square.caption]["coded_margin_min"] < 0
  assert all(row["coded_shape"] == 1.0 for caption, row in rows.items()
             if caption != cyan_square.caption)
  assert kept == pytest.approx(1 - 1 / len(prompts))


def test_a_noised_coder_is_repeatable_and_strays_further_with_more_noise(vae_workdir, prompts):
  clips = np.stack([shapes.render_prompt(prompts[0], 5, 16, 16, seed) for seed in range(4)])
  error = lambda coded: float(np.abs(coded.astype(np.float32) - clips).mean())
  clean = judge_ceiling.load_coder(vae_workdir)[0](clips)
  small, large = (judge_ceiling.load_coder(vae_workdir, noise)[0] for noise in (0.5, 5.0))
  np.testing.assert_array_equal(small(clips), small(clips))
  assert error(clean) < error(small(clips)) < error(large(clips))
