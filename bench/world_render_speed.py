r"""Rendering cost of the built-in world: milliseconds per example at a few clip sizes.

  python bench/world_render_speed.py [--examples 200]

The DiT demo renders its whole batch on the host every step, so this bounds how much of a step the
input pipeline takes (compare with bench/train_step_speed.py in the same run).
"""
import argparse
import time

from sorajax.data import shapes

SIZES = [(9, 32, 32), (17, 64, 64)]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--examples", type=int, default=200)
  args = parser.parse_args()
  for frames, height, width in SIZES:
    for objects in (1, 3):
      world = shapes.ShapesWorld(frames=frames, height=height, width=width,
                                 min_objects=objects, max_objects=objects)
      world[0]  # warm caches
      start = time.perf_counter()
      for index in range(args.examples):
        world[index]
      ms = 1e3 * (time.perf_counter() - start) / args.examples
      print(f"{frames}x{height}x{width}, {objects} object(s): {ms:.2f} ms per example")


if __name__ == "__main__":
  main()
