"""Every test sees 8 fake CPU devices, so sharded paths run on one machine.

Tests run few steps of tiny models, so XLA's compile time dominates: the flags below trade
generated-code speed for a 3-5x faster compile.
"""
import os

os.environ["XLA_FLAGS"] = " ".join([
    os.environ.get("XLA_FLAGS", ""),
    "--xla_force_host_platform_device_count=8",
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
