"""Figures: every builder renders a non-blank PNG; the manifold and curves draw what they claim."""

import os

import numpy as np
import pytest

from vae_jax import figures


def _images(rng, *shape):
  return rng.uniform(size=(*shape, 28, 28, 1)).astype(np.float32)


def _check_png(fig, tmp_path, name="figure.png"):
  path = os.path.join(tmp_path, name)
  pixels = figures.save_png(fig, path)
  assert os.path.isfile(path) and os.path.getsize(path) > 0
  assert pixels.ndim == 3 and pixels.shape[-1] == 3
  assert pixels.dtype == np.uint8
  assert pixels.std() > 1
  return pixels


def test_reconstructions(tmp_path):
  rng = np.random.default_rng(0)
  fig = figures.reconstructions(_images(rng, 5), _images(rng, 5), labels=np.arange(5))
  assert figures.row_labels(fig) == ["input", "reconstruction"]
  assert figures.column_labels(fig) == ["0", "1", "2", "3", "4"]
  _check_png(fig, tmp_path)


@pytest.mark.parametrize("channels", [1, 3])
def test_a_grid_is_one_image_of_its_tiles_in_place_with_white_gaps(channels):
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(7, 28, 28, channels)).astype(np.float32)
  fig = figures.image_grid(images)  # 7 images: 3 columns, 3 rows, 2 blank tiles.
  [axis] = fig.axes
  tiled = np.asarray(axis.get_images()[0].get_array())
  step = 28 + 2  # A tile and its gap.
  assert tiled.shape[:2] == (3 * step - 2, 3 * step - 2)
  for index in range(9):
    top, left = index // 3 * step, index % 3 * step
    tile = tiled[top:top + 28, left:left + 28]
    if index < 7:
      np.testing.assert_array_equal(tile, images[index].squeeze(-1) if channels == 1
                                    else images[index])
    else:  # A blank tile.
      np.testing.assert_array_equal(tile, 1.0)
  np.testing.assert_array_equal(tiled[28:30], 1.0)  # The gap under the first row.
  np.testing.assert_array_equal(tiled[:, 58:60], 1.0)  # The gap right of the second column.
  figures.close(fig)


def test_reconstructions_with_title(tmp_path):
  rng = np.random.default_rng(0)
  fig = figures.reconstructions(_images(rng, 3), _images(rng, 3), title="test set")
  assert fig._suptitle.get_text() == "test set"  # pylint: disable=protected-access
  _check_png(fig, tmp_path)


@pytest.mark.parametrize("num", [1, 7])
def test_image_grid(tmp_path, num):
  rng = np.random.default_rng(0)
  _check_png(figures.image_grid(_images(rng, num), "samples from the prior"), tmp_path)


def test_latent_manifold(tmp_path):
  rng = np.random.default_rng(0)
  fig = figures.latent_manifold(_images(rng, 6, 6), np.linspace(-2, 2, 6), title="manifold")
  axis = fig.axes[0]
  assert axis.get_xlabel() == "z[0]" and axis.get_ylabel() == "z[1]"
  assert [label.get_text() for label in axis.get_xticklabels()][0] == "-2.0"
  assert axis.get_images()[0].get_array().shape == (6 * 28, 6 * 28)
  _check_png(fig, tmp_path)


def test_latent_manifold_draws_image_00_at_the_top_left(tmp_path):
  images = np.zeros((4, 4, 28, 28, 1), np.float32)
  images[0, 0] = 1.0
  fig = figures.latent_manifold(images, np.linspace(-1, 1, 4))
  image = fig.axes[0].get_images()[0]
  assert image.origin == "upper"  # Array row 0 is drawn at the top.
  tiled = np.asarray(image.get_array())
  assert tiled.shape == (4 * 28, 4 * 28)
  np.testing.assert_array_equal(tiled[:28, :28], 1.0)
  rest = tiled.copy()
  rest[:28, :28] = 0.0
  np.testing.assert_array_equal(rest, 0.0)
  _check_png(fig, tmp_path)


def test_latent_manifold_row_i_decodes_second_coordinate(tmp_path):
  del tmp_path
  rows, columns = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
  # Tile [i, j] holds a constant that encodes (i, j), so the layout can be read back.
  images = np.broadcast_to(((rows * 3 + columns) / 8.0)[:, :, None, None, None],
                           (3, 3, 28, 28, 1))
  fig = figures.latent_manifold(images, [-1.0, 0.0, 1.0])
  tiled = np.asarray(fig.axes[0].get_images()[0].get_array())
  for i in range(3):
    for j in range(3):
      np.testing.assert_allclose(tiled[i * 28:(i + 1) * 28, j * 28:(j + 1) * 28],
                                 (i * 3 + j) / 8.0)
  figures.plt.close(fig)


def test_latent_manifold_rejects_mismatched_grid():
  with pytest.raises(ValueError):
    figures.latent_manifold(np.zeros((3, 3, 28, 28, 1)), [0.0, 1.0])


def test_latent_scatter_with_labels(tmp_path):
  rng = np.random.default_rng(0)
  fig = figures.latent_scatter(rng.normal(size=(500, 2)), rng.integers(0, 10, size=500),
                               title="posterior means")
  assert fig.axes[0].get_xlabel() == "z[0]" and fig.axes[0].get_ylabel() == "z[1]"
  assert len(fig.axes) == 2  # Scatter plus the class colorbar.
  _check_png(fig, tmp_path)


def test_latent_scatter_without_labels(tmp_path):
  rng = np.random.default_rng(0)
  fig = figures.latent_scatter(rng.normal(size=(200, 2)))
  assert len(fig.axes) == 1
  _check_png(fig, tmp_path)


def test_class_grid(tmp_path):
  rng = np.random.default_rng(0)
  fig = figures.class_grid(_images(rng, 10, 2), title="one z per column")
  assert figures.row_labels(fig) == [str(digit) for digit in range(10)]
  _check_png(fig, tmp_path)


def test_class_grid_with_names(tmp_path):
  rng = np.random.default_rng(0)
  fig = figures.class_grid(_images(rng, 2, 3), class_names=["zero", "one"])
  assert figures.row_labels(fig) == ["zero", "one"]
  _check_png(fig, tmp_path)


def test_interpolations(tmp_path):
  rng = np.random.default_rng(0)
  fig = figures.interpolations(_images(rng, 3, 8), _images(rng, 3), _images(rng, 3),
                               title="interpolations")
  assert figures.column_labels(fig) == ["start"] + [""] * 8 + ["end"]
  assert len(fig.axes[0].patches) == 3 * 2  # The start and end digits framed.
  _check_png(fig, tmp_path)


def test_denoising(tmp_path):
  rng = np.random.default_rng(0)
  stds = [0.1, 0.2, 0.3, 0.5]
  clean = _images(rng, 3)
  noisy = np.clip(clean[None] + rng.normal(size=(4, 3, 28, 28, 1)) * 0.3, 0.0, 1.0)
  fig = figures.denoising(clean, noisy, _images(rng, 4, 3), stds, title="denoising")
  row_labels = figures.row_labels(fig)
  assert len(row_labels) == 1 + 2 * len(stds)
  assert row_labels[:3] == ["clean", "noisy σ=0.1", "reconstructed σ=0.1"]
  assert row_labels[-1] == "reconstructed σ=0.5"
  _check_png(fig, tmp_path)


@pytest.mark.parametrize("with_input_error", [False, True])
def test_denoising_error(tmp_path, with_input_error):
  stds = np.array([0.1, 0.2, 0.3, 0.5])
  input_error = 784 * stds**2 if with_input_error else None
  fig = figures.denoising_error(stds, [3.0, 5.0, 9.0, 20.0], input_error)
  axis = fig.axes[0]
  assert len(axis.get_lines()) == (2 if with_input_error else 1)
  assert axis.get_xlabel() == "pixel noise std"
  _check_png(fig, tmp_path)


def _history(num_epochs, splits):
  rng = np.random.default_rng(0)
  return [{"epoch": float(epoch + 1),
           **{f"{split}_{metric}": float(rng.uniform(10, 200))
              for split in splits for metric in ("neg_elbo_nats", "reconstruction_nats", "kl_nats")}}
          for epoch in range(num_epochs)]


@pytest.mark.parametrize("num_epochs,splits", [(1, ("train",)),
                                               (3, ("train", "validation", "test"))])
def test_training_curves(tmp_path, num_epochs, splits):
  fig = figures.training_curves(_history(num_epochs, splits))
  assert len(fig.axes) == 3
  for axis in fig.axes:
    lines = axis.get_lines()
    assert len(lines) == len(splits)
    assert [line.get_label() for line in lines] == list(splits)
    assert all(len(line.get_xdata()) == num_epochs for line in lines)
    assert all(line.get_marker() not in (None, "", "None") for line in lines)
    assert axis.get_xlabel() == "epoch" and axis.get_ylabel() == "nats"
  _check_png(fig, tmp_path)


def test_training_curves_split_evaluated_on_some_epochs(tmp_path):
  history = _history(4, ("train",))
  history[1]["validation_neg_elbo_nats"] = 120.0
  history[3]["validation_neg_elbo_nats"] = 110.0
  fig = figures.training_curves(history)
  elbo_lines = fig.axes[0].get_lines()
  assert [line.get_label() for line in elbo_lines] == ["train", "validation"]
  np.testing.assert_array_equal(elbo_lines[1].get_xdata(), [2.0, 4.0])
  assert len(fig.axes[1].get_lines()) == 1
  _check_png(fig, tmp_path)


def test_nll_vs_k_on_a_log_axis(tmp_path):
  fig = figures.nll_vs_k([1, 10, 100, 500, 1000, 5000], [102.8, 99.1, 97.7, 97.1, 97.0, 96.7],
                         [0.3] * 6)
  assert fig.axes[0].get_xscale() == "log"
  _check_png(fig, tmp_path)


def test_kl_per_dimension_sorts_and_marks_the_active_units(tmp_path):
  fig = figures.kl_per_dimension([[0.1, 3.0, 0.0, 1.5], [0.2, 0.0]],
                                 [[0.5, 1.0, 0.0, 0.02], [0.001, 0.0]], threshold=0.01)
  first, second = fig.axes[:2]
  heights = [patch.get_height() for patch in first.patches]
  assert heights == [3.0, 1.5, 0.1, 0.0]  # Sorted by KL; active ones drawn first.
  assert [text.get_text() for text in first.get_legend().get_texts()] == [
      "active (3)", "inactive (1)"]
  assert [text.get_text() for text in second.get_legend().get_texts()] == [
      "active (0)", "inactive (2)"]
  _check_png(fig, tmp_path)


def test_nll_by_epoch_on_a_log_axis_with_the_reference(tmp_path):
  fig = figures.nll_by_epoch([1, 4, 13], [128.3, 105.9, 96.9], [0.4, 0.3, 0.3],
                             [1, 4, 13], [134.9, 112.3, 102.8], reference=86.76)
  axis = fig.axes[0]
  assert axis.get_xscale() == "log"
  assert any(list(line.get_ydata()) == [86.76, 86.76] for line in axis.get_lines())
  _check_png(fig, tmp_path)
