r"""Input throughput from prepared datasets against what the demo DiT step consumes, in one run.

  python bench/data_throughput.py --vae_workdir runs/demo/vae [--clips 96] [--batches 8]

Renders --clips clips of the built-in world at 33x64x64 (16 fps mp4 files), prepares them twice
(`--store file`: the mp4 bytes, decoded on every read; `--store raw`: decoded frames), and
precomputes their latents with the demo DiT config. Each is read through the training loader
(grain, 0, 1 and 2 worker processes) at the demo's 9x32x32 bucket, every 2nd frame, cropped and
resized, captions tokenised: clips per second after a warm-up batch. The demo DiT train step on
latent records is timed in the same run (and on the demo's in-memory latent cache); headroom =
loader clips/s over the step's clips/s.
"""
import argparse
import os
import tempfile
import time

from absl import flags
import jax

from sorajax import configuration, precompute, prepare
from sorajax.data import latent_records, pipeline, shapes, video_io
from sorajax.parallel import mesh as mesh_lib
from sorajax.training import dit_objective

import train_step_speed  # bench/, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_SIZE = (33, 64, 64)


def write_folder(folder: str, clips: int) -> str:
  world = shapes.ShapesWorld(frames=SOURCE_SIZE[0], height=SOURCE_SIZE[1], width=SOURCE_SIZE[2],
                             min_objects=1, max_objects=1, seed=0)
  captions = os.path.join(folder, "captions.csv")
  os.makedirs(os.path.join(folder, "videos"))
  with open(captions, "w") as f:
    f.write("video,caption\n")
    for i in range(clips):
      example = world[i]
      video_io.write_mp4(os.path.join(folder, "videos", f"{i:04d}.mp4"), example["video"], fps=16)
      f.write(f'{i:04d}.mp4,"{example["caption"]}"\n')
  return captions


def clips_per_second(source, tokenizer, batch: int, batches: int, workers: int) -> float:
  loader = pipeline.make_loader(source, batch_size=batch, seed=0, tokenizer=tokenizer,
                                worker_count=workers, share=(0, 1))
  iterator = iter(loader)
  next(iterator)  # warm-up: worker start, first reads (32 timed batches dwarf the prefetch)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batch * batches / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--vae_workdir", required=True)
  parser.add_argument("--clips", type=int, default=96)
  parser.add_argument("--batches", type=int, default=32)
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags (defaults here)
  with tempfile.TemporaryDirectory() as tmp:
    captions = write_folder(tmp, args.clips)
    config = configuration.load_config_file(os.path.join(ROOT, "configs/shapes/dit.py"))
    config.vae_workdir = args.vae_workdir
    config.data.buckets = f"9x32x32:{config.train.batch_size}"
    config.data.source, config.data.frame_stride = "records", 2
    batch = config.train.batch_size
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1, "context": 1},
                              devices=jax.local_devices()[:1])
    tokenizer = dit_objective.DiTObjective(config, mesh).tokenizer
    rates = {}
    for store in ("file", "raw"):
      out = os.path.join(tmp, store)
      start = time.perf_counter()
      prepare.prepare(os.path.join(tmp, "videos"), captions, out, prepare.Settings(store))
      size = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out)) / 2**20
      print(f"prepare --store {store}: {args.clips} clips in {time.perf_counter() - start:.1f} s, "
            f"{size:.1f} MiB")
      config.data.records = out
      source = pipeline.make_source(config.data, "train", config.seed, (9, 32, 32))
      for workers in (0, 1, 2):
        rates[(store, workers)] = clips_per_second(source, tokenizer, batch, args.batches,
                                                   workers)
    latents = os.path.join(tmp, "latents")
    start = time.perf_counter()
    precompute.precompute(config, latents)
    print(f"precompute: {args.clips} clips in {time.perf_counter() - start:.1f} s")
    source = latent_records.LatentRecords(latents, "9x32x32")
    for workers in (0, 1, 2):
      rates[("latents", workers)] = clips_per_second(source, tokenizer, batch, args.batches,
                                                     workers)
    config.data.latent_records = latents
    config.mesh.data = -1
    seconds, _ = train_step_speed.time_steps(config, args.steps, os.path.join(tmp, "run"))
    # The demo's own way: the built-in world's clips encoded into an in-memory latent cache.
    config.data.latent_records, config.data.source = "", "shapes"
    config.data.latent_cache = args.clips
    cached, _ = train_step_speed.time_steps(config, args.steps, os.path.join(tmp, "cached"))
  consumed = batch / seconds
  print(f"demo DiT step on latent records: {seconds * 1000:.0f} ms, {consumed:.1f} clips/s; "
        f"on the in-memory latent cache: {cached * 1000:.0f} ms")
  print("| source | workers | clips/s | headroom over the DiT step |")
  print("|---|---|---|---|")
  for (store, workers), rate in rates.items():
    print(f"| {store} | {workers} | {rate:.1f} | {rate / consumed:.1f}x |")


if __name__ == "__main__":
  main()
