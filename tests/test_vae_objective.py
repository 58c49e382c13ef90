"""The VAE's training objective, its evaluation metrics and what its trainer run leaves behind."""
import dataclasses
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sorajax import configuration
from sorajax.data import shapes
from sorajax.data import video_io
from sorajax.models import discriminator as disc_lib
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import checkpoint as checkpoint_lib
from sorajax.training import objectives
from sorajax.training import reconstruction
from sorajax.training import vae_objective
from tiny import VAE_CONFIG, tiny_config

KEY = jax.random.key(0)


def _video(frames=5, size=16, seed=0, batch=2):
  return np.random.default_rng(seed).uniform(
      -1, 1, (batch, frames, size, size, 3)).astype(np.float32)


# --- metrics --------------------------------------------------------------------------------------


def test_psnr_closed_form():
  target = 0.8 * _video()  # room for the offset below without clipping
  # An offset of 0.1 on the [-1, 1] scale is 0.05 on the [0, 1] scale: MSE 0.0025, 26.02 dB.
  np.testing.assert_allclose(reconstruction.psnr(jnp.asarray(target + 0.1), target),
                             [-10 * np.log10(0.05**2)] * 2, rtol=1e-4)
  # Reconstructions are clipped to the valid range before scoring.
  ones = np.ones((1, 1, 4, 4, 3), np.float32)
  assert float(reconstruction.psnr(jnp.asarray(3 * ones), ones)[0]) > 100


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
  """Direct windowed sums over one (H, W) image in [0, 1]; no convolution routine involved."""
  g = reconstruction.gaussian_window()
  n = g.shape[0]
  c1, c2 = 0.01**2, 0.03**2
  values = []
  for i in range(x.shape[0] - n + 1):
    for j in range(x.shape[1] - n + 1):
      a, b = x[i:i + n, j:j + n], y[i:i + n, j:j + n]
      ma, mb = (g * a).sum(), (g * b).sum()
      va, vb = (g * a * a).sum() - ma**2, (g * b * b).sum() - mb**2
      cov = (g * a * b).sum() - ma * mb
      values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
  return float(np.mean(values))


def test_ssim_matches_direct_windowed_sums():
  target = _video(frames=2, size=14, batch=1)
  recon = np.clip(target + np.random.default_rng(1).normal(0, 0.3, target.shape), -1, 1)
  recon = recon.astype(np.float32)
  got = float(reconstruction.ssim(jnp.asarray(recon), jnp.asarray(target))[0])
  to01 = lambda v: (v.astype(np.float64) + 1) / 2
  expected = np.mean([_ssim_reference(to01(recon[0, t, :, :, c]), to01(target[0, t, :, :, c]))
                      for t in range(2) for c in range(3)])
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  assert got < 0.9  # the noise is visible to it
  np.testing.assert_allclose(reconstruction.ssim(jnp.asarray(target), jnp.asarray(target)), [1.0],
                             rtol=1e-5)


def test_ssim_of_flat_frames_is_the_luminance_term():
  a, b = 0.2, 0.6  # on the [0, 1] scale; flat frames have no variance, so only luminance counts
  flat = lambda v: jnp.full((1, 1, 12, 12, 3), 2 * v - 1, jnp.float32)
  expected = (2 * a * b + 0.01**2) / (a**2 + b**2 + 0.01**2)
  np.testing.assert_allclose(reconstruction.ssim(flat(a), flat(b)), [expected], rtol=1e-4)
  with pytest.raises(ValueError, match="smaller than the 11x11 SSIM window"):
    reconstruction.ssim(jnp.zeros((1, 1, 8, 8, 3)), jnp.zeros((1, 1, 8, 8, 3)))


def test_side_by_side_layout():
  originals = np.zeros((2, 3, 4, 5, 3), np.uint8)
  recons = np.full((2, 3, 4, 5, 3), 200, np.uint8)
  video = reconstruction.side_by_side(originals, recons, pad=1)
  assert video.shape == (3, 9, 11, 3)
  assert (video[:, :4, :5] == 0).all() and (video[:, :4, 6:] == 200).all()
  assert (video[:, 4] == 255).all()  # the padding row between clips


# --- adversarial terms ----------------------------------------------------------------------------


def test_hinge_losses_closed_form():
  real = jnp.array([2.0, 0.5, -1.0])
  fake = jnp.array([-2.0, 0.0, 1.5])
  # relu(1 - real) = [0, 0.5, 2]; relu(1 + fake) = [0, 1, 2.5]
  np.testing.assert_allclose(disc_lib.hinge_discriminator_loss(real, fake), 2.5 / 3 + 3.5 / 3,
                             rtol=1e-6)
  np.testing.assert_allclose(disc_lib.hinge_generator_loss(fake), -(-0.5) / 3, rtol=1e-6)


def test_patch_discriminator_scores_patches_of_any_clip_size():
  disc = disc_lib.PatchDiscriminator3D(channels=(8, 16, 16))
  params = disc.init(KEY, jnp.zeros((1, 5, 16, 16, 3)))
  assert disc.apply(params, _video(frames=5, size=16)).shape == (2, 5, 4, 4)
  assert disc.apply(params, _video(frames=1, size=32, batch=1)).shape == (1, 1, 8, 8)


def _objective(**vae_fields):
  overrides = {f"vae.{name}": value for name, value in vae_fields.items()}
  return vae_objective.VAEObjective(tiny_config(VAE_CONFIG, **overrides))


def _perturbed(objective, scale=0.05):
  """The objective's initial parameters with noise on every leaf (zero-initialised biases hide no
  path). Numpy noise: jax.random op by op compiles a sampler for every leaf shape."""
  rng = np.random.default_rng(3)
  return jax.tree.map(lambda p: np.asarray(p) + scale * rng.standard_normal(p.shape, np.float32),
                      nn.meta.unbox(objective.init_params(KEY)))


def test_adversarial_terms_train_each_part_on_its_own_objective():
  objective = _objective(adversarial_weight=0.5, adversarial_start=10,
                         discriminator_channels=(8, 16))
  plain = _objective()
  params = _perturbed(objective)
  batch = {"video": np.random.default_rng(0).integers(0, 256, (2, 5, 16, 16, 3), np.uint8)}
  grad = lambda obj, p, step: jax.grad(lambda q: obj.loss(q, {}, batch, KEY, step)[0])(p)

  before = grad(objective, params, 9)
  reference = grad(plain, {"vae": params["vae"]}, 9)
  # Before the start step: the VAE sees only its reconstruction and KL; the judge does not move.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), before["vae"],
               reference["vae"])
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(before["discriminator"]))

  after = grad(objective, params, 10)
  judge = lambda p, v: objective.discriminator.apply({"params": p}, v)
  video = vae_objective.pixels_to_unit(batch["video"])
  recon = objective.model.apply({"params": params["vae"]}, video, sample_rng=KEY)["recon"]
  # The judge's gradient is exactly that of its hinge loss on real clips and fixed reconstructions.
  expected = jax.grad(lambda p: disc_lib.hinge_discriminator_loss(judge(p, video),
                                                                  judge(p, recon)))(
      params["discriminator"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               after["discriminator"], expected)
  # The VAE's gradient gains 0.5 x that of the generator term.
  generator = jax.grad(lambda p: 0.5 * disc_lib.hinge_generator_loss(judge(
      params["discriminator"],
      objective.model.apply({"params": p}, video, sample_rng=KEY)["recon"]))
  )(params["vae"])
  jax.tree.map(lambda a, b, c: np.testing.assert_allclose(a, b + c, rtol=1e-3, atol=1e-6),
               after["vae"], reference["vae"], generator)


def test_vae_loss_terms_against_closed_forms():
  objective = _objective(kl_weight=0.01, temporal_weight=0.0)
  params = _perturbed(objective)
  batch = {"video": np.random.default_rng(0).integers(0, 256, (2, 5, 16, 16, 3), np.uint8)}
  loss, metrics = objective.loss(params, {}, batch, KEY, 0)
  video = np.asarray(batch["video"], np.float64) / 127.5 - 1
  out = objective.model.apply({"params": params["vae"]}, jnp.asarray(video, jnp.float32),
                              sample_rng=KEY)
  mean, logvar = np.asarray(out["mean"], np.float64), np.asarray(out["logvar"], np.float64)
  kl = np.mean(0.5 * (mean**2 + np.exp(logvar) - 1 - logvar))
  mse = np.mean((np.asarray(out["recon"], np.float64) - video) ** 2)
  np.testing.assert_allclose(metrics["kl"], kl, rtol=1e-4)
  np.testing.assert_allclose(metrics["recon"], mse, rtol=1e-4)
  np.testing.assert_allclose(metrics["psnr"], 10 * np.log10(4 / mse), rtol=1e-4)
  np.testing.assert_allclose(loss, mse + 0.01 * kl, rtol=1e-4)
  l1, _ = _objective(recon_loss="l1", temporal_weight=0.0).loss(params, {}, batch, KEY, 0)
  error = np.asarray(out["recon"], np.float64) - video
  np.testing.assert_allclose(l1, np.mean(np.abs(error)) + 1e-6 * kl, rtol=1e-4)
  # The temporal term: the error's frame-to-frame change, in the reconstruction term's norm.
  change = error[:, 1:] - error[:, :-1]
  loss, metrics = _objective(kl_weight=0.01, temporal_weight=2.0).loss(params, {}, batch, KEY, 0)
  np.testing.assert_allclose(metrics["temporal"], np.mean(change**2), rtol=1e-4)
  np.testing.assert_allclose(loss, mse + 0.01 * kl + 2.0 * np.mean(change**2), rtol=1e-4)
  _, metrics = _objective(recon_loss="l1", temporal_weight=2.0).loss(params, {}, batch, KEY, 0)
  np.testing.assert_allclose(metrics["temporal"], np.mean(np.abs(change)), rtol=1e-4)


def test_flicker_counts_errors_that_change_between_frames(monkeypatch, tmp_path):
  objective = _objective(eval_clips=2)
  clips = np.full((2, 5, 16, 16, 3), 100, np.uint8)
  monkeypatch.setattr(objective, "_examples", lambda split, count: [{"video": c} for c in clips])
  to_unit = lambda pixels: np.asarray(vae_objective.pixels_to_unit(pixels.astype(np.float32)))

  def scores(recon_pixels):
    monkeypatch.setattr(objective, "reconstruct",
                        lambda params, c: [to_unit(recon_pixels), None, np.zeros(2), np.zeros(2)])
    return objective.evaluate({"vae": None}, 1, str(tmp_path))

  # An error every frame shares is no flicker; one of +-4 gray levels by turns is 8 a frame.
  assert scores(clips.astype(np.float32) + 4)["eval/flicker"] == pytest.approx(0.0, abs=1e-3)
  turns = np.where(np.arange(5) % 2 == 0, 4.0, -4.0)[None, :, None, None, None]
  assert scores(clips + turns)["eval/flicker"] == pytest.approx(8.0, abs=1e-3)


def test_the_judge_reads_shapes_in_reconstructions(monkeypatch, tmp_path):
  objective = _objective(eval_clips=3)
  world = shapes.ShapesWorld(frames=5, height=32, width=32, seed=2, split="heldout")
  examples = [world[i] for i in range(3)]
  clips = np.stack([e["video"] for e in examples])
  monkeypatch.setattr(objective, "_examples", lambda split, count: examples)
  to_unit = lambda pixels: np.asarray(vae_objective.pixels_to_unit(pixels.astype(np.float32)))

  def scores(recon_pixels):
    monkeypatch.setattr(objective, "reconstruct",
                        lambda params, c: [to_unit(recon_pixels), None, np.zeros(3), np.zeros(3)])
    return objective.evaluate({"vae": None}, 1, str(tmp_path))

  exact = scores(clips)
  assert exact["eval/judge_shape"] == 1.0 and exact["eval/shape_margin"] > 0
  # The first clip redrawn with its object as another shape: one reading of 3 lost.
  first = examples[0]["prompt"]
  obj = first.objects[0]
  other = next(s for s in shapes.SHAPES if s != obj.shape)
  swapped = shapes.Prompt((dataclasses.replace(obj, shape=other),), first.background)
  redrawn = clips.copy()
  redrawn[0] = shapes.render_prompt(swapped, 5, 32, 32, seed=0)
  changed = scores(redrawn)
  assert changed["eval/judge_shape"] == pytest.approx(2 / 3)
  assert changed["eval/shape_margin"] < exact["eval/shape_margin"]


def test_noised_latents_reach_the_decoder_and_a_kept_encoder_gets_no_gradient():
  objective = _objective(latent_noise=0.5, train_encoder=False, init_workdir="unused")
  params = _perturbed(objective)
  batch = {"video": np.random.default_rng(0).integers(0, 256, (2, 5, 16, 16, 3), np.uint8)}
  video = vae_objective.pixels_to_unit(batch["video"])
  noised = lambda rng: objective.model.apply({"params": params["vae"]}, video, sample_rng=rng,
                                             latent_noise=objective.latent_noise)
  levels, posterior = [], []
  for seed in range(4):
    out = noised(jax.random.key(seed))
    mean, noise = np.asarray(out["mean"]), np.asarray(out["noise"])
    # z is the posterior sample plus the noise: what is left is unit Gaussian in posterior stds.
    posterior.append((np.asarray(out["z"]) - noise - mean)
                     / np.exp(0.5 * np.asarray(out["logvar"])))
    # The noise in channel spreads, clip by clip.
    levels += list((noise / mean.std(axis=(0, 1, 2, 3))).std(axis=(1, 2, 3, 4)))
  assert max(levels) < 0.5 * 1.2 and max(levels) > 0.25 and min(levels) < 0.5 * max(levels)
  posterior = np.concatenate(posterior)  # 1024 draws: 0.1 is over 4 standard errors either way
  assert abs(posterior.std() - 1) < 0.1 and abs(posterior.mean()) < 0.15
  out = noised(KEY)
  # The loss's reconstruction is that of the noised latents.
  recon = objective.model.apply({"params": params["vae"]}, out["z"], method=objective.model.decode)
  _, metrics = objective.loss(params, {}, batch, KEY, 0)
  np.testing.assert_allclose(metrics["recon"], np.mean((np.asarray(recon) - video) ** 2),
                             rtol=1e-4)
  grads = lambda o: jax.grad(lambda p: o.loss(p, {}, batch, KEY, 0)[0])(params)["vae"]
  norm = lambda tree: sum(float(np.abs(leaf).sum()) for leaf in jax.tree.leaves(tree))
  kept = grads(objective)
  assert norm(kept["encoder"]) == 0 and norm(kept["decoder"]) > 0
  assert norm(grads(_objective(latent_noise=0.5))["encoder"]) > 0


def test_a_decoder_fine_tune_starts_from_its_vae_and_keeps_the_encoder(vae_workdir,
                                                                       decoder_workdir):
  mesh = mesh_lib.make_mesh({"data": 8})
  _, before, _ = vae_objective.restore_vae(vae_workdir, mesh)
  _, after, _ = vae_objective.restore_vae(decoder_workdir, mesh)
  jax.tree.map(np.testing.assert_array_equal, after["encoder"], before["encoder"])
  fresh = nn.meta.unbox(_objective().init_params(KEY))["vae"]
  distance = lambda a, b: sum(float(np.square(np.asarray(x) - np.asarray(y)).sum())
                              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  moved = distance(after["decoder"], before["decoder"])
  assert 0 < moved < 0.01 * distance(fresh["decoder"], before["decoder"])
  # The same encoder on the same clips: the latent statistics a DiT normalises with are unchanged.
  read = lambda w: json.load(open(os.path.join(w, vae_objective.LATENT_STATS_FILE)))
  assert read(decoder_workdir)["std"] == read(vae_workdir)["std"]


def test_a_decoder_swaps_in_only_over_the_same_encoder(vae_workdir, decoder_workdir):
  mesh = mesh_lib.make_mesh({"data": 8})
  config, params, _ = vae_objective.restore_vae(vae_workdir, mesh)
  _, tuned, _ = vae_objective.restore_vae(decoder_workdir, mesh)
  swapped = vae_objective.with_decoder_of(decoder_workdir, config, params, mesh)
  assert swapped["encoder"] is params["encoder"] and swapped["decoder"] is not params["decoder"]
  jax.tree.map(np.testing.assert_array_equal, swapped["decoder"], tuned["decoder"])
  moved = {**params, "encoder": jax.tree.map(lambda x: x + 1e-3, params["encoder"])}
  with pytest.raises(configuration.ConfigError, match="its encoder differs from that of the VAE"):
    vae_objective.with_decoder_of(decoder_workdir, config, moved, mesh)
  narrower = tiny_config(VAE_CONFIG, **{"vae.latent_channels": 8})
  with pytest.raises(configuration.ConfigError, match="has vae.latent_channels=16 where 8"):
    vae_objective.with_decoder_of(decoder_workdir, narrower, params, mesh)


def test_a_decoder_fine_tune_from_another_architecture_names_the_field(vae_workdir, tmp_path):
  from sorajax import train  # pylint: disable=import-outside-toplevel
  config = tiny_config(VAE_CONFIG, **{"vae.init_workdir": vae_workdir,
                                      "vae.refine_width": 5})
  with pytest.raises(configuration.ConfigError,
                     match=r"vae.init_workdir=.* has vae.refine_width=16 where 5 is needed"):
    train.train_and_evaluate(config, str(tmp_path / "vae"))
  config = tiny_config(VAE_CONFIG, **{"vae.init_workdir": vae_workdir, "vae.init_step": 7})
  with pytest.raises(configuration.ConfigError, match="holds no step 7, only"):
    train.train_and_evaluate(config, str(tmp_path / "vae_at_7"))
  config = tiny_config(VAE_CONFIG, **{"vae.init_workdir": str(tmp_path)})
  with pytest.raises(configuration.ConfigError, match="holds no config.json"):
    train.train_and_evaluate(config, str(tmp_path / "vae_from_nothing"))
  config = tiny_config(VAE_CONFIG, **{"vae.init_workdir": vae_workdir,
                                      "vae.train_encoder": False, "train.weight_decay": 0.1})
  with pytest.raises(configuration.ConfigError, match="would move the kept encoder"):
    train.train_and_evaluate(config, str(tmp_path / "vae_decayed"))
  # Each refused before the run wrote anything.
  assert not any((tmp_path / name).exists()
                 for name in ("vae", "vae_at_7", "vae_from_nothing", "vae_decayed"))


def test_a_resumed_fine_tune_keeps_what_it_began_from(vae_workdir, decoder_workdir, dit_workdir,
                                                      tmp_path):
  resumed = str(tmp_path / "decoder")
  shutil.copytree(decoder_workdir, resumed)
  began = configuration.load_saved_config(decoder_workdir).vae.init_step
  config = tiny_config(VAE_CONFIG, **{"vae.init_workdir": vae_workdir})
  assert vae_objective.init_step_to_start_from(config, resumed) == began
  for field, value, fix in (("init_workdir", str(tmp_path), f"init_workdir={vae_workdir}"),
                            ("init_step", began + 1, f"init_step={began} \\(or 0\\)")):
    other = tiny_config(VAE_CONFIG, **{"vae.init_workdir": vae_workdir, f"vae.{field}": value})
    with pytest.raises(configuration.ConfigError, match=f"resume with --config.vae.{fix}$"):
      vae_objective.init_step_to_start_from(other, resumed)
  with pytest.raises(configuration.ConfigError, match="began from vae.init_workdir="):
    vae_objective.init_step_to_start_from(tiny_config(VAE_CONFIG), resumed)  # flag left off
  with pytest.raises(configuration.ConfigError, match="holds a dit run, not a VAE run"):
    vae_objective.init_step_to_start_from(config, dit_workdir)


def test_a_decoder_fine_tune_records_the_step_it_started_from(vae_workdir, decoder_workdir):
  began = configuration.load_saved_config(decoder_workdir).vae
  assert began.init_workdir == vae_workdir
  assert began.init_step == checkpoint_lib.saved_steps(vae_workdir)[-1] > 0


def test_an_architecture_saved_before_its_field_compares_by_what_it_built():
  saved = tiny_config(VAE_CONFIG)
  with saved.unlocked():
    del saved.vae["refine_width"]  # a run saved before the field existed built the default
  built = vae_objective.build_vae(saved).refine_width
  config = tiny_config(VAE_CONFIG, **{"vae.refine_width": built})
  vae_objective.check_same_architecture(config, saved, "saved")
  config.vae.refine_width = built + 1
  with pytest.raises(configuration.ConfigError, match=rf"saved has vae.refine_width={built} where"):
    vae_objective.check_same_architecture(config, saved, "saved")


@pytest.mark.parametrize("field, value, message", [
    ("latent_noise", -0.1, r"vae.latent_noise=-0.1 must be >= 0"),
    ("train_encoder", False, "vae.train_encoder=False keeps the encoder a run starts with; set "
                             "--config.vae.init_workdir"),
    ("adversarial_weight", -1.0, "vae.adversarial_weight=-1.0 and vae.adversarial_start=0 must be"),
    ("temporal_weight", -0.5, "vae.temporal_weight=-0.5 must be >= 0"),
    ("channels", (8, 0), "VAE channels=\\(8, 0\\) must be one or more positive widths"),
    ("num_res_blocks", -1, "VAE num_res_blocks=-1 must be an int >= 0"),
])
def test_bad_vae_settings_are_config_errors(field, value, message):
  with pytest.raises(configuration.ConfigError, match=message):
    _objective(**{field: value})


@pytest.mark.parametrize("field", ["weight_decay", "ema_decay"])
def test_a_kept_encoder_refuses_decay_and_averages(field):
  config = tiny_config(VAE_CONFIG, **{"vae.init_workdir": "x", "vae.train_encoder": False,
                                      f"train.{field}": 0.01})
  with pytest.raises(configuration.ConfigError,
                     match=f"train.{field}=0.01 would move the kept encoder .*{field}=0$"):
    vae_objective.VAEObjective(config)


def test_architectures_compare_saved_lists_as_tuples():
  config = tiny_config(VAE_CONFIG, **{"vae.channels": (8, 16)})
  saved = tiny_config(VAE_CONFIG, **{"vae.channels": [8, 16]})
  vae_objective.check_same_architecture(config, saved, "saved")
  saved.vae.channels = [8, 32]
  with pytest.raises(configuration.ConfigError, match=r"saved has vae.channels=\(8, 32\) where"):
    vae_objective.check_same_architecture(config, saved, "saved")


def test_architecture_fields_override_the_variant():
  objective = _objective(channels=(8, 8, 16), mid_attention=True, refine_features=2,
                         refine_width=5)
  assert objective.model.channels == (8, 8, 16) and objective.model.mid_attention
  params = nn.meta.unbox(objective.init_params(KEY))
  assert "mid_attention" in params["vae"]["decoder"]
  assert params["vae"]["decoder"]["refine_in"]["kernel"].shape[-2:] == (5, 5)  # 3 + 2 in, 5 out


# --- the trainer's VAE run ------------------------------------------------------------------------


def test_vae_run_evaluates_and_stores_latent_statistics(vae_workdir):
  with open(os.path.join(vae_workdir, vae_objective.LATENT_STATS_FILE)) as f:
    stats = json.load(f)
  config = configuration.load_saved_config(vae_workdir)
  assert stats["step"] == config.train.num_steps
  assert len(stats["mean"]) == len(stats["std"]) == config.vae.latent_channels
  assert min(stats["std"]) > 0
  video = video_io.read_video(
      os.path.join(vae_workdir, "reconstructions", f"step_{config.train.num_steps:06d}.mp4"))
  assert (video.shape[0] == config.data.frames
          and video.shape[2] > video.shape[1] / 4)  # side by side


def test_dit_normalises_with_the_statistics_stored_by_the_vae(vae_workdir, tmp_path):
  from tiny import DIT_CONFIG  # pylint: disable=import-outside-toplevel
  from sorajax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  config = tiny_config(DIT_CONFIG)
  config.vae_workdir = vae_workdir
  objective = objectives.build_objective(config, mesh_lib.make_mesh({"data": 1}, jax.devices()[:1]))
  with open(os.path.join(vae_workdir, vae_objective.LATENT_STATS_FILE)) as f:
    stored = json.load(f)
  objective.prepare(str(tmp_path))
  np.testing.assert_allclose(objective.frozen["latent_mean"], stored["mean"], rtol=1e-6)
  np.testing.assert_allclose(objective.frozen["latent_std"], stored["std"], rtol=1e-6)
  # They describe the VAE's latents: re-measured here on the DiT's own data they come out close.
  _, measured_std = objective._measure_latent_stats()  # pylint: disable=protected-access
  np.testing.assert_allclose(measured_std, stored["std"], rtol=0.5)
