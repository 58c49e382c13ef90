"""Scalars to TensorBoard and a console progress line, from process 0 only."""
from __future__ import annotations

import math
import os
import sys
import time

import jax


def is_time(step: int, every: int, last_step: int | None = None) -> bool:
  """The one rule for periodic work (log, checkpoint, sample): every `every` steps and the last."""
  return (every > 0 and step % every == 0) or step == last_step


def _summary_writer(directory: str):
  """tensorboardX's writer, imported without torch: where torch is installed, tensorboardX imports
  it (about 2 s per process) only to accept torch tensors, and we log floats."""
  blocked = "torch" not in sys.modules
  if blocked:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which it expects
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    if blocked:
      del sys.modules["torch"]  # torch itself stays importable
  return SummaryWriter(directory)


class MetricsWriter:
  """TensorBoard event files under workdir/tensorboard plus one console line per log."""

  def __init__(self, workdir: str, total_steps: int, peak_flops: float = 0.0):
    self._total, self._peak_flops = total_steps, peak_flops
    self._writer = None
    if jax.process_index() == 0:
      self._writer = _summary_writer(os.path.join(workdir, "tensorboard"))
    self._last_time = time.perf_counter()
    self._last_step = None

  def write(self, step: int, scalars: dict[str, float], examples: int,
            flops: int = 0) -> dict[str, float]:
    """`examples` and `flops`: what the steps since the previous write trained on and computed
    (buckets differ). FLOPs give TFLOP/s, and MFU against the peak the writer was given. Returns
    the scalars written."""
    now = time.perf_counter()
    if self._last_step is not None and step > self._last_step:
      elapsed = now - self._last_time
      scalars = dict(scalars, **{"perf/step_time": elapsed / (step - self._last_step),
                                 "perf/examples_per_s": examples / elapsed})
      if flops:
        scalars["perf/tflops_per_s"] = flops / elapsed / 1e12
        if self._peak_flops:
          scalars["perf/mfu"] = flops / elapsed / self._peak_flops
    self._last_time, self._last_step = now, step
    if self._writer is None:
      return scalars
    for name, value in scalars.items():
      self._writer.add_scalar(name, value, step)
    self._writer.flush()
    print(self._console_line(step, scalars), flush=True)
    return scalars

  def write_eval(self, step: int, scalars: dict[str, float]) -> None:
    """Evaluation scalars: to TensorBoard and one console line, outside the train-speed clock."""
    if self._writer is None:
      return
    for name, value in scalars.items():
      self._writer.add_scalar(name, value, step)
    self._writer.flush()
    print(f"step {step}/{self._total} | " +
          " | ".join(f"{name} {value:.4f}" for name, value in scalars.items()), flush=True)

  def _console_line(self, step: int, scalars: dict[str, float]) -> str:
    parts = [f"step {step}/{self._total}"]
    for name, label in (("train/loss", "loss"), ("train/psnr", "psnr")):
      if name in scalars:
        parts.append(f"{label} {scalars[name]:.4f}")
    if "perf/step_time" in scalars:
      step_time = scalars["perf/step_time"]
      eta = step_time * (self._total - step)
      parts.append(f"{1 / step_time:.2f} steps/s")
      parts.append(f"{scalars['perf/examples_per_s']:.1f} examples/s")
      if "perf/mfu" in scalars:
        parts.append(f"MFU {100 * scalars['perf/mfu']:.1f}%")
      parts.append(f"eta {int(eta // 60)}m{int(eta % 60):02d}s")
    return " | ".join(parts)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def check_finite(loss: float, step: int, previous_step: int) -> None:
  """Safety switch: stop at the first non-finite loss, naming the steps it appeared between."""
  if not math.isfinite(loss):
    raise FloatingPointError(f"loss became {loss} between steps {previous_step} and {step}; "
                             "lower train.learning_rate or check the data")
