"""Which frames training hands to the model clean: mode masks, mixing probabilities, bad
settings."""
import jax
import numpy as np
import pytest

from sorajax.diffusion import frame_conditioning as fc


def test_each_mode_gives_its_frames():
  rng = jax.random.key(0)
  expected = {"first": [1, 0, 0, 0], "last": [0, 0, 0, 1], "ends": [1, 0, 0, 1]}
  for mode, row in expected.items():
    given = np.asarray(fc.sample_given(rng, 5, 4, {mode: 1.0}))
    np.testing.assert_array_equal(given, np.tile(np.array(row, bool), (5, 1)))
  prefix = np.asarray(fc.sample_given(rng, 400, 4, {"prefix": 1.0}))
  lengths = prefix.sum(axis=1)
  # A prefix: leading frames only, 1 to 3 of them, each length drawn.
  np.testing.assert_array_equal(prefix, np.arange(4)[None, :] < lengths[:, None])
  assert set(lengths.tolist()) == {1, 2, 3}
  suffix = np.asarray(fc.sample_given(rng, 400, 4, {"suffix": 1.0}))
  lengths = suffix.sum(axis=1)
  np.testing.assert_array_equal(suffix, np.arange(4)[None, :] >= 4 - lengths[:, None])
  assert set(lengths.tolist()) == {1, 2, 3}


def test_random_frames_leave_at_least_one_to_generate():
  given = np.asarray(fc.sample_given(jax.random.key(3), 4000, 3, {"random": 1.0}))
  assert not given.all(axis=1).any()
  patterns = {tuple(row) for row in given.tolist()}
  assert len(patterns) == 7  # every pattern but all-given, the middle-only ones included
  # 1.5 given frames of 3 on average, less the one freed in the 1/8 of clips drawn all-given.
  np.testing.assert_allclose(given.mean(), (1.5 - 1 / 8) / 3, atol=0.02)


def test_probabilities_mix_modes_with_text_only_examples():
  given = np.asarray(fc.sample_given(jax.random.key(1), 4000, 3, {"first": 0.3, "last": 0.2}))
  first = given[:, 0] & ~given[:, 2]
  last = given[:, 2] & ~given[:, 0]
  none = ~given.any(axis=1)
  np.testing.assert_allclose([first.mean(), last.mean(), none.mean()], [0.3, 0.2, 0.5], atol=0.03)
  assert not np.asarray(fc.sample_given(jax.random.key(1), 8, 3, {"first": 0.0})).any()


@pytest.mark.parametrize("probabilities, frames, message", [
    ({"middle": 0.5}, 3, "'middle' is unknown; valid: first, prefix, last, suffix, ends, random"),
    ({"first": 1.5}, 3, "is 1.5; use \\[0, 1\\]"),
    ({"first": 0.6, "last": 0.6}, 3, "sum to 1.200"),
    ({"ends": 0.5}, 2, "needs 3\\+ latent frames"),
])
def test_bad_settings_are_named(probabilities, frames, message):
  with pytest.raises(ValueError, match=message):
    fc.check_probabilities(probabilities, frames)
