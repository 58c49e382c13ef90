"""sorajax: Sora-style text-to-video training and sampling in JAX."""
import setuptools

setuptools.setup(
    name="sorajax",
    version="0.1.0",
    description="Train and sample Sora-style text-to-video models with JAX and Flax.",
    packages=setuptools.find_packages(include=["sorajax", "sorajax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10",
        "flax>=0.10",
        "optax",
        "orbax-checkpoint",
        "grain",
        "array_record",  # prepared datasets' shards (sorajax.prepare)
        "msgpack",       # their records
        "ml_collections",
        "chex",
        "absl-py",
        "numpy",
        "av",            # PyAV: mp4 writing
        "pillow",        # gif and contact sheets
        "tqdm",
        "tensorboardX",
    ],
    extras_require={
        # TFDS drags in TensorFlow; only the TFDS source needs it.
        "tfds": ["tensorflow-datasets", "tensorflow-cpu"],
        "dev": ["pytest", "pytest-xdist"],
        # libtpu, matched to jax by jax's own extra: training on TPU VMs, and ahead-of-time
        # compiles for TPU topologies from any machine (make aot-venv).
        "tpu": ["jax[tpu]"],
    },
)
