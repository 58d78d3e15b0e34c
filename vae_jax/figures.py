"""Matplotlib figures from arrays. Builders return a Figure; the caller decides where it goes."""

import math

import matplotlib

matplotlib.use("Agg")  # Files only; never needs a display.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


def _show(axis, image):
  axis.imshow(np.asarray(image).squeeze(-1), cmap="gray", vmin=0.0, vmax=1.0)
  axis.set_xticks([])
  axis.set_yticks([])


def reconstructions(originals, reconstructed, labels=None) -> plt.Figure:
  """Originals (top row) over their reconstructions (bottom row), labels as titles."""
  num = len(originals)
  fig, axes = plt.subplots(2, num, figsize=(1.1 * num, 2.6), squeeze=False)
  for column in range(num):
    _show(axes[0, column], originals[column])
    _show(axes[1, column], reconstructed[column])
    if labels is not None:
      axes[0, column].set_title(str(int(labels[column])), fontsize=10)
  axes[0, 0].set_ylabel("input")
  axes[1, 0].set_ylabel("reconstruction")
  fig.tight_layout()
  return fig


def image_grid(images, title: str = "") -> plt.Figure:
  """A near-square grid of images, e.g. samples from the prior."""
  num = len(images)
  columns = math.ceil(math.sqrt(num))
  rows = math.ceil(num / columns)
  fig, axes = plt.subplots(rows, columns, figsize=(0.9 * columns, 0.9 * rows + 0.4),
                           squeeze=False)
  for index, axis in enumerate(axes.flat):
    if index < num:
      _show(axis, images[index])
    else:
      axis.axis("off")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


def to_rgb_array(fig: plt.Figure) -> np.ndarray:
  """(H, W, 3) uint8 pixels of a figure, e.g. for TensorBoard."""
  fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_png(fig: plt.Figure, path: str) -> np.ndarray:
  """Writes the figure as PNG, closes it, and returns its pixels."""
  fig.savefig(path, dpi=100)
  pixels = to_rgb_array(fig)
  plt.close(fig)
  return pixels
