"""Every prompting mode on a tiny run: shapes, masks, given frames kept, boundaries, flat
rollouts."""
import tracemalloc
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from sorajax import configuration, prompting
from sorajax.data import video_io

STEPS = dict(steps=2, guidance=2.0)


@pytest.fixture(scope="module")
def generator(dit_workdir):
  from sorajax.generation import VideoGenerator  # pylint: disable=import-outside-toplevel
  return VideoGenerator(dit_workdir)


@pytest.fixture
def calls(generator, monkeypatch):
  """Records the given mask and latents of every sampling call."""
  seen = []
  sample = generator.sample_latents

  def spy(captions, seeds, *args, **kwargs):
    out = sample(captions, seeds, *args, **kwargs)
    seen.append(dict(kwargs, seeds=list(seeds), out=out))
    return out

  monkeypatch.setattr(generator, "sample_latents", spy)
  return seen


def clips(n, frames, size=16, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, frames, size, size, 3), dtype=np.uint8)


def roundtrip(generator, videos):
  return generator.decode(generator.encode(videos))


def test_text_to_image_and_animate_keep_the_given_image(generator, calls):
  images = prompting.text_to_image(generator, ["a red circle"], [0], **STEPS)
  assert images.shape == (1, 16, 16, 3) and images.dtype == np.uint8
  start = clips(2, 1)[:, 0]
  videos = prompting.animate(generator, start, ["a red circle moving left"] * 2, [0, 1], **STEPS)
  assert videos.shape == (2, 5, 16, 16, 3)
  np.testing.assert_array_equal(calls[-1]["given"], [[True, False]] * 2)
  # The first frame is the image as the VAE codes it: exactly its round trip.
  np.testing.assert_array_equal(videos[:, 0], roundtrip(generator, start[:, None])[:, 0])
  assert not np.array_equal(videos[0, 1:], videos[1, 1:])  # seeds still differ


@pytest.mark.parametrize("backward", [False, True])
def test_extend_keeps_the_clip_and_adds_frames_on_its_side(generator, calls, backward):
  # 3 latent frames a chunk. Forward: 2 given (5 frames), 4 new frames; backward: the last one
  # given (4 frames), 5 new frames.
  chunk = prompting.Chunk(generator, frames=9)
  source = clips(2, 9, seed=1)
  out = prompting.extend(generator, source, ["a blue square moving up"] * 2, [3, 4], new_frames=6,
                         backward=backward, chunk=chunk, **STEPS)
  assert out.shape == (2, 15, 16, 16, 3)
  kept = out[:, 6:] if backward else out[:, :9]
  np.testing.assert_array_equal(kept, source)  # the given clip comes back as it was
  assert len(calls) == 2
  mask = [False, False, True] if backward else [True, True, False]
  for call in calls:
    np.testing.assert_array_equal(call["given"], [mask] * 2)
  # The first chunk holds the clip's own latents where it is given.
  first = calls[0]
  if backward:
    expected = prompting._encode_later(generator, source[:, :4])
    np.testing.assert_allclose(first["given_latents"][:, 2:], expected, atol=1e-5)
  else:
    np.testing.assert_allclose(first["given_latents"][:, :2], generator.encode(source[:, 4:]),
                               atol=1e-5)
  # The run trained with anchors: every chunk is shown the given clip's first frame.
  assert generator.objective.anchor > 0
  for call in calls:
    np.testing.assert_allclose(call["anchor"], generator.encode(source[:, :1]), atol=1e-5)
  start = len(calls)
  plain = prompting.extend(generator, source, ["a blue square moving up"] * 2, [3, 4],
                           new_frames=6, backward=backward, chunk=chunk, anchor=False, **STEPS)
  assert len(calls) == start + 2 and all(c.get("anchor") is None for c in calls[start:])
  np.testing.assert_array_equal(plain[:, 6:] if backward else plain[:, :9], source)


def test_connect_and_loop_join_the_given_ends(generator, calls):
  chunk = prompting.Chunk(generator, frames=9)
  a, b = clips(1, 5, seed=2), clips(1, 9, seed=3)
  out = prompting.connect(generator, a, b, ["a green triangle bouncing"], [0], chunk=chunk, **STEPS)
  assert out.shape == (1, 5 + 4 + 9, 16, 16, 3)
  np.testing.assert_array_equal(out[:, :5], a)
  np.testing.assert_array_equal(out[:, 9:], b)
  call = calls[-1]
  np.testing.assert_array_equal(call["given"], [[True, False, True]])
  np.testing.assert_allclose(call["given_latents"][:, :1], generator.encode(a[:, 4:]), atol=1e-5)
  np.testing.assert_allclose(call["given_latents"][:, 2:],
                             prompting._encode_later(generator, b[:, :4]), atol=1e-5)
  looped = prompting.loop(generator, b, ["a green triangle bouncing"], [0], chunk=chunk,
                          strength=1.0, **STEPS)
  assert looped.shape == (1, 8, 16, 16, 3)  # b's frames 1-4, then 4 redrawn frames
  call = calls[-1]
  assert "source" not in call  # strength 1: the redrawn latent frame starts from noise
  # b's frames 1-8 are coded as the loop plays them: on repeat, the last period kept.
  periods = 1 + -(-generator.objective.vae.decoder_history() // 2)
  coded = generator.encode(np.concatenate([b[:, :1]] + [b[:, 1:]] * periods, axis=1))[:, -2:]
  np.testing.assert_allclose(prompting.cycle_codes(generator, b), coded, atol=1e-6)
  further = generator.encode(np.concatenate([b[:, :1]] + [b[:, 1:]] * (periods + 1), axis=1))
  np.testing.assert_allclose(further[:, -2:], coded, atol=1e-4)  # the encoder's reach is covered
  # The redrawn latent frame follows b's frame 4 and leads into b's first latent frame after the
  # image one, the latent frame that follows it in the cycle.
  np.testing.assert_allclose(call["given_latents"][:, :1], generator.encode(b[:, 4:5]), atol=1e-5)
  np.testing.assert_allclose(call["given_latents"][:, 2:], coded[:, :1], atol=1e-5)
  # By default (the run's sample.loop_strength < 1) the redrawn latent frame starts from b's own
  # last one, part-way noised.
  mended = prompting.loop(generator, b, ["a green triangle bouncing"], [0], chunk=chunk, **STEPS)
  call = calls[-1]
  assert mended.shape == looped.shape
  assert call["strength"] == generator.config.sample.loop_strength < 1
  assert call["guidance"] == STEPS["guidance"]  # a guidance asked for is kept
  np.testing.assert_allclose(call["source"][:, 1:2], coded[:, 1:2], atol=1e-5)
  np.testing.assert_allclose(call["source"][:, ::2], call["given_latents"][:, ::2], atol=1e-6)
  # Otherwise the mend runs at the run's sample.loop_guidance, not its sample.guidance; frames
  # drawn from noise (strength 1) take sample.guidance, as frames from the prompt do.
  sample = generator.config.sample
  for strength, guidance in ((None, sample.loop_guidance), (1.0, sample.guidance)):
    prompting.loop(generator, b, ["a green triangle bouncing"], [0], chunk=chunk, steps=2,
                   strength=strength)
    assert calls[-1]["guidance"] == guidance
  assert sample.loop_guidance != sample.guidance
  with pytest.raises(ValueError, match="strength=0.5 redraws the clip's own end; it needs "
                                       "replace_end=True"):
    prompting.loop(generator, b, ["a red circle"], [0], chunk=chunk, strength=0.5,
                   replace_end=False)
  added = prompting.loop(generator, b, ["a green triangle bouncing"], [0], chunk=chunk,
                         replace_end=False, **STEPS)
  assert added.shape == (1, 8 + 4, 16, 16, 3)  # b's frames 1-8, then the transition
  np.testing.assert_allclose(calls[-1]["given_latents"][:, :1], generator.encode(b[:, 8:]),
                             atol=1e-5)
  # The stream is periodic and long enough for the decoder's reach: one more period played
  # before it leaves the returned loop as it was.
  longer = prompting.loop(generator, b, ["a green triangle bouncing"], [0], chunk=chunk,
                          strength=1.0, periods=periods + 1, **STEPS)
  np.testing.assert_allclose(longer.astype(float), looped, atol=2)


def test_edit_strength_moves_from_the_source_to_a_new_video(generator):
  source = roundtrip(generator, clips(1, 5, seed=4))
  caption, seed = ["a yellow circle standing still"], [7]
  full = prompting.edit(generator, source, caption, seed, strength=1.0, **STEPS)
  # Strength 1 starts from pure noise: the same video as text -> video with that seed.
  fresh = generator.generate(caption, seed, stage_frames=0, **STEPS)
  assert np.abs(full.astype(int) - fresh).max() <= 1
  light = prompting.edit(generator, source, caption, seed, strength=0.5, **STEPS)
  distance = lambda v: np.abs(v.astype(float) - source).mean()
  assert distance(light) < distance(full)


def test_rollout_memory_stays_flat_as_chunks_are_added(generator):
  chunk = prompting.Chunk(generator, frames=9)
  caption, seeds = ["a cyan square moving right"], [0]

  def peak_bytes(total):
    pieces = prompting.rollout(generator, caption, seeds, total, chunk=chunk, **STEPS)
    next(pieces)  # compiles and warms up outside the measurement
    tracemalloc.start()
    frames, live = 9, []
    for piece in pieces:
      frames += piece.shape[1]
      live.append(sum(a.nbytes for a in jax.live_arrays()))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert frames == total
    return peak, live

  short_peak, short_live = peak_bytes(9 + 4 * 3)
  long_peak, long_live = peak_bytes(9 + 4 * 12)
  assert long_peak < 1.25 * short_peak + 64 * 1024
  assert max(long_live) <= max(short_live) * 1.05 + 1024


def test_rollout_carries_generated_latents_or_reencoded_frames(generator, calls):
  chunk = prompting.Chunk(generator, frames=9)
  caption, seeds = ["a red square moving down"], [5]
  pieces = list(prompting.rollout(generator, caption, seeds, 13, chunk=chunk, refresh=0.0,
                                  **STEPS))
  first, second = calls[-2:]
  np.testing.assert_array_equal(second["given"], [[True, True, False]])
  # Latent frame 2 of the first chunk, as generated, is latent frame 1 of the next one, behind
  # the image latent of the frame before the four it codes.
  np.testing.assert_array_equal(second["given_latents"][:, 1], first["out"][:, 2])
  np.testing.assert_allclose(second["given_latents"][:, :1], generator.encode(pieces[0][:, 4:5]),
                             atol=1e-5)
  list(prompting.rollout(generator, caption, seeds, 13, chunk=chunk, carry="frames", **STEPS))
  np.testing.assert_allclose(calls[-1]["given_latents"][:, :2],
                             generator.encode(pieces[0][:, 4:]), atol=1e-5)
  with pytest.raises(ValueError, match="carry='pixels'; use 'latents' or 'frames'"):
    next(prompting.rollout(generator, caption, seeds, 13, chunk=chunk, carry="pixels"))


def test_rollout_refresh_redraws_each_later_chunk_and_carries_the_redraw(generator, calls):
  chunk = prompting.Chunk(generator, frames=9)
  caption, seeds = ["a red square moving down"], [5]
  pieces = list(prompting.rollout(generator, caption, seeds, 17, chunk=chunk, refresh=0.5,
                                  **STEPS))
  assert [p.shape[1] for p in pieces] == [9, 4, 4]
  # text -> video, then per later chunk: its frames given the context, and their redraw.
  assert len(calls) == 5 and "source" not in calls[0]
  _, made, redraw, next_made, next_redraw = calls
  assert redraw.get("given") is None and redraw["strength"] == 0.5
  assert redraw["seeds"] != made["seeds"]  # fresh noise: not the chunk's own path retraced
  np.testing.assert_array_equal(redraw["source"], made["out"])
  assert not np.array_equal(redraw["out"], made["out"])
  np.testing.assert_array_equal(pieces[1], generator.decode(redraw["out"])[:, 5:])
  # The next chunk continues the redraw, not the frames before it.
  np.testing.assert_array_equal(next_made["given_latents"][:, 1], redraw["out"][:, 2])
  np.testing.assert_array_equal(next_redraw["source"], next_made["out"])
  # The run's sample.rollout_refresh is the default.
  calls.clear()
  list(prompting.rollout(generator, caption, seeds, 13, chunk=chunk, **STEPS))
  assert generator.config.sample.rollout_refresh > 0 and len(calls) == 3
  assert calls[-1]["strength"] == generator.config.sample.rollout_refresh
  # So is its sample.rollout_guidance, for every chunk and redraw; a guidance asked for is kept.
  assert [call["guidance"] for call in calls] == [STEPS["guidance"]] * 3
  calls.clear()
  list(prompting.rollout(generator, caption, seeds, 13, chunk=chunk, steps=2))
  sample = generator.config.sample
  assert sample.rollout_guidance != sample.guidance
  assert [call["guidance"] for call in calls] == [sample.rollout_guidance] * 3
  with pytest.raises(ValueError, match=r"refresh=1.0 must be in \[0, 1\)"):
    next(prompting.rollout(generator, caption, seeds, 13, chunk=chunk, refresh=1.0))
  with pytest.raises(ValueError, match="refresh redraws the carried latents; use carry='latents'"):
    next(prompting.rollout(generator, caption, seeds, 13, chunk=chunk, refresh=0.5,
                           carry="frames"))


def test_rollout_shows_every_later_chunk_its_first_frame_as_the_anchor(generator, calls,
                                                                      monkeypatch):
  # Two training steps leave every block the identity (adaLN-Zero): weights that mix tokens.
  noise = lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape, p.dtype)
  monkeypatch.setattr(generator, "params", jax.tree.map(noise, generator.params))
  chunk = prompting.Chunk(generator, frames=9)
  caption, seeds = ["a red square moving down"], [5]
  assert generator.objective.anchor > 0  # the run trained with anchors: rollouts use them
  pieces = list(prompting.rollout(generator, caption, seeds, 17, chunk=chunk, **STEPS))
  first, *later = calls
  assert first.get("anchor") is None and len(later) == 4  # two chunks, each made and redrawn
  for call in later:  # made and redrawn alike
    np.testing.assert_array_equal(call["anchor"], first["out"][:, :1])
  plain_calls = len(calls)
  plain = list(prompting.rollout(generator, caption, seeds, 17, chunk=chunk, anchor=False,
                                 **STEPS))
  assert all(call.get("anchor") is None for call in calls[plain_calls:])
  np.testing.assert_array_equal(plain[0], pieces[0])  # the first chunk has no anchor either way
  assert np.abs(calls[plain_calls + 1]["out"] - later[0]["out"]).max() > 1e-6
  generator.objective.anchor = 0.0  # as if trained without
  try:
    with pytest.raises(configuration.ConfigError, match="not trained with anchor frames"):
      list(prompting.rollout(generator, caption, seeds, 17, chunk=chunk, anchor=True, **STEPS))
    start = len(calls)
    list(prompting.rollout(generator, caption, seeds, 13, chunk=chunk, **STEPS))
    assert len(calls) > start + 1 and all(c.get("anchor") is None for c in calls[start:])
  finally:
    generator.objective.anchor = 0.5


def test_rollout_draws_later_chunks_at_its_temperature(generator, calls):
  chunk = prompting.Chunk(generator, frames=9)
  caption, seeds = ["a red square moving down"], [5]
  list(prompting.rollout(generator, caption, seeds, 17, chunk=chunk, refresh=0.0,
                         temperature=0.3, **STEPS))
  first, *later = calls
  # The first chunk keeps the full noise, so seeds still give different videos.
  assert first.get("temperature", 1.0) == 1.0 and len(later) == 2
  assert [call["temperature"] for call in later] == [0.3, 0.3]
  cool = later[0]["out"]
  calls.clear()
  list(prompting.rollout(generator, caption, seeds, 13, chunk=chunk, refresh=0.0, **STEPS))
  default = generator.config.sample.rollout_temperature
  assert default != 0.3 and calls[-1]["temperature"] == default  # the run's, unless asked
  assert float(jnp.abs(calls[-1]["out"][:, 2:] - cool[:, 2:]).max()) > 1e-6
  with pytest.raises(ValueError, match=r"temperature=0.0 is out of range; use \(0, 1\]"):
    next(prompting.rollout(generator, caption, seeds, 13, chunk=chunk, temperature=0.0))


def test_rollout_temperature_defaults_to_one_in_runs_saved_before_it():
  def run(**sample):
    return types.SimpleNamespace(config=ml_collections.ConfigDict({"sample": sample}))
  assert prompting.default_rollout_temperature(run(rollout_temperature=0.8)) == 0.8
  assert prompting.default_rollout_temperature(run(guidance=4.0)) == 1.0
  with pytest.raises(ValueError, match=r"sample.rollout_temperature=1.5 is out of range"):
    prompting.default_rollout_temperature(run(rollout_temperature=1.5))


def test_temperature_scales_the_noise_sampling_starts_from(generator, monkeypatch):
  chunk = prompting.Chunk(generator)
  # A stand-in model that never moves, so sampling returns the point it starts from (steps=7,
  # used by no other test, keeps the sampler from reusing a compile of the real model). It is
  # called only while the sampler is traced, so `traces` counts compiles.
  traces = []
  monkeypatch.setattr(generator.objective, "velocity",
                      lambda params, x, *rest: traces.append(x.shape) or jnp.zeros_like(x))
  sample = lambda **kw: generator.sample_latents(["a red circle"], [3], chunk.latent_shape,
                                                 steps=7, guidance=1.0, stage_frames=0, **kw)
  full = sample()
  compiled = len(traces)
  cool = sample(temperature=0.5)
  assert compiled > 0 and len(traces) == compiled  # another temperature, the same compile
  assert float(jnp.std(full)) > 0.5  # the noise itself
  np.testing.assert_allclose(cool, 0.5 * full, rtol=1e-6)
  for bad in (0.0, 1.5):
    with pytest.raises(configuration.ConfigError,
                       match=rf"temperature={bad} is out of range; use \(0, 1\]"):
      sample(temperature=bad)


def test_rollout_pieces_continue_each_other(generator):
  chunk = prompting.Chunk(generator, frames=9)
  pieces = list(prompting.rollout(generator, ["a red square moving down"], [5], 17, chunk=chunk,
                                  **STEPS))
  assert [p.shape[1] for p in pieces] == [9, 4, 4]
  again = list(prompting.rollout(generator, ["a red square moving down"], [5], 17, chunk=chunk,
                                 **STEPS))
  for p, q in zip(pieces, again):  # reproducible from the seed
    np.testing.assert_array_equal(p, q)


def test_fit_video_crops_resizes_and_trims_with_notes():
  video = np.zeros((12, 48, 64, 3), np.uint8)
  video[:, :, 8:56] = 200  # the centered 48x48 square survives the crop
  fitted, notes = video_io.fit_video(video, 16, 16, temporal_factor=4)
  assert fitted.shape == (9, 16, 16, 3)
  assert notes == ["trimmed 12 -> 9 frames (1 + 4k)", "resized 64x48 -> 16x16 (center crop 48x48)"]
  assert fitted.min() == 200
  same, notes = video_io.fit_video(video[:9, :16, :16], 16, 16, temporal_factor=4)
  assert notes == [] and same.shape == (9, 16, 16, 3)


def test_read_media_reads_images_and_videos_and_names_bad_files(tmp_path):
  image = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
  Image.fromarray(image).save(tmp_path / "a.png")
  np.testing.assert_array_equal(video_io.read_media(str(tmp_path / "a.png")), image[None])
  video = np.repeat(np.linspace(0, 250, 5).astype(np.uint8)[:, None, None, None], 16, 1)
  video = np.repeat(np.repeat(video, 16, 2), 3, 3)
  video_io.write_mp4(str(tmp_path / "v.mp4"), video)
  read = video_io.read_media(str(tmp_path / "v.mp4"))
  assert read.shape == (5, 16, 16, 3)
  assert np.abs(read.astype(int) - video).max() <= 4  # H.264 at crf 18
  (tmp_path / "bad.mp4").write_bytes(b"not a video")
  with pytest.raises(ValueError, match="cannot read .*bad.mp4.* as an image or video"):
    video_io.read_media(str(tmp_path / "bad.mp4"))
  with pytest.raises(ValueError, match="does not exist"):
    video_io.read_media(str(tmp_path / "missing.png"))


def test_mp4_writer_streams_pieces_and_leaves_nothing_on_error(tmp_path):
  path = str(tmp_path / "long.mp4")
  with video_io.Mp4Writer(path) as writer:
    for _ in range(3):
      writer.write(np.zeros((4, 16, 16, 3), np.uint8))
  assert video_io.read_video(path).shape[0] == 12
  broken = str(tmp_path / "broken.mp4")
  with pytest.raises(RuntimeError):
    with video_io.Mp4Writer(broken) as writer:
      writer.write(np.zeros((4, 16, 16, 3), np.uint8))
      raise RuntimeError("render failed")
  assert list(tmp_path.iterdir()) == [tmp_path / "long.mp4"]


def test_bad_prompting_input_is_named(generator):
  chunk = prompting.Chunk(generator, frames=9)
  with pytest.raises(ValueError, match="empty prompt"):
    prompting.animate(generator, clips(1, 1)[:, 0], ["  "], [0], **STEPS)
  for strength in (0.0, 1.5):
    with pytest.raises(configuration.ConfigError, match=r"strength=.* must be in \(0, 1\]"):
      prompting.edit(generator, clips(1, 5), ["a red circle"], [0], strength=strength, **STEPS)
  with pytest.raises(ValueError, match="extend_back needs a clip of at least 4 frames, got 1"):
    prompting.extend(generator, clips(1, 1), ["a red circle"], [0], 4, backward=True, chunk=chunk)
  with pytest.raises(ValueError, match=r"connect \(second clip\) needs a clip of at least 4"):
    prompting.connect(generator, clips(1, 5), clips(1, 2), ["a red circle"], [0], chunk=chunk)
  with pytest.raises(ValueError, match=r"loop needs a clip of 1 \+ 4k frames, got 7; fit it"):
    prompting.loop(generator, clips(1, 7), ["a red circle"], [0], chunk=chunk)
  with pytest.raises(ValueError, match="loop needs a clip of at least 9 frames, got 5; pass a "
                                      "longer clip, or replace_end=False"):
    prompting.loop(generator, clips(1, 5), ["a red circle"], [0], chunk=chunk)
  with pytest.raises(ValueError, match="loop needs a clip of at least 5 frames, got 1"):
    prompting.loop(generator, clips(1, 1), ["a red circle"], [0], chunk=chunk, replace_end=False)
  with pytest.raises(ValueError, match=r"strength=1.5 must be in \(0, 1\]"):
    prompting.loop(generator, clips(1, 9), ["a red circle"], [0], chunk=chunk, strength=1.5)
  with pytest.raises(ValueError, match="periods=1; play at least 2"):
    prompting.loop(generator, clips(1, 9), ["a red circle"], [0], chunk=chunk, periods=1)
  with pytest.raises(ValueError, match=r"a cycle needs a clip of 1 \+ 4k frames \(k >= 1\), got 7"):
    prompting.cycle_codes(generator, clips(1, 7))
  with pytest.raises(ValueError, match="leave no room in a chunk of 3; use 1 to 2"):
    prompting.extend(generator, clips(1, 9), ["a red circle"], [0], 4, context=3, chunk=chunk)
  with pytest.raises(configuration.ConfigError, match="guidance=60.0 is out of range"):
    prompting.text_to_image(generator, ["a red circle"], [0], steps=2, guidance=60.0)


def test_loop_guidance_defaults_to_the_runs_guidance_and_is_range_checked():
  def run(**sample):
    return types.SimpleNamespace(config=ml_collections.ConfigDict({"sample": sample}))
  assert prompting.default_loop_guidance(run(guidance=4.0, loop_guidance=1.5)) == 1.5
  assert prompting.default_loop_guidance(run(guidance=4.0)) == 4.0  # runs saved before it
  assert prompting.loop_guidance(run(guidance=4.0, loop_guidance=1.5), 0.3) == 1.5  # a mend
  assert prompting.loop_guidance(run(guidance=4.0, loop_guidance=1.5), 1.0) == 4.0  # from noise
  assert prompting.loop_guidance(run(guidance=4.0, loop_guidance=1.5), 0.3, 2.0) == 2.0
  with pytest.raises(ValueError, match=r"sample.loop_guidance=-1.0 must be in \[0, 50\]"):
    prompting.default_loop_guidance(run(guidance=4.0, loop_guidance=-1.0))
  with pytest.raises(ValueError, match=r"sample.guidance=60.0 must be in \[0, 50\]"):
    prompting.default_loop_guidance(run(guidance=60.0))


def test_given_noise_is_range_checked_and_given_frames_come_back_clean(generator, monkeypatch):
  chunk = prompting.Chunk(generator)
  given = np.arange(chunk.latents)[None] == 0
  latents = jax.random.normal(jax.random.key(3), (1,) + tuple(chunk.latent_shape))
  sample = lambda level: generator.sample_latents(["a red circle"], [0], chunk.latent_shape,
                                                  given=given, given_latents=latents,
                                                  given_noise=level, **STEPS)
  with pytest.raises(configuration.ConfigError,
                     match=r"given_noise=0.1 is out of range; .*flow.given_noise=0: use 0 to 0"):
    sample(0.1)
  monkeypatch.setattr(generator.objective, "given_noise", 0.2)  # as if trained with it
  # A stand-in model that mixes frames, so what it is shown of the given frame shows in the rest
  # (steps=5, used by no other test, keeps the sampler from reusing a compile of the real model).
  monkeypatch.setattr(generator.objective, "velocity", lambda params, x, t, tokens, mask:
                      jnp.broadcast_to(x.mean(axis=1, keepdims=True), x.shape))
  sample = lambda level: generator.sample_latents(["a red circle"], [0], chunk.latent_shape,
                                                  given=given, given_latents=latents,
                                                  given_noise=level, steps=5)
  clean, noised = sample(0.0), sample(0.2)
  np.testing.assert_array_equal(noised[:, 0], latents[:, 0])  # returned as given, not noised
  np.testing.assert_array_equal(clean[:, 0], latents[:, 0])
  assert float(jnp.abs(noised[:, 1:] - clean[:, 1:]).max()) > 1e-4  # the model saw them noised
