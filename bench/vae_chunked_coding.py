r"""Memory and speed of chunked causal VAE coding against one pass over the whole clip.

  python bench/vae_chunked_coding.py [--variant demo] [--size 256] [--chunk 4]

Memory: XLA's own accounting of the compiled programs (arguments + outputs + temporaries of the
largest call; for chunked coding that includes the carried caches), so the figure is what a device
must hold, free of the Python process's baseline. Each clip length also runs in a fresh subprocess
whose peak RSS is reported (glibc's mmap threshold fixed at 1 MiB, see below), with each decoded
piece turned to uint8 and dropped, as a video writer would. Speed: frames/s of encode and decode
after compile, median of 3 runs.
Parameters are random: cost does not depend on their values.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from sorajax.models import vae as vae_lib
from sorajax.models import vae_chunked


def _program_bytes(jitted, *args) -> int:
  stats = jitted.lower(*args).compile().memory_analysis()
  return stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes


def _setup(variant: str, size: int, chunk: int):
  model = vae_lib.get_vae(variant)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1, size, size, 3)))["params"]
  return model, params, vae_chunked.ChunkedCoder(model, params, chunk)


def _latents(model, frames: int, size: int) -> np.ndarray:
  shape = (1, 1 + (frames - 1) // model.temporal_factor, size // model.spatial_factor,
           size // model.spatial_factor, model.latent_channels)
  return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def device_memory(variant: str, size: int, chunk: int, frames: int) -> dict:
  """Bytes of the largest compiled call: one-pass decode against chunked decode."""
  model, params, coder = _setup(variant, size, chunk)
  z = jnp.asarray(_latents(model, frames, size))
  full = jax.jit(lambda p, z: model.apply({"params": p}, z, method="decode"))
  one_pass = _program_bytes(full, params, z)
  _, cache = coder._decode_first(params, z[:, :1])  # pylint: disable=protected-access
  chunked = max(_program_bytes(coder._decode_first, params, z[:, :1]),  # pylint: disable=protected-access
                _program_bytes(coder._decode_next, params, cache, z[:, 1:1 + chunk]))  # pylint: disable=protected-access
  return {"one_pass": one_pass, "chunked": chunked}


def host_peak_rss(variant: str, size: int, chunk: int, frames: int) -> int:
  """Run in a subprocess: decode chunked, streaming pieces to uint8; return peak RSS in bytes."""
  model, _, coder = _setup(variant, size, chunk)
  written = 0
  for piece in coder.decode_pieces(_latents(model, frames, size)):
    # A video writer takes each piece as uint8 and keeps none of it.
    written += np.clip((piece + 1) * 127.5, 0, 255).astype(np.uint8).shape[1]
  assert written == frames
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def frames_per_second(variant: str, size: int, chunk: int, frames: int) -> dict:
  model, params, coder = _setup(variant, size, chunk)
  video = np.random.default_rng(0).uniform(-1, 1, (1, frames, size, size, 3)).astype(np.float32)
  full_encode = jax.jit(lambda p, v: model.apply({"params": p}, v, method="encode"))
  full_decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method="decode"))
  runs = {
      "encode one pass": lambda: jax.block_until_ready(full_encode(params, video)),
      "encode chunked": lambda: jax.block_until_ready(coder.encode(video)),
  }
  z = np.asarray(full_encode(params, video)[0])
  runs["decode one pass"] = lambda: jax.block_until_ready(full_decode(params, z))
  runs["decode chunked"] = lambda: coder.decode(z)
  result = {}
  for name, run in runs.items():
    run()  # compile
    times = []
    for _ in range(3):
      start = time.perf_counter()
      run()
      times.append(time.perf_counter() - start)
    result[name] = frames / float(np.median(times))
  return result


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--variant", default="demo")
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--chunk", type=int, default=4, help="latent frames per piece")
  parser.add_argument("--speed_size", type=int, default=32, help="frame size of the speed test")
  parser.add_argument("--rss_frames", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.rss_frames:  # the subprocess half of the RSS measurement
    print(json.dumps(host_peak_rss(args.variant, args.size, args.chunk, args.rss_frames)))
    return
  print(f"devices: {jax.devices()}; VAE {args.variant}, {args.size}x{args.size}, "
        f"{args.chunk} latent frames per piece")
  memory, rss = {}, {}
  for frames in (17, 129):
    memory[frames] = device_memory(args.variant, args.size, args.chunk, frames)
    cmd = [sys.executable, __file__, "--variant", args.variant, "--size", str(args.size),
           "--chunk", str(args.chunk), "--rss_frames", str(frames)]
    # glibc raises its mmap threshold as large blocks are freed, after which freed temporaries
    # stay in the heap and RSS creeps up to a plateau; a fixed threshold measures the coder itself.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    rss[frames] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                            env=env).stdout.strip().splitlines()[-1])
    print(f"decode {frames} frames: XLA bytes one pass "
          f"{memory[frames]['one_pass'] / 2**20:.1f} MiB, "
          f"chunked {memory[frames]['chunked'] / 2**20:.1f} MiB; chunked process peak RSS "
          f"{rss[frames] / 2**20:.0f} MiB")
  for kind in ("one_pass", "chunked"):
    print(f"129 / 17 frames, {kind} XLA bytes: {memory[129][kind] / memory[17][kind]:.2f}")
  print(f"129 / 17 frames, chunked process peak RSS: {rss[129] / rss[17]:.2f}")
  speed = frames_per_second(args.variant, args.speed_size, args.chunk, 33)
  print(f"frames/s at 33x{args.speed_size}x{args.speed_size}: " +
        ", ".join(f"{name} {fps:.0f}" for name, fps in speed.items()))


if __name__ == "__main__":
  main()
