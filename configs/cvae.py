"""Seed 003, part 3: the conditional VAE, the project's main job.

As configs/mlp2d.py (784-256 ReLU, latent 2, linear Gaussian mean, truncated-normal init
0.001, KL weight 1/128 as the seed's batch-summed squared error implies, Adam 1e-3, batch
128, 50 epochs), with the label's one-hot concatenated to the encoder input and to z at
the decoder input, so a chosen digit can be generated.

    python -m vae_jax.main --config=configs/cvae.py --workdir=runs/cvae
    python -m vae_jax.sample --workdir=runs/cvae --label=7 --num=64

Conditioning is an option of every backbone: --config.model.conditional=True also works
with configs/mlp.py and configs/conv.py.
"""

import importlib.util
import os


def _mlp2d_config(arg):
  # Loaded by path, not `from configs import`, so this file works from any directory.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mlp2d.py")
  spec = importlib.util.spec_from_file_location("vae_jax_configs_mlp2d", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg=None):
  config = _mlp2d_config(arg)
  config.model.conditional = True
  config.model.num_classes = 10
  return config
