"""Writes a folder of RGB PNGs for trying `--config.data.name=folder`: MNIST training
digits resized to 32x32 and tinted by class (each digit its own colour), one sub-folder
per class (digit_0 ... digit_9), `--per_class` images each.

    python experiments/rgb_digits.py --out=/tmp/rgb_digits --per_class=600
    python -m vae_jax.main --config=configs/conv.py:short --config.data.name=folder \\
        --config.data.path=/tmp/rgb_digits --workdir=runs/rgb_digits

MNIST comes from TFDS as for every run (offline: $VAE_JAX_MANUAL_DIR).
"""

import os

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from vae_jax import config_schema
from vae_jax import input_pipeline


def write_folder(directory: str, per_class: int, manual_dir: str = "") -> int:
  """Writes the folder; returns the number of images written."""
  data = config_schema.default_config().data
  data.manual_dir = manual_dir
  train = input_pipeline.load_splits(data)["train"]
  colours = np.random.default_rng(0).uniform(0.3, 1.0, (10, 3))  # One tint per digit.
  written = 0
  for digit in range(10):
    folder = os.path.join(directory, f"digit_{digit}")
    os.makedirs(folder, exist_ok=True)
    for i, index in enumerate(np.flatnonzero(train.labels == digit)[:per_class]):
      gray = Image.fromarray(train.images[index, ..., 0]).resize(
          (32, 32), Image.Resampling.BILINEAR)
      rgb = (np.asarray(gray, np.float32)[..., None] * colours[digit]).astype(np.uint8)
      Image.fromarray(rgb).save(os.path.join(folder, f"{i:04d}.png"))
      written += 1
  return written


def main(argv):
  del argv
  count = write_folder(flags.FLAGS.out, flags.FLAGS.per_class)
  print(f"Wrote {count} images to {flags.FLAGS.out}")


if __name__ == "__main__":
  flags.DEFINE_string("out", None, "The folder to write (class sub-folders inside).")
  flags.DEFINE_integer("per_class", 600, "Images per digit.")
  flags.mark_flags_as_required(["out"])
  app.run(main)
