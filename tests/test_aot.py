"""Ahead-of-time compile reports: memory, state bytes and collective traffic of a sharded step."""
import importlib.util
import os
import subprocess
import sys

import pytest

from sorajax import aot, configuration
from sorajax.parallel import collectives
from sorajax.parallel import mesh as mesh_lib
from tiny import DIT_CONFIG, ROOT, VAE_CONFIG, tiny_config


def _report(shape, devices=None):
  config = tiny_config(DIT_CONFIG)
  config.mesh = {"data": 1, "fsdp": 1, "tensor": 1, "context": 1, **shape}
  mesh = mesh_lib.make_mesh(config.mesh, devices=devices)
  vae_config = configuration.load_config_file(f"{VAE_CONFIG}:variant=tiny,frames=5,size=16")
  compiled, objective, target = aot.compile_train_step(config, mesh, vae_config)
  return aot.report(compiled, objective, target, config, mesh)


def test_fsdp_divides_the_state_and_gathers_weights():
  fsdp = _report({"fsdp": 8})
  data = _report({"data": 8})
  params = fsdp["state_bytes"]["params"]
  assert params["global"] == data["state_bytes"]["params"]["global"]
  assert data["state_bytes"]["params"]["per_device"] == params["global"]  # replicated
  assert params["per_device"] < params["global"] / 4  # split, bar the odd-sized leaves
  # Data parallelism only reduces gradients; FSDP gathers the weights it uses.
  assert data["collective_bytes_per_device"]["all-gather"] == 0
  assert data["collective_bytes_per_device"]["all-reduce"] >= params["global"]
  assert fsdp["collective_bytes_per_device"]["all-gather"] >= params["global"] / 2
  for report in (fsdp, data):
    memory = report["memory_per_device_bytes"]
    assert memory["argument"] > 0 and memory["peak_estimate"] >= memory["argument"]


def test_collectives_count_loop_trips():
  hlo = """HloModule m

%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %ag = f32[8,2]{1,0} all-gather(f32[1,2]{1,0} %x), replica_groups=[1,8]<=[8], dimensions={0}
  %rs = f32[2]{0} reduce-scatter(f32[16]{0} %y), replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}
}

ENTRY %main (a: f32[4]) -> f32[4] {
  %w = (s32[], f32[4]) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %ar = bf16[10]{0} all-reduce(bf16[10]{0} %z), replica_groups=[1,8]<=[8], to_apply=%add
}
"""  # noqa: E501 (an HLO line as XLA prints it)
  moved = collectives.collective_bytes(hlo)
  assert moved["all-gather"] == 3 * 8 * 2 * 4
  assert moved["reduce-scatter"] == 3 * 2 * 4 * 8  # the operand: result x group size
  assert moved["all-reduce"] == 10 * 2


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="TPU topologies need libtpu (make aot-venv)")
def test_compiles_for_a_tpu_topology_without_one():
  devices = aot.topology_devices("v5e:2x2")
  report = _report({"fsdp": 4}, devices=devices)
  assert report["devices"] == 4 and "TPU" in report["topology"]
  assert report["collective_bytes_per_device"]["all-gather"] > 0


def test_cli_names_the_flag_for_more_cpu_devices(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "sorajax.aot", f"--config={DIT_CONFIG}:variant=tiny,frames=5,size=16",
       f"--vae_config={VAE_CONFIG}", "--topology=cpu:64"], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr
  assert "--xla_force_host_platform_device_count=64" in result.stderr.strip().splitlines()[-1]


def test_collectives_count_tpu_async_clones_once_and_read_loop_bounds():
  """TPU prints no trip count (the condition's `i < N` gives it) and clones an async collective
  into start, overlap and done computations that share its channel id."""
  hlo = """HloModule m

%start (p: f32[2]) -> f32[8] {
  %ag.1 = f32[8]{0} all-gather(f32[2]{0} %p), channel_id=7, replica_groups=[1,4]<=[4]
}

%done (p: f32[2]) -> f32[8] {
  %ag.2 = f32[8]{0} all-gather(f32[2]{0} %p), channel_id=7, replica_groups=[1,4]<=[4]
}

%cond (p: (s32[], f32[8])) -> pred[] {
  %constant.3 = s32[]{:T(128)} constant(5)
  %gte = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%gte, %constant.3), direction=LT
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %s = (f32[2], f32[8]) fusion(%x), kind=kCustom, calls=%start
  %d = f32[8]{0} fusion(%s), kind=kCustom, calls=%done
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %w = (s32[], f32[8]) while(%t), condition=%cond, body=%body
}
"""
  assert collectives.collective_bytes(hlo)["all-gather"] == 5 * 8 * 4
