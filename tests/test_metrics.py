"""The metrics writer's throughput figures: examples/s, TFLOP/s and MFU over mixed buckets."""
import time

import pytest

from sorajax.training import metrics


def test_throughput_and_mfu_are_rates_over_the_interval(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path), total_steps=10, peak_flops=1e12)
  start = time.perf_counter()
  first = writer.write(1, {"train/loss": 1.0}, examples=8, flops=10**9)
  assert "perf/mfu" not in first  # no interval before the first write
  time.sleep(0.05)
  scalars = writer.write(3, {"train/loss": 0.5}, examples=24, flops=6 * 10**9)
  elapsed = time.perf_counter() - start
  # Two steps in the interval: examples/s times the interval's length gives back its 24 examples.
  assert scalars["perf/examples_per_s"] * 2 * scalars["perf/step_time"] == pytest.approx(24)
  assert 6e9 / elapsed / 1e12 <= scalars["perf/tflops_per_s"] <= 6e9 / 0.05 / 1e12
  assert scalars["perf/mfu"] == pytest.approx(scalars["perf/tflops_per_s"])  # peak is 1 TFLOP/s
  writer.close()
  unpeaked = metrics.MetricsWriter(str(tmp_path / "b"), total_steps=10)
  unpeaked.write(1, {}, examples=1, flops=1)
  time.sleep(0.01)
  assert "perf/mfu" not in unpeaked.write(2, {}, examples=1, flops=10**6)
  unpeaked.close()
