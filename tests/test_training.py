"""The trainer end to end on tiny configs: sharded == single-device, checkpoint resume, sampling."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from sorajax import configuration
from sorajax.data import pipeline
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import checkpoint as checkpoint_lib
from sorajax.training import dit_objective
from sorajax.training import objectives
from sorajax.training import state as state_lib
from sorajax.training import step as step_lib
from sorajax.training import vae_objective
from tiny import DIT_CONFIG, VAE_CONFIG, tiny_config

def one_step(config, objective, mesh):
  """Loss and updated params after one step from the same init and batch on `mesh`."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  rules = mesh_lib.logical_rules(config.logical_rules)
  optimizer = state_lib.make_optimizer(config.train)
  state, shardings = state_lib.init_sharded_state(
      objective.init_params, optimizer, config.train.ema_decay, jax.random.key(0), mesh, rules)
  batch = next(pipeline.train_batches(config, mesh, objective.tokenizer))
  frozen = jax.device_put(objective.frozen, mesh_lib.replicated(mesh))
  step = step_lib.jit_train_step(objective, optimizer, config.train.ema_decay, shardings, mesh,
                              donate=False)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state, metrics = step(state, batch, frozen, jax.random.key(1))
  return float(metrics["train/loss"]), jax.device_get(state.params)


# The DiT on every mesh layout, to 1e-5 in loss and gradients: tests/test_parallel_dit.py.
@pytest.mark.parametrize("objective", ["vae"])
def test_sharded_step_matches_single_device(objective, vae_workdir, tmp_path):
  config = tiny_config(VAE_CONFIG if objective == "vae" else DIT_CONFIG)
  config.vae_workdir = vae_workdir if objective == "dit" else ""
  single = mesh_lib.make_mesh({"data": 1}, devices=jax.devices()[:1])
  built = objectives.build_objective(config, single)
  built.prepare(str(tmp_path))
  loss_1, params_1 = one_step(config, built, single)
  # Data, FSDP and tensor parallelism at once, over all 8 devices.
  loss_8, params_8 = one_step(config, built,
                              mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
  np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params_8, params_1)


def test_checkpoint_resume_continues_identically(tmp_path):
  from sorajax import train  # pylint: disable=import-outside-toplevel
  # The schedule decays over max(num_steps, warmup_steps + 1) steps: with 3 warm-up steps it is
  # the same at 2 and 4 steps, so the three runs compile the same programs (the test run's
  # compilation cache, conftest.py, serves the second and third). Evaluation and latent
  # statistics on one batch of clips.
  config = lambda steps: tiny_config(VAE_CONFIG, steps=steps, **{
      "train.warmup_steps": 3, "vae.eval_clips": 8, "vae.latent_stats_clips": 8})
  straight = train.train_and_evaluate(config(4), str(tmp_path / "a"))
  train.train_and_evaluate(config(2), str(tmp_path / "b"))
  assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["2"]
  resumed = train.train_and_evaluate(config(4), str(tmp_path / "b"))
  assert int(resumed.step) == int(straight.step) == 4
  # Same weights only if the data stream resumed where it stopped, too.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               jax.device_get(resumed.params), jax.device_get(straight.params))
  assert os.path.isfile(tmp_path / "a" / "config.json")


def test_checkpoint_round_trips_small_replicated_large_and_sharded_arrays(tmp_path):
  """Small replicated arrays are written whole by one replica, those of 1 MiB slices and more by
  all replicas in slices; both and a sharded array come back as saved."""
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  from sorajax.training import checkpoint  # pylint: disable=import-outside-toplevel
  mesh = jax.make_mesh((8,), ("fsdp",))
  replicated = NamedSharding(mesh, PartitionSpec())
  split = NamedSharding(mesh, PartitionSpec("fsdp"))
  values = jax.random.normal(jax.random.key(0), (8 * 2**18 + 40,))  # 8 MiB, then 160 B
  state = {"bias": jax.device_put(values[-40:], replicated),
           "large": jax.device_put(values[:8 * 2**18].reshape(-1, 8), replicated),
           "sharded": jax.device_put(values[:64].reshape(8, 8), split)}
  saver = checkpoint.Checkpointer(str(tmp_path), every=1, keep=None)
  saver.save(1, state)
  saver.wait()
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  written = ocp.StandardCheckpointer().metadata(
      os.path.join(checkpoint.checkpoint_dir(str(tmp_path)), "1", "state")).item_metadata
  # Orbax's default writes the bias in (5,) slices, one per replica.
  assert written["bias"].storage.write_shape == (40,)
  assert written["large"].storage.write_shape == (2**15, 8)  # 1 MiB: each replica writes one
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  restored = checkpoint.Checkpointer(str(tmp_path), every=1, keep=None).restore(1, abstract)
  for name in state:
    np.testing.assert_array_equal(restored[name], state[name])
    assert restored[name].sharding == state[name].sharding


def test_a_dit_run_records_where_its_vae_is(dit_workdir, vae_workdir):
  with open(os.path.join(dit_workdir, configuration.VAE_RUN_FILE)) as f:
    relative = json.load(f)["relative_to_run"]
  assert not os.path.isabs(relative)
  assert os.path.samefile(os.path.join(dit_workdir, relative), vae_workdir)


def test_a_dit_run_keeps_the_vae_step_it_trained_on(dit_workdir, vae_workdir, tmp_path):
  # Saved settled: the VAE trains on after the DiT, and sampling still loads the step the DiT knows.
  vae, dit = str(tmp_path / "vae"), str(tmp_path / "dit")
  shutil.copytree(vae_workdir, vae)
  shutil.copytree(dit_workdir, dit)
  with open(os.path.join(dit, "config.json")) as f:
    saved = json.load(f)
  step = max(checkpoint_lib.saved_steps(vae))
  assert saved["vae_step"] == step
  configuration.write_json_atomic(os.path.join(dit, "config.json"), {**saved, "vae_workdir": vae})
  checkpoints = checkpoint_lib.checkpoint_dir(vae)
  shutil.copytree(os.path.join(checkpoints, str(step)), os.path.join(checkpoints, str(step + 50)))
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1, "context": 1},
                            devices=jax.local_devices()[:1])
  config = configuration.load_saved_config(dit)
  assert dit_objective.DiTObjective(config, mesh).vae_step == step
  # Resuming with the training command (vae_step 0) stays on it; another step is refused.
  config.vae_step = 0
  assert dit_objective.vae_step_to_train_on(config, dit) == step
  fresh = str(tmp_path / "fresh")
  assert dit_objective.vae_step_to_train_on(config, fresh) == step + 50
  config.vae_step = step + 50
  with pytest.raises(configuration.ConfigError, match=f"resume with --config.vae_step={step} "):
    dit_objective.vae_step_to_train_on(config, dit)
  config.vae_workdir = vae_workdir
  with pytest.raises(configuration.ConfigError, match=f"resume with --config.vae_workdir={vae}$"):
    dit_objective.vae_step_to_train_on(config, dit)
  shutil.rmtree(os.path.join(checkpoints, str(step)))
  with pytest.raises(configuration.ConfigError,
                     match=f"holds no step {step} .vae_step., only {step + 50}; .* keep that"):
    dit_objective.DiTObjective(configuration.load_saved_config(dit), mesh)


def test_a_dit_pointed_at_another_dit_run_names_the_fix(dit_workdir):
  config = configuration.load_saved_config(dit_workdir)
  config.vae_workdir, config.vae_step = dit_workdir, 0
  mesh = mesh_lib.make_mesh({"data": 1}, devices=jax.local_devices()[:1])
  with pytest.raises(configuration.ConfigError,
                     match="holds a dit run; point --config.vae_workdir at a VAE run's workdir$"):
    objectives.build_objective(config, mesh)


def test_a_read_only_run_without_latent_stats_samples_as_trained(dit_workdir, tmp_path,
                                                                 monkeypatch):
  """Sampling measures the latent statistics a run lacks the way training did, and leaves a
  folder it may not write as it is."""
  from sorajax.generation import VideoGenerator  # pylint: disable=import-outside-toplevel
  run = os.path.realpath(tmp_path / "dit")
  shutil.copytree(dit_workdir, run)
  stats = os.path.join(run, vae_objective.LATENT_STATS_FILE)
  os.remove(stats)
  inside = lambda path: os.path.commonpath([os.path.realpath(path), run]) == run
  can_access = os.access
  monkeypatch.setattr(os, "access", lambda path, mode: (
      not (mode & os.W_OK and inside(path)) and can_access(path, mode)))
  caption = "a red circle moving left on a black background"
  video = VideoGenerator(run).generate([caption], [0])
  assert not os.path.exists(stats)
  np.testing.assert_array_equal(video, VideoGenerator(dit_workdir).generate([caption], [0]))


def test_a_generator_restores_the_vae_once(dit_workdir, vae_workdir, monkeypatch):
  # Frozen weights (the VAE, a pretrained text encoder) load with the DiT's objective, built once.
  from sorajax.generation import VideoGenerator  # pylint: disable=import-outside-toplevel
  restored, restore = [], vae_objective.restore_vae
  monkeypatch.setattr(vae_objective, "restore_vae",
                      lambda workdir, *args, **kwargs: (restored.append(workdir),
                                                        restore(workdir, *args, **kwargs))[1])
  VideoGenerator(dit_workdir)
  assert restored == [vae_workdir]


def test_a_generator_draws_with_a_decoder_fine_tune_of_its_vae(dit_workdir, vae_workdir,
                                                               decoder_workdir):
  from sorajax.data import shapes  # pylint: disable=import-outside-toplevel
  from sorajax.generation import VideoGenerator  # pylint: disable=import-outside-toplevel
  plain, tuned = VideoGenerator(dit_workdir), VideoGenerator(dit_workdir, decoder=decoder_workdir)
  clip = shapes.render_prompt(shapes.parse_caption(
      "a red circle moving left on a black background"), 5, 16, 16, 0)[None]
  latents = plain.encode(clip)
  np.testing.assert_array_equal(tuned.encode(clip), latents)  # the DiT's latents mean the same
  assert np.abs(tuned.decode(latents).astype(int) - plain.decode(latents)).max() > 0
  # The run's own VAE as the decoder draws exactly what the run draws.
  np.testing.assert_array_equal(VideoGenerator(dit_workdir, decoder=vae_workdir).decode(latents),
                                plain.decode(latents))
  with pytest.raises(configuration.ConfigError,
                     match="holds a dit run; point --decoder at a VAE run's workdir$"):
    VideoGenerator(dit_workdir, decoder=dit_workdir)


def test_a_state_started_from_given_params_starts_its_ema_there_too():
  zeros = {"w": jax.numpy.zeros(3)}
  state = state_lib.TrainState(step=0, params=zeros, opt_state=(), ema_params=zeros)
  assert state_lib.with_params(state, zeros) is state
  started = state_lib.with_params(state, {"w": jax.numpy.ones(3)})
  np.testing.assert_array_equal(started.ema_params["w"], np.ones(3))
  # Its own buffer: the step donates params and EMA, and one buffer cannot be donated twice.
  assert (started.ema_params["w"].unsafe_buffer_pointer()
          != started.params["w"].unsafe_buffer_pointer())
  assert state_lib.with_params(state.replace(ema_params=None), started.params).ema_params is None


def test_sampling_is_deterministic_per_seed(dit_workdir):
  from sorajax.generation import VideoGenerator  # pylint: disable=import-outside-toplevel
  generator = VideoGenerator(dit_workdir)
  caption = "a red circle moving left on a black background"
  first = generator.generate([caption, caption], [0, 1])
  again = generator.generate([caption], [0])
  assert first.shape == (2, 5, 16, 16, 3) and first.dtype == np.uint8
  np.testing.assert_array_equal(first[0], again[0])
  assert np.abs(first[0].astype(int) - first[1].astype(int)).mean() > 1.0
  # Latents do not depend on the batch: its size, or a sample's position in it.
  other = "a green square moving up on a black background"
  latents = lambda captions, seeds, sampler="euler": np.asarray(generator.sample_latents(
      captions, seeds, (2, 2, 2, 16), steps=3, guidance=4.0, shift=1.0, stage_frames=0,
      sampler=sampler))
  pair = latents([caption, other], [0, 5])
  np.testing.assert_allclose(latents([other, caption], [5, 0])[::-1], pair, atol=1e-5)
  np.testing.assert_allclose(latents([caption], [0])[0], pair[0], atol=1e-5)
  # The config's sampler is the one that runs: at 3 steps DPM-Solver++(2M) takes only first-order
  # steps, which are Euler's.
  np.testing.assert_allclose(latents([caption], [0], "dpm_solver_2m")[0], pair[0], atol=1e-5)
  with pytest.raises(configuration.ConfigError, match="valid: euler, heun, dpm_solver_2m"):
    generator.generate([caption], [0], sampler="ddim")
  image = generator.generate([caption], [0], frames=1)
  assert image.shape == (1, 1, 16, 16, 3)
  # The run samples in stages; one pass gives another, equally deterministic video.
  assert generator.config.sample.stage_frames == 1
  one_stage = generator.generate([caption, caption], [0, 0], stage_frames=0)
  np.testing.assert_array_equal(one_stage[0], one_stage[1])
  assert np.abs(one_stage[0].astype(int) - first[0].astype(int)).mean() > 1.0
  generator.objective.given_frames = {"prefix": 0.0}  # as if trained on text alone
  with pytest.raises(configuration.ConfigError, match="given_frames.prefix > 0"):
    generator.generate([caption], [0])
  with pytest.raises(configuration.ConfigError, match="nearest valid"):
    generator.generate([caption], [0], frames=6)


@pytest.mark.parametrize("key,value,message", [
    ("flow.frame_noise_correlation", 1.0, r"frame_noise_correlation=1.0 must be in \[0, 1\)"),
    ("flow.motion_weight", -1.0, r"motion_weight=-1.0 must be >= 0"),
    ("flow.anchor", 1.5, r"flow.anchor=1.5 must be in \[0, 1\]"),
    ("dit.patch", (2, 1, 1), r"flow.anchor needs dit.patch\[0\] == 1"),
    ("data.latent_records", "/somewhere", "precomputed latents .* do not hold yet"),
])
def test_bad_flow_setting_is_a_config_error(vae_workdir, key, value, message):
  config = tiny_config(DIT_CONFIG, **{key: value})
  if key != "flow.anchor":  # the other settings are refused with anchor frames
    config.flow.anchor = 0.5
  config.vae_workdir = vae_workdir
  with pytest.raises(configuration.ConfigError, match=message):
    objectives.build_objective(config, mesh_lib.make_mesh({"data": 8}))


def test_stage_prefixes():
  from sorajax.generation import stage_prefixes  # pylint: disable=import-outside-toplevel
  assert stage_prefixes(3, 1) == [1, 2]  # frame 0, then 1 given 0, then 2 given 0-1
  assert stage_prefixes(5, 2) == [2, 4]
  assert stage_prefixes(3, 0) == [] and stage_prefixes(1, 1) == []  # one pass; an image


def test_resuming_with_another_model_shape_names_the_parameter(vae_workdir, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  from sorajax import train  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "vae")
  shutil.copytree(vae_workdir, workdir)
  config = tiny_config(VAE_CONFIG, steps=4, **{"vae.latent_channels": 8})
  with pytest.raises(configuration.ConfigError,
                     match=r"params/vae/decoder/conv_in/kernel has shape \(.*, 16, \d+\) in the "
                           r"checkpoint but \(.*, 8, \d+\) in this config"):
    train.train_and_evaluate(config, workdir)
