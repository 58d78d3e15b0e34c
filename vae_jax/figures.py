"""Matplotlib figures from arrays. Builders return a Figure; the caller decides where it goes."""

import math

import matplotlib

matplotlib.use("Agg")  # Files only; never needs a display.
import matplotlib.patches  # pylint: disable=g-import-not-at-top
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

# Frames the real test digits among decodings; a colour, since the digits are all grayscale.
_ORIGINAL_COLOR = "tab:red"
_SPLITS = ("train", "validation", "test")
_SPLIT_STYLES = {"train": dict(color="tab:blue", marker="o"),
                 "validation": dict(color="tab:orange", marker="s"),
                 "test": dict(color="tab:green", marker="^")}


def _pixels(image) -> np.ndarray:
  """(H, W) from (H, W, 1) or (H, W); colour images (H, W, 3) as they are."""
  image = np.asarray(image)
  return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image


def _pixels_batch(images) -> np.ndarray:
  """Drops a trailing channel of size 1 from a batch of images."""
  images = np.asarray(images)
  return images[..., 0] if images.shape[-1] == 1 else images


# White gaps between tiles, in image pixels.
_GAP = 2


def _tile(rows) -> tuple[np.ndarray, int, int]:
  """Rows of equal-shaped images (None leaves a tile blank) as one image with white gaps:
  (pixels, tile height, tile width). One image in one axes draws in a fraction of the
  time of one axes per image, which grows with the tiles (a 10x10 grid: 100 axes)."""
  first = next(_pixels(image) for row in rows for image in row if image is not None)
  height, width = first.shape[:2]
  columns = max(len(row) for row in rows)
  tiled = np.ones(((height + _GAP) * len(rows) - _GAP, (width + _GAP) * columns - _GAP)
                  + first.shape[2:], np.float32)
  for i, row in enumerate(rows):
    for j, image in enumerate(row):
      if image is not None:
        top, left = i * (height + _GAP), j * (width + _GAP)
        tiled[top:top + height, left:left + width] = _pixels(image)
  return tiled, height, width


def _tiled_axis(rows, figsize, row_labels=None, column_labels=None):
  """(fig, axis, tile height, tile width): the tiles of `rows` in one axes, a label left
  of each row and above each column where given ("" for none)."""
  tiled, height, width = _tile(rows)
  fig, axis = plt.subplots(figsize=figsize)
  axis.imshow(tiled, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
  for spine in axis.spines.values():
    spine.set_visible(False)
  axis.tick_params(length=0, top=False, bottom=False, labelbottom=False,
                   labeltop=column_labels is not None)
  axis.set_yticks([i * (height + _GAP) + (height - 1) / 2 for i in range(len(rows))],
                  row_labels or [""] * len(rows), fontsize=10)
  columns = max(len(row) for row in rows)
  axis.set_xticks([j * (width + _GAP) + (width - 1) / 2 for j in range(columns)],
                  column_labels or [""] * columns, fontsize=10)
  return fig, axis, height, width


def row_labels(fig: plt.Figure) -> list[str]:
  """The labels left of a tiled figure's rows."""
  return [label.get_text() for label in fig.axes[0].get_yticklabels()]


def column_labels(fig: plt.Figure) -> list[str]:
  """The labels above a tiled figure's columns."""
  return [label.get_text() for label in fig.axes[0].get_xticklabels()]


def _finish(fig, title):
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  if any(axis.get_images() for axis in fig.axes):
    # An image keeps its aspect by narrowing its axes after the layout; the layout
    # again, once that is known, keeps the row labels inside the figure.
    fig.draw_without_rendering()
    fig.tight_layout()
  return fig


def reconstructions(originals, reconstructed, labels=None, title: str = "") -> plt.Figure:
  """Originals (top row) over their reconstructions (bottom row), labels above."""
  num = len(originals)
  fig, _, _, _ = _tiled_axis(
      [list(originals), list(reconstructed)],
      figsize=(1.1 * num + 1.2, 2.6 + (0.3 if title else 0.0)),
      row_labels=["input", "reconstruction"],
      column_labels=None if labels is None else [str(int(label)) for label in labels])
  return _finish(fig, title)


def image_grid(images, title: str = "") -> plt.Figure:
  """A near-square grid of images, e.g. samples from the prior."""
  num = len(images)
  columns = math.ceil(math.sqrt(num))
  rows = math.ceil(num / columns)
  grid = [[images[index] if index < num else None
           for index in range(row * columns, (row + 1) * columns)] for row in range(rows)]
  fig, axis, _, _ = _tiled_axis(grid, figsize=(0.9 * columns, 0.9 * rows + 0.4))
  axis.set_yticks([])
  axis.set_xticks([])
  return _finish(fig, title)


def _tick_indices(num: int, max_ticks: int = 8) -> list[int]:
  """Every few tiles; an even stride that ends on the last tile when one exists."""
  if num <= max_ticks:
    return list(range(num))
  # A stride dividing num - 1 labels both ends (and the centre of a symmetric grid).
  for step in range(1, num):
    if (num - 1) % step == 0 and 3 <= (num - 1) // step + 1 <= max_ticks:
      return list(range(0, num, step))
  return list(range(0, num, math.ceil((num - 1) / (max_ticks - 1))))


def latent_manifold(images, grid_values, title: str = "") -> plt.Figure:
  """Decodings over a 2-D latent grid, tiled: image [i, j] decodes z = (grid[j], grid[i])."""
  images = np.asarray(images)
  grid_values = np.asarray(grid_values)
  rows, columns, height, width = images.shape[:4]
  if len(grid_values) != rows or len(grid_values) != columns:
    raise ValueError(f"images {images.shape[:2]} need {rows} == {columns} == "
                     f"len(grid_values) ({len(grid_values)})")
  # (rows, cols, H, W[, 3]) -> (rows*H, cols*W[, 3]), row i of tiles on row band i (origin
  # at the top).
  pixels = _pixels_batch(images)
  tiled = np.swapaxes(pixels, 1, 2).reshape((rows * height, columns * width)
                                             + pixels.shape[4:])
  fig, axis = plt.subplots(figsize=(8, 8))
  axis.imshow(tiled, cmap="gray", vmin=0.0, vmax=1.0, origin="upper", interpolation="nearest")
  # Ticks at tile centres, labelled with the latent value that tile decodes.
  column_ticks = _tick_indices(columns)
  row_ticks = _tick_indices(rows)
  axis.set_xticks([j * width + (width - 1) / 2 for j in column_ticks])
  axis.set_xticklabels([f"{grid_values[j]:.1f}" for j in column_ticks])
  axis.set_yticks([i * height + (height - 1) / 2 for i in row_ticks])
  axis.set_yticklabels([f"{grid_values[i]:.1f}" for i in row_ticks])
  axis.set_xlabel("z[0]")
  axis.set_ylabel("z[1]")
  if title:
    axis.set_title(title)
  fig.tight_layout()
  return fig


def latent_scatter(means, labels=None, title: str = "") -> plt.Figure:
  """2-D posterior means, coloured by class when labels are given."""
  means = np.asarray(means)
  fig, axis = plt.subplots(figsize=(6.4, 5.6) if labels is not None else (5.6, 5.6))
  size = 4 if len(means) > 2000 else 10  # Small markers so dense clusters stay readable.
  if labels is None:
    axis.scatter(means[:, 0], means[:, 1], s=size, alpha=0.6, color="tab:blue", linewidths=0)
  else:
    labels = np.asarray(labels).astype(int)
    num_classes = max(10, int(labels.max()) + 1)
    base = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
    cmap = matplotlib.colors.ListedColormap([base(k % base.N) for k in range(num_classes)])
    # One colour bin per integer class, so the colorbar reads as a discrete legend.
    norm = matplotlib.colors.BoundaryNorm(np.arange(num_classes + 1) - 0.5, num_classes)
    # Random drawing order, so no class hides the others where clusters overlap.
    order = np.random.default_rng(0).permutation(len(means))
    points = axis.scatter(means[order, 0], means[order, 1], c=labels[order], cmap=cmap,
                          norm=norm, s=size, alpha=0.6, linewidths=0)
    colorbar = fig.colorbar(points, ax=axis, ticks=np.arange(num_classes), fraction=0.046,
                            pad=0.04)
    colorbar.set_label("class")
    colorbar.solids.set_alpha(1.0)  # Legend colours at full strength, unlike the points.
  axis.set_xlabel("z[0]")
  axis.set_ylabel("z[1]")
  axis.set_aspect("equal", adjustable="datalim")
  axis.grid(alpha=0.3)
  if title:
    axis.set_title(title)
  fig.tight_layout()
  return fig


def class_grid(images, class_names=None, title: str = "") -> plt.Figure:
  """One row per class, named at the left."""
  num_classes, num_per_class = np.asarray(images).shape[:2]
  if class_names is None:
    class_names = [str(row) for row in range(num_classes)]
  fig, _, _, _ = _tiled_axis(
      [list(row) for row in images],
      figsize=(0.9 * num_per_class + 0.6, 0.9 * num_classes + (0.4 if title else 0.0)),
      row_labels=[str(name) for name in class_names])
  return _finish(fig, title)


def interpolations(paths, starts, ends, title: str = "") -> plt.Figure:
  """Per row: the start digit, decodings along a latent line, the end digit (framed)."""
  num_pairs, num_steps = np.asarray(paths).shape[:2]
  columns = num_steps + 2
  fig, axis, height, width = _tiled_axis(
      [[starts[row], *paths[row], ends[row]] for row in range(num_pairs)],
      figsize=(0.9 * columns, 0.9 * num_pairs + 0.3 + (0.4 if title else 0.0)),
      column_labels=["start"] + [""] * num_steps + ["end"])
  for label in (axis.get_xticklabels()[0], axis.get_xticklabels()[-1]):
    label.set_color(_ORIGINAL_COLOR)
  for row in range(num_pairs):
    for column in (0, columns - 1):  # Frames the real test digits.
      axis.add_patch(matplotlib.patches.Rectangle(
          (column * (width + _GAP) - 0.5, row * (height + _GAP) - 0.5), width, height,
          fill=False, edgecolor=_ORIGINAL_COLOR, linewidth=2.5))
  return _finish(fig, title)


def denoising(clean, noisy, reconstructed, noise_stds, title: str = "") -> plt.Figure:
  """Clean images, then per noise level a row of noisy inputs and a row of reconstructions."""
  num = len(clean)
  rows, labels = [list(clean)], ["clean"]
  for level, std in enumerate(noise_stds):
    rows += [list(noisy[level]), list(reconstructed[level])]
    labels += [f"noisy σ={std:g}", f"reconstructed σ={std:g}"]
  fig, _, _, _ = _tiled_axis(
      rows, figsize=(0.9 * num + 1.8, 0.9 * len(rows) + (0.4 if title else 0.0)),
      row_labels=labels)
  return _finish(fig, title)


def denoising_error(noise_stds, reconstruction_error, input_error=None,
                    ylabel: str = "squared error vs clean image (per image)") -> plt.Figure:
  """Error against the clean image versus noise level, with the noisy input as a baseline."""
  fig, axis = plt.subplots(figsize=(5.2, 3.8))
  axis.plot(noise_stds, reconstruction_error, "o-", color="tab:blue", label="reconstruction")
  if input_error is not None:
    axis.plot(noise_stds, input_error, "s--", color="tab:gray", label="noisy input")
  axis.set_xlabel("pixel noise std")
  axis.set_ylabel(ylabel)
  axis.set_ylim(bottom=0.0)  # Errors are non-negative; a zero floor keeps ratios honest.
  axis.grid(alpha=0.3)
  axis.legend()
  fig.tight_layout()
  return fig


_CURVE_PANELS = (("neg_elbo_nats", "−ELBO"),
                 ("reconstruction_nats", "reconstruction (−E log p(x|z))"),
                 ("kl_nats", "KL(q(z|x) || p(z))"))


def training_curves(history) -> plt.Figure:
  """−ELBO and its two terms per epoch, one line per split present in `history`."""
  fig, axes = plt.subplots(1, len(_CURVE_PANELS), figsize=(13, 3.8), squeeze=False)
  for axis, (metric, panel_title) in zip(axes[0], _CURVE_PANELS):
    for split in _SPLITS:
      key = f"{split}_{metric}"
      # Splits may be evaluated on only some epochs, so each line keeps its own epochs.
      points = [(float(row["epoch"]), float(row[key])) for row in history
                if row.get(key) is not None]
      if points:
        epochs, values = zip(*points)
        axis.plot(epochs, values, label=split, markersize=4, **_SPLIT_STYLES[split])
    axis.set_title(panel_title)
    axis.set_xlabel("epoch")
    axis.set_ylabel("nats")
    axis.grid(alpha=0.3)
    if axis.get_lines():
      axis.legend()
  fig.tight_layout()
  return fig


def nll_vs_k(ks, nll, stderr, title: str = "") -> plt.Figure:
  """The importance-sampled NLL from the first k samples against k (log axis), with its
  standard error over examples: where the curve flattens, k is enough."""
  fig, axis = plt.subplots(figsize=(5.5, 3.8))
  axis.errorbar(ks, nll, yerr=stderr, marker="o", capsize=3)
  axis.set_xscale("log")
  axis.set_xlabel("importance samples k")
  axis.set_ylabel("test NLL estimate (nats)")
  axis.grid(alpha=0.3, which="both")
  axis.set_title(title or "NLL estimate against k")
  fig.tight_layout()
  return fig


def nll_by_epoch(nll_epochs, nll, stderr, elbo_epochs, neg_elbo, reference=None,
                 title: str = "") -> plt.Figure:
  """The test NLL (with its standard error) and −ELBO against epochs (log axis), and a
  reference NLL (e.g. a paper's final one) as a horizontal line."""
  fig, axis = plt.subplots(figsize=(6, 4))
  axis.errorbar(nll_epochs, nll, yerr=stderr, marker="o", capsize=3, label="test NLL")
  axis.plot(elbo_epochs, neg_elbo, marker="s", linestyle="--", label="test −ELBO")
  if reference is not None:
    axis.axhline(reference, color="gray", linestyle=":", label=f"paper's final NLL {reference}")
  axis.set_xscale("log")
  axis.set_xlabel("epoch")
  axis.set_ylabel("nats")
  axis.grid(alpha=0.3, which="both")
  axis.legend()
  axis.set_title(title or "test NLL and −ELBO by epoch")
  fig.tight_layout()
  return fig


def kl_per_dimension(kl_per_dim_by_layer, activity_by_layer, threshold: float,
                     title: str = "") -> plt.Figure:
  """Each layer's mean KL per latent dimension, dimensions sorted by KL (largest first),
  the active ones (activity above `threshold`) filled, the inactive ones hollow. A layer
  whose KL has no split by dimension (None: a mixture prior) shows its activity instead."""
  num_layers = len(kl_per_dim_by_layer)
  fig, axes = plt.subplots(1, num_layers, figsize=(5.5 * num_layers, 3.8), squeeze=False)
  for index, (axis, kl, activity) in enumerate(zip(axes[0], kl_per_dim_by_layer,
                                                   activity_by_layer), start=1):
    activity = np.asarray(activity)
    by_activity = kl is None
    kl = activity if by_activity else np.asarray(kl)
    order = np.argsort(-kl)
    active = activity[order] > threshold
    positions = np.arange(len(kl))
    axis.bar(positions[active], kl[order][active], color="tab:blue",
             label=f"active ({int(active.sum())})")
    axis.bar(positions[~active], kl[order][~active], color="none", edgecolor="tab:gray",
             label=f"inactive ({int((~active).sum())})")
    axis.set_xlabel(f"latent dimension, by {'activity' if by_activity else 'KL'}"
                    + (f" (z{index})" if num_layers > 1 else ""))
    axis.set_ylabel("activity Var_x(E[z|x]) (the prior has no KL per dimension)"
                    if by_activity else "mean KL (nats)")
    axis.grid(alpha=0.3, axis="y")
    axis.legend()
  _finish(fig, title or "KL per latent dimension")
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


def close(fig: plt.Figure) -> None:
  """Frees a figure that was not saved (e.g. only sent to TensorBoard)."""
  plt.close(fig)
