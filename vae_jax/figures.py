"""Matplotlib figures from arrays. Builders return a Figure; the caller decides where it goes."""

import math

import matplotlib

matplotlib.use("Agg")  # Files only; never needs a display.
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


def _show(axis, image):
  axis.imshow(_pixels(image), cmap="gray", vmin=0.0, vmax=1.0)
  axis.set_xticks([])
  axis.set_yticks([])


def _row_label(axis, text):
  # Horizontal so long labels like "reconstructed σ=0.1" read naturally; tight_layout makes room.
  axis.set_ylabel(text, rotation=0, ha="right", va="center", fontsize=10)


def _frame(axis, color, width=2.5):
  for spine in axis.spines.values():
    spine.set_edgecolor(color)
    spine.set_linewidth(width)


def _finish(fig, title):
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


def reconstructions(originals, reconstructed, labels=None, title: str = "") -> plt.Figure:
  """Originals (top row) over their reconstructions (bottom row), labels as titles."""
  num = len(originals)
  fig, axes = plt.subplots(2, num, figsize=(1.1 * num, 2.6 + (0.3 if title else 0.0)),
                           squeeze=False)
  for column in range(num):
    _show(axes[0, column], originals[column])
    _show(axes[1, column], reconstructed[column])
    if labels is not None:
      axes[0, column].set_title(str(int(labels[column])), fontsize=10)
  axes[0, 0].set_ylabel("input")
  axes[1, 0].set_ylabel("reconstruction")
  return _finish(fig, title)


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
  fig, axes = plt.subplots(num_classes, num_per_class,
                           figsize=(0.9 * num_per_class + 0.6,
                                    0.9 * num_classes + (0.4 if title else 0.0)),
                           squeeze=False)
  for row in range(num_classes):
    for column in range(num_per_class):
      _show(axes[row, column], images[row][column])
    _row_label(axes[row, 0], str(class_names[row]))
  return _finish(fig, title)


def interpolations(paths, starts, ends, title: str = "") -> plt.Figure:
  """Per row: the start digit, decodings along a latent line, the end digit (framed)."""
  num_pairs, num_steps = np.asarray(paths).shape[:2]
  columns = num_steps + 2
  fig, axes = plt.subplots(num_pairs, columns,
                           figsize=(0.9 * columns, 0.9 * num_pairs + 0.3 + (0.4 if title else 0.0)),
                           squeeze=False)
  for row in range(num_pairs):
    _show(axes[row, 0], starts[row])
    for step in range(num_steps):
      _show(axes[row, step + 1], paths[row][step])
    _show(axes[row, -1], ends[row])
    _frame(axes[row, 0], _ORIGINAL_COLOR)
    _frame(axes[row, -1], _ORIGINAL_COLOR)
  axes[0, 0].set_title("start", fontsize=10, color=_ORIGINAL_COLOR)
  axes[0, -1].set_title("end", fontsize=10, color=_ORIGINAL_COLOR)
  return _finish(fig, title)


def denoising(clean, noisy, reconstructed, noise_stds, title: str = "") -> plt.Figure:
  """Clean images, then per noise level a row of noisy inputs and a row of reconstructions."""
  num = len(clean)
  levels = len(noise_stds)
  rows = 1 + 2 * levels
  fig, axes = plt.subplots(rows, num,
                           figsize=(0.9 * num + 1.8, 0.9 * rows + (0.4 if title else 0.0)),
                           squeeze=False)
  for column in range(num):
    _show(axes[0, column], clean[column])
  _row_label(axes[0, 0], "clean")
  for level, std in enumerate(noise_stds):
    noisy_row, reconstructed_row = 1 + 2 * level, 2 + 2 * level
    for column in range(num):
      _show(axes[noisy_row, column], noisy[level][column])
      _show(axes[reconstructed_row, column], reconstructed[level][column])
    _row_label(axes[noisy_row, 0], f"noisy σ={std:g}")
    _row_label(axes[reconstructed_row, 0], f"reconstructed σ={std:g}")
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
