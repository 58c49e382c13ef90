r"""Causal video VAE on the built-in shapes world (the first half of `make demo`).

  python -m sorajax.train --config configs/shapes/vae.py --workdir runs/demo/vae
  python -m sorajax.train --config configs/shapes/vae.py:variant=tiny,steps=20 --workdir /tmp/vae

Arg keys: variant (tiny|demo|base), frames, size, steps, batch.
"""
import ml_collections

from sorajax import configuration
from sorajax.configuration import parse_arg
from sorajax.parallel import mesh


def get_config(arg=None):
  arg = parse_arg(arg, variant="demo", frames=9, size=32, steps=6000, batch=2)
  config = ml_collections.ConfigDict()
  config.objective = "vae"
  config.seed = 0
  config.compute_dtype = "float32"

  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, context=1))
  # Across slices (TPU multislice; processes elsewhere): each axis is its mesh size x this.
  config.dcn_mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1, context=1))
  config.logical_rules = [list(rule) for rule in mesh.DEFAULT_LOGICAL_RULES]

  config.data = ml_collections.ConfigDict()
  config.data.source = "shapes"  # or "records", "tfds"
  config.data.update(configuration.dataset_fields())  # their paths, sampling and TFDS names
  config.data.frames = arg.frames
  config.data.height = arg.size
  config.data.width = arg.size
  config.data.min_objects = 1
  config.data.max_objects = 3
  # Where training's bouncing clips start in their round trip (shapes.BOUNCE_PHASES): "middle"
  # touches the wall at mid-clip; "any" starts anywhere, so the turn at the far end shows too.
  config.data.bounce_phase = "middle"
  config.data.worker_count = 0
  config.data.text_max_length = 24  # the longest 3-object caption is 22 tokens

  config.vae = ml_collections.ConfigDict()
  config.vae.variant = arg.variant
  # 4x8x8 compression into 16 channels, the peers' layout (Wan 2.1, HunyuanVideo, CogVideoX).
  config.vae.temporal_factor = 4
  config.vae.spatial_factor = 8
  config.vae.latent_channels = 16
  # A small full-resolution stage at the end of the decoder (vae.Decoder): +2.8 dB held out at 2400
  # steps, where an L2-trained decoder otherwise blurs edges (bench/RESULTS.md).
  config.vae.refine_features = 13
  config.vae.refine_width = 16  # channels of the full-resolution stage's hidden layer
  config.vae.recon_loss = "l2"  # l1 | l2 (L1 stalled near 18 dB on the demo; L2 reached 23 dB)
  config.vae.kl_weight = 1e-6
  # > 0: the error's change from frame to frame, in the reconstruction term's norm. At 3 a still
  # scene decodes at 0.65 gray levels of change a frame against 1.48, and held out it gains
  # 1.2 dB; but DiTs on it move at 0.62 of the world's pace against 0.87 (bench/RESULTS.md,
  # issue 5), so the demo leaves it off.
  config.vae.temporal_weight = 0.0
  # An optional hinge GAN on 3D patches (models/discriminator.py); weight 0 leaves it out.
  config.vae.adversarial_weight = 0.0
  config.vae.adversarial_start = 0  # the step at which the adversarial terms switch on
  config.vae.discriminator_channels = (16, 32, 64)
  # A decoder fine-tune: start from the trained VAE run at init_workdir (at init_step; 0: its
  # latest, which should be the step the DiTs decode with; the run saves the step it took), keep
  # its encoder (so its latents, their statistics and the DiTs trained on them stay valid) and
  # show the decoder latents noised by up to latent_noise channel spreads, so it draws clean
  # video from the near misses a DiT samples. Sample a DiT through it with --decoder
  # (sorajax.sample, evaluate):
  #   python -m sorajax.train --config configs/shapes/vae.py:steps=3000,batch=8
  #     --config.vae.init_workdir=VAE --config.vae.train_encoder=False
  #     --config.vae.latent_noise=0.3 --config.train.learning_rate=2e-4 --workdir VAE_D
  # (bench/RESULTS.md, issue 5 twenty-sixth pass, with the DiTs' --config.data.bounce_phase=any).
  # The kept encoder needs train.weight_decay and train.ema_decay 0 (both are here).
  # latent_noise=0.3 from the first step (train_encoder=True, no init_workdir) costs 1.4 dB held
  # out, but the depth-8 DiT on it kept every window of its 24 counted minutes at 9600 steps
  # (bench/RESULTS.md, issue 5 twenty-seventh pass).
  config.vae.init_workdir = ""
  config.vae.init_step = 0
  config.vae.train_encoder = True
  config.vae.latent_noise = 0.0
  config.vae.eval_clips = 64  # held-out clips scored (PSNR, SSIM) at every eval and at the end
  config.vae.latent_stats_clips = 256  # training clips whose latents give the stored mean and std

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = arg.batch
  config.train.num_steps = arg.steps
  config.train.learning_rate = 5e-3
  config.train.warmup_steps = 50
  config.train.weight_decay = 0.0
  config.train.grad_clip = 1.0
  config.train.ema_decay = 0.0  # the VAE is used as trained
  config.train.log_every = 250
  config.train.eval_every = 0  # 0: evaluate at the last step only
  config.train.checkpoint_every = 1000
  config.train.keep_checkpoints = 2
  return config
