r"""First checkpoint save of a data-parallel train state: orbax's default array handler against
sorajax's (training/checkpoint.py: replicated arrays split across replicas only from 1 MiB
slices up), in one run.

  python bench/checkpoint_save.py [--config configs/shapes/dit.py --vae_workdir runs/demo/vae]
      [--devices 8]

Each handler saves in a fresh process (a process compiles each eager slice once, so the first
save is the one that pays): a freshly initialised train state of the config (default: the demo
VAE config) replicated over --devices fake CPU devices (a data-parallel mesh), saved once and
waited for. Prints each
handler's seconds, the compiles it triggered and the ratio.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save_once(config_path: str, vae_workdir: str | None, handler: str) -> None:
  """In this process: build the state, save it once; prints 'seconds compiles'."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from sorajax import configuration  # pylint: disable=import-outside-toplevel
  from sorajax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from sorajax.training import checkpoint, objectives  # pylint: disable=import-outside-toplevel
  from sorajax.training import state as state_lib  # pylint: disable=import-outside-toplevel
  if handler == "default":  # orbax's own, as registered before sorajax's replaced it
    ours = ocp.type_handlers.get_type_handler(jax.Array)
    store = ours._array_metadata_store  # pylint: disable=protected-access
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(array_metadata_store=store), override=True)
  config = configuration.load_config_file(config_path)
  if vae_workdir:
    config.vae_workdir = vae_workdir
  mesh = mesh_lib.make_mesh({"data": -1})
  objective = objectives.build_objective(config, mesh)
  state, _ = state_lib.init_sharded_state(
      objective.init_params, state_lib.make_optimizer(config.train), config.train.ema_decay,
      jax.random.key(0), mesh, mesh_lib.logical_rules(config.logical_rules))
  jax.block_until_ready(state)
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, _, **kw: compiles.append(1) if event.endswith("backend_compile_duration")
      else None)
  saver = checkpoint.Checkpointer(tempfile.mkdtemp(), every=1, keep=None)
  start = time.perf_counter()
  saver.save(1, state)
  saver.wait()
  print(f"{time.perf_counter() - start:.3f} {len(compiles)}")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default=os.path.join(ROOT, "configs/shapes/vae.py"))
  parser.add_argument("--vae_workdir", default=None)
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--child", choices=["default", "sorajax"], default=None)
  args = parser.parse_args()
  if args.child:
    save_once(args.config, args.vae_workdir, args.child)
    return
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}")
  seconds = {}
  for handler in ("default", "sorajax"):
    argv = [sys.executable, __file__, "--config", args.config, "--child", handler]
    if args.vae_workdir:
      argv += ["--vae_workdir", args.vae_workdir]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    took, compiles = out.stdout.split()[-2:]
    seconds[handler] = float(took)
    print(f"{handler}: first save {float(took):.2f} s, {compiles} compiles")
  print(f"default / sorajax: {seconds['default'] / seconds['sorajax']:.1f}x "
        f"({args.devices} devices, {os.path.basename(args.config)})")


if __name__ == "__main__":
  main()
