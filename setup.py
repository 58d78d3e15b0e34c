"""vae_jax: variational autoencoders in JAX/Flax for MNIST-like data."""

import setuptools

setuptools.setup(
    name="vae_jax",
    version="0.1.0",
    description="Functional JAX/Flax research codebase for variational autoencoders.",
    packages=setuptools.find_packages(include=["vae_jax", "vae_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",  # jax.shard_map and lax.pcast as used here.
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "etils[epath]>=1.5",  # Workdirs on any filesystem (local, gs://, ...), as orbax's.
        "google-cloud-storage>=2.18",  # orbax checks a gs:// bucket's layout with it.
        "clu>=0.0.12",
        "tensorflow-cpu>=2.16",
        "tensorboard>=2.16",
        "tensorflow-datasets>=4.9.6",
        "importlib_resources>=6",
        "numpy>=1.26",
        "matplotlib>=3.8",
        "absl-py>=2.0",
        "ml-collections>=0.1.1",
    ],
    extras_require={
        # A gs:// workdir is tested against an in-memory GCS emulator on localhost.
        # pytest-xdist runs the tests in one worker per CPU (pytest.ini).
        "test": ["pytest>=7", "pytest-xdist>=3.5", "chex>=0.1.87",
                 "gcp-storage-emulator>=2026.7.19", "cryptography>=42"],
        # The accelerator builds of JAX: pip install -e '.[cuda]' (NVIDIA GPUs, CUDA 13
        # wheels; '.[cuda12]' for CUDA 12 drivers) or -e '.[tpu]' (Cloud TPU VMs).
        "cuda": ["jax[cuda13]>=0.10"],
        "cuda12": ["jax[cuda12]>=0.10"],
        "tpu": ["jax[tpu]>=0.10"],
    },
)
