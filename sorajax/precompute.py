r"""Encode a DiT run's training clips once with its frozen VAE into latent shards.

  python -m sorajax.precompute --config configs/shapes/dit.py --out data/latents \
      --config.vae_workdir=runs/demo/vae --config.data.source=records \
      --config.data.records=data/train
  python -m sorajax.train --config ... --config.data.latent_records=data/latents

The config is the DiT run's own: its data source, buckets, frame sampling and VAE decide what is
encoded, and the run checks that the latents came from its VAE. Each bucket's clips are cut into
shards of --clips_per_shard; process p of n encodes shards p, p+n, ... on its first device.
Shards written by an earlier run with the same clips and VAE are kept, so an interrupted job
resumes; the process that finds every shard done writes dataset.json. Layout:
sorajax/data/latent_records.py. With a frozen text encoder (text.encoder minilm or t5) each shard's
captions are embedded too, into prompt_embeddings/ (data/prompt_embeddings.py), so training looks
them up instead of running the encoder; precomputing again for another encoder keeps the latents.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

from absl import app, flags
import jax
from ml_collections import config_flags

from sorajax import configuration
from sorajax.configuration import ConfigError
from sorajax.data import latent_cache, latent_records, pipeline, records
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import dit_objective


def _fingerprint(config, bucket, source, indices: range, vae_workdir: str, vae_step: int) -> str:
  """What a shard is encoded from: the clips (a prepared dataset's source names its contents and
  the bucket's members), the data settings, the slice and the VAE."""
  # text_max_length changes neither clips nor captions: another text encoder keeps the latents.
  data = {k: v for k, v in config.data.to_dict().items()
          if k not in ("worker_count", "latent_cache", "latent_records", "buckets",
                       "text_max_length")}
  text = json.dumps(dict(data=data, bucket=bucket.name, seed=config.seed, vae=vae_workdir,
                         vae_step=vae_step, clips=[indices.start, indices.stop],
                         source=getattr(source, "fingerprint", None)), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()


def precompute(config, out: str, clips_per_shard: int = 1024, process_index: int = 0,
               process_count: int = 1, max_clips: int = 0, batch_size: int = 16) -> dict | None:
  """Writes this process's latent shards; returns dataset.json's contents once every shard of
  every bucket is done (here or by other processes), else None."""
  if clips_per_shard < 1 or batch_size < 1 or max_clips < 0:
    raise ValueError("--clips_per_shard and --batch_size must be >= 1 and --max_clips >= 0")
  if not 0 <= process_index < process_count:
    raise ValueError(f"--process_index={process_index} must be in [0, --process_count="
                     f"{process_count})")
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1, "context": 1},
                            devices=jax.local_devices()[:1])
  objective = dit_objective.DiTObjective(config, mesh)
  vae_workdir = os.path.realpath(config.vae_workdir)
  os.makedirs(out, exist_ok=True)
  # A frozen text encoder's caption embeddings, one table per shard (data/prompt_embeddings.py).
  prompts_dir = (os.path.join(out, dit_objective.PROMPTS_DIR) if objective.text_encoder is not None
                 else None)
  buckets, shards = {}, []  # shards: (base, fingerprint) of every shard of every bucket
  for bucket in objective.buckets:
    source = pipeline.make_source(config.data, "train", config.seed, bucket.size)
    clips = min(len(source), max_clips) if max_clips else len(source)
    count = -(-clips // clips_per_shard)
    for index in range(count):
      part = range(index * clips_per_shard, min(clips, (index + 1) * clips_per_shard))
      base = latent_records.shard_base(out, bucket.name, index)
      fingerprint = _fingerprint(config, bucket, source, part, vae_workdir, objective.vae_step)
      shards.append((base, fingerprint))
      if index % process_count != process_index:
        continue
      captions = None
      if not records.finished_shard(base, fingerprint):
        encoded = latent_cache.encode_source(objective.vae_latents, source, part, batch_size)
        latent_records.write_shard(base, encoded.captions, encoded.latents, fingerprint)
        captions = encoded.captions
      # A rewritten shard may hold other captions: its table is rewritten with it.
      table_path = prompts_dir and dit_objective.prompt_table_path(
          prompts_dir, objective.text_encoder, base)
      if prompts_dir and (captions is not None or not os.path.isfile(table_path)):
        table = objective.prompt_embeddings()
        table.add(latent_records.shard_captions(base) if captions is None else captions,
                  objective.encode_prompts)
        table.save(prompts_dir, os.path.basename(base))
    buckets[bucket.name] = {"clips": clips, "shards": count,
                            "latent_shape": list(objective.latent_shape(*bucket.size))}
  # Only now, after this process's own shards: the others' may have finished meanwhile.
  if not all(records.finished_shard(base, fingerprint) for base, fingerprint in shards):
    return None
  if prompts_dir and not all(os.path.isfile(dit_objective.prompt_table_path(
      prompts_dir, objective.text_encoder, base)) for base, _ in shards):
    return None
  info = {"format": latent_records.FORMAT, "version": latent_records.VERSION,
          "vae_workdir": vae_workdir, "vae_step": objective.vae_step, "buckets": buckets}
  configuration.write_json_atomic(os.path.join(out, records.DATASET_FILE), info)
  return info


def main(argv):
  del argv
  if not _OUT.value:
    sys.exit("--out is required")
  try:
    info = precompute(_CONFIG.value, _OUT.value, _PER_SHARD.value, _PROCESS_INDEX.value,
                      _PROCESS_COUNT.value, _MAX_CLIPS.value, _BATCH.value)
  except (ValueError, ConfigError) as e:
    sys.exit(f"error: {e}")
  if info is None:
    print(f"process {_PROCESS_INDEX.value} of {_PROCESS_COUNT.value} done; the last process to "
          f"finish writes {records.DATASET_FILE}")
  else:
    sizes = ", ".join(f"{name}: {b['clips']} clips" for name, b in info["buckets"].items())
    print(f"wrote latents to {_OUT.value} ({sizes}); train with "
          f"--config.data.latent_records={_OUT.value}")


if __name__ == "__main__":
  # Flags exist only when this module is the program (importing it adds none to absl's registry).
  _CONFIG = config_flags.DEFINE_config_file("config", None, "The DiT run's config (path[:arg]).")
  _OUT = flags.DEFINE_string("out", None, "Latent dataset folder to write (or to resume).")
  _PER_SHARD = flags.DEFINE_integer("clips_per_shard", 1024, "Clips per shard.")
  _PROCESS_INDEX = flags.DEFINE_integer("process_index", 0, "This process, of --process_count.")
  _PROCESS_COUNT = flags.DEFINE_integer("process_count", 1, "Processes sharing the job.")
  _MAX_CLIPS = flags.DEFINE_integer("max_clips", 0, "Clips per bucket at most (0: all); needed "
                                    "for the built-in world, whose source is endless.")
  _BATCH = flags.DEFINE_integer("batch_size", 16, "Clips per encoder call.")
  app.run(main)
