"""Any image data: the discretized logistic (mixture) likelihood, bits/dim, the user's own
images (a folder, an .npz) with their refusals, and RGB configs end to end."""

import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from vae_jax import config_schema
from vae_jax import evaluators
from vae_jax import image_files
from vae_jax import input_pipeline
from vae_jax import losses
from vae_jax import models
from vae_jax import train
from vae_jax import workdir as workdir_lib
from tests.helpers import (REPO_ROOT, run_script, shipped_config, synthetic_splits,
                           tiny_config)

_VALUES = np.arange(256)
_X = 2.0 * _VALUES / 255.0 - 1.0  # The 256 bin centres in [-1, 1].


def _sigmoid(x):
  with np.errstate(over="ignore"):  # exp(-x) = inf far left: the sigmoid is then 0.
    return 1.0 / (1.0 + np.exp(-x))


def _direct_bin_probabilities(mean, log_scale):
  """P(bin k) of the discretized logistic, in float64 from its CDF, ends open."""
  scale = np.exp(log_scale)
  upper = np.where(_VALUES == 255, np.inf, (_X + 1 / 255 - mean) / scale)
  lower = np.where(_VALUES == 0, -np.inf, (_X - 1 / 255 - mean) / scale)
  # Right of the mean from the survival function, where CDF differences would cancel.
  return np.where(_X > mean, _sigmoid(-lower) - _sigmoid(-upper),
                  _sigmoid(upper) - _sigmoid(lower))


@pytest.mark.parametrize("mean", [-1.3, -1.0, -0.4, 0.0, 0.37, 0.999, 1.2])
@pytest.mark.parametrize("log_scale", [-7.0, -4.5, -2.0, 0.0, 2.0])
def test_discretized_logistic_sums_to_one_and_matches_its_cdf(mean, log_scale):
  log_p = np.asarray(losses.discretized_logistic_log_prob(
      jnp.asarray(_X, jnp.float32), jnp.float32(mean), jnp.float32(log_scale)), np.float64)
  assert abs(np.exp(log_p).sum() - 1.0) < 1e-5
  direct = _direct_bin_probabilities(mean, log_scale)
  np.testing.assert_allclose(np.exp(log_p), direct, atol=1e-6)
  # In the tails, in logs: float32 keeps tiny bins' masses to 1e-4 relative.
  finite = direct > 1e-30
  np.testing.assert_allclose(log_p[finite], np.log(direct[finite]), rtol=1e-4, atol=1e-4)


def test_discretized_logistic_end_bins_are_open():
  """Value 0 holds all the mass below its upper edge, 255 all above its lower edge."""
  far_left = losses.discretized_logistic_log_prob(jnp.asarray(_X, jnp.float32), -5.0, -3.0)
  far_right = losses.discretized_logistic_log_prob(jnp.asarray(_X, jnp.float32), 5.0, -3.0)
  assert float(jnp.exp(far_left[0])) == pytest.approx(1.0, abs=1e-6)
  assert float(jnp.exp(far_right[255])) == pytest.approx(1.0, abs=1e-6)


def _mixture_outputs(rng, channels, components):
  head = models.LogisticMixtureHead(components=components, channels=channels)
  raw = rng.normal(size=(1, 1, head.outputs_per_pixel(channels))).astype(np.float32)
  return head.apply({}, jnp.asarray(raw))


@pytest.mark.parametrize("channels", [1, 2])
def test_logistic_mixture_sums_to_one_over_every_pixel_value(channels):
  """Over all 256^C values of one pixel, channels coupled (C = 2: 65,536 values)."""
  decoded = _mixture_outputs(np.random.default_rng(channels), channels, components=3)
  grid = np.stack(np.meshgrid(*[_VALUES] * channels, indexing="ij"), -1).reshape(-1, channels)
  images = jnp.asarray(grid / 255.0, jnp.float32).reshape(-1, 1, 1, channels)
  log_p = jax.vmap(lambda image: losses.logistic_mixture_log_likelihood(image, decoded))(
      images)
  assert abs(np.exp(np.asarray(log_p, np.float64)).sum() - 1.0) < 1e-5


def test_logistic_mixture_matches_the_direct_formula():
  """Two channels, three components: sum_m pi_m P(x_0 | m) P(x_1 | x_0, m), with the
  second channel's mean shifted by coeff * x_0, from the CDFs in float64."""
  decoded = jax.tree.map(lambda a: np.asarray(a, np.float64),
                         _mixture_outputs(np.random.default_rng(7), 2, 3))
  weights = np.exp(decoded["logits"][0, 0]) / np.exp(decoded["logits"][0, 0]).sum()
  for k0, k1 in [(0, 0), (3, 200), (128, 255), (255, 17)]:
    x0 = 2 * k0 / 255 - 1
    expected = 0.0
    for m in range(3):
      mean0, mean1 = decoded["means"][0, 0, :, m]
      ls0, ls1 = decoded["log_scales"][0, 0, :, m]
      p0 = _direct_bin_probabilities(mean0, ls0)[k0]
      p1 = _direct_bin_probabilities(mean1 + decoded["coeffs"][0, 0, 0, m] * x0, ls1)[k1]
      expected += weights[m] * p0 * p1
    image = jnp.asarray([[[k0, k1]]], jnp.float32) / 255.0
    got = float(losses.logistic_mixture_log_likelihood(
        image, jax.tree.map(jnp.asarray, decoded)))
    assert got == pytest.approx(math.log(expected), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (64, 48, 3), (5, 7, 2)])
def test_bits_per_dim_is_nats_over_dimensions_times_ln2(shape):
  nats = 1234.5
  expected = nats / (math.prod(shape) * math.log(2.0))
  assert float(losses.bits_per_dim(nats, shape)) == pytest.approx(expected, rel=1e-12)
  numbers = evaluators.with_bits_per_dim(
      {"test_nll_nats": nats, "neg_elbo_nats": 2 * nats, "kl_nats": 3.0}, shape)
  assert numbers["test_nll_bits_per_dim"] == pytest.approx(expected, rel=1e-12)
  assert numbers["neg_elbo_bits_per_dim"] == pytest.approx(2 * expected, rel=1e-12)
  assert "kl_bits_per_dim" not in numbers  # Only the bounds on -log p(x).


# The user's own images.

def _write_png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def _coloured(rng, size, colour):
  base = rng.integers(0, 256, size + (1,), dtype=np.uint8)
  return (base * np.asarray(colour, np.float32)).astype(np.uint8)


def test_a_folder_with_class_sub_folders_gives_labels_in_sorted_order(tmp_path):
  rng = np.random.default_rng(0)
  for name, colour in (("b_red", (1, 0, 0)), ("a_green", (0, 1, 0))):
    for i in range(3):
      _write_png(tmp_path / name / f"{i}.png", _coloured(rng, (6, 5), colour))
  images, labels, num_classes = image_files.read_folder(str(tmp_path))
  assert images.shape == (6, 6, 5, 3) and images.dtype == np.uint8
  assert num_classes == 2 and labels.tolist() == [0, 0, 0, 1, 1, 1]
  assert images[:3, ..., 0].max() == 0 and images[3:, ..., 1].max() == 0  # a_green is 0.


def test_a_flat_folder_of_grayscale_images_is_unlabelled_and_resized(tmp_path):
  rng = np.random.default_rng(1)
  _write_png(tmp_path / "x.png", rng.integers(0, 256, (20, 30), dtype=np.uint8))
  _write_png(tmp_path / "y.png", rng.integers(0, 256, (10, 10), dtype=np.uint8))
  images, labels, num_classes = image_files.read_folder(str(tmp_path), (8, 8), "center_crop")
  assert images.shape == (2, 8, 8, 1) and labels is None and num_classes == 0


def test_user_data_splits_are_carved_by_a_fixed_permutation(tmp_path):
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (100, 4, 4, 3), dtype=np.uint8)
  labels = np.repeat(np.arange(4), 25)  # Sorted by class, as a folder's are.
  np.savez(tmp_path / "d.npz", images=images, labels=labels)
  config = config_schema.default_config()
  config.data.name, config.data.path = "npz", str(tmp_path / "d.npz")
  config.data.validation_size, config.data.test_size = 20, 10
  splits = input_pipeline._load_splits(config.data)  # pylint: disable=protected-access
  assert [splits[s].num_examples for s in ("train", "validation", "test")] == [70, 20, 10]
  again = input_pipeline._load_splits(config.data)  # pylint: disable=protected-access
  np.testing.assert_array_equal(splits["validation"].images, again["validation"].images)
  assert len(set(splits["validation"].labels.tolist())) > 1  # Not the last class only.
  every = np.concatenate([splits[s].images for s in ("train", "validation", "test")])
  assert sorted(map(bytes, every)) == sorted(map(bytes, images))
  assert splits["train"].num_classes == 4


@pytest.mark.parametrize("make, message", [
    (lambda d: (_write_png(d / "a.png", np.zeros((4, 4), np.uint8)),
                _write_png(d / "b.png", np.zeros((5, 4), np.uint8))),
     "have different sizes"),
    (lambda d: (d / "a.png").write_bytes(_png_bytes(np.random.default_rng(0).integers(
        0, 256, (32, 32, 3), dtype=np.uint8))[:1500]), "Cannot read the image"),
    (lambda d: None, "has no images"),
    (lambda d: (_write_png(d / "one" / "a.png", np.zeros((4, 4), np.uint8)),
                os.makedirs(d / "two")), "has no images"),
])
def test_bad_folders_are_refused_naming_the_file_and_the_fix(tmp_path, make, message):
  make(tmp_path)
  with pytest.raises(image_files.ImageDataError, match=message):
    image_files.read_folder(str(tmp_path))


def _png_bytes(array):
  import io  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


@pytest.mark.parametrize("arrays, message", [
    ({"pixels": np.zeros((2, 4, 4, 1), np.uint8)}, "has no array named 'images'"),
    ({"images": np.zeros((2, 4, 4, 1), np.float32)}, "'images' is float32"),
    ({"images": np.zeros((2, 4, 4, 1), np.uint8), "labels": np.zeros(3, np.int64)},
     "'labels' has shape (3,)"),
    ({"images": np.zeros((2, 4, 4, 5), np.uint8)}, "C = 1 (grayscale) or 3"),
])
def test_bad_npz_files_are_refused(tmp_path, arrays, message):
  np.savez(tmp_path / "d.npz", **arrays)
  with pytest.raises(image_files.ImageDataError, match=message.replace("(", r"\(").replace(
      ")", r"\)")):
    image_files.read_npz(str(tmp_path / "d.npz"))


def _tiny_rgb_config(data_name, path="", **overrides):
  """configs/cifar10.py's model, narrowed to train in seconds."""
  config = shipped_config("cifar10")
  config.data.name, config.data.path = data_name, path
  config.update_from_flattened_dict({
      "model.latent_dim": 4, "model.conv.encoder_features": (4, 4, 4),
      "model.conv.decoder_dense_dims": (4 * 4 * 4,), "model.conv.decoder_features": (4, 4, 4),
      "model.logistic_mixture_components": 2, "train.batch_size": 8, "train.num_steps": 4,
      "train.num_epochs": 0, "train.log_every_steps": 2, "eval.batch_size": 50,
      "eval.num_importance_samples": 4, "eval.nll_batch_size": 10,
      "eval.importance_chunk_size": 4, "eval.diagnostics_examples": 40,
      "figures.num_scatter_points": 40, "figures.num_reconstructions": 4,
      "figures.num_prior_samples": 4, "figures.num_interpolations": 2,
      "figures.interpolation_steps": 3, "figures.num_denoising_examples": 2,
      "figures.samples_per_class": 2, **overrides})
  return config


def test_bad_data_is_refused_before_anything_is_written(tmp_path):
  (tmp_path / "empty").mkdir()
  config = _tiny_rgb_config("folder", str(tmp_path / "empty"))
  with pytest.raises(image_files.ImageDataError, match="has no images"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_a_config_that_does_not_fit_the_data_is_refused_before_anything_is_written(tmp_path):
  np.savez(tmp_path / "d.npz", images=np.zeros((60, 24, 24, 3), np.uint8))
  config = _tiny_rgb_config("npz", str(tmp_path / "d.npz"), **{"data.validation_size": 10})
  with pytest.raises(ValueError, match=r"builds a 32x32 map .* the images are 24x24"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_an_unknown_tfds_name_is_refused_in_seconds():
  config = config_schema.default_config()
  config.data.name = "no_such_dataset_anywhere"
  with pytest.raises(input_pipeline.DataError, match="neither a TFDS dataset nor 'folder'"):
    input_pipeline._load_splits(config.data)  # pylint: disable=protected-access


def _mnist_folder(directory, per_class=30):
  """experiments/rgb_digits.py's folder: MNIST digits as tinted 32x32 PNGs by class."""
  from experiments import rgb_digits  # pylint: disable=g-import-not-at-top
  from tests.helpers import manual_dir  # pylint: disable=g-import-not-at-top
  if not manual_dir():
    pytest.skip("No MNIST files ($VAE_JAX_MANUAL_DIR).")
  assert rgb_digits.write_folder(directory, per_class, manual_dir()) == 10 * per_class


@pytest.mark.slow
def test_a_folder_of_rgb_pngs_trains_evaluates_and_draws_every_figure(tmp_path):
  _mnist_folder(str(tmp_path / "images"))
  config = _tiny_rgb_config("folder", str(tmp_path / "images"), **{
      "data.validation_size": 50, "data.test_size": 50, "figures.final": True})
  workdir = tmp_path / "run"
  summary = train.train_and_evaluate(config, str(workdir))
  assert summary["test_nll_bits_per_dim"] == pytest.approx(
      summary["test_nll_nats"] / (32 * 32 * 3 * math.log(2)), rel=1e-9)
  assert 0 < summary["test_nll_bits_per_dim"] < 8.5  # Near 8 bits before any learning.
  saved = config_schema.load_json(str(workdir / "config.json"))
  assert tuple(saved.data.image_shape) == (32, 32, 3)
  assert len(list((workdir / "figures").glob("*.png"))) >= 4
  for name in ("reconstructions", "prior_samples"):
    with Image.open(workdir / "figures" / f"{name}.png") as figure:
      assert figure.mode in ("RGB", "RGBA")
  # Sample quality and its classifier, for the folder's 10 classes.
  result = _evaluate(workdir, tmp_path / "classifier")
  assert "NLL" in result and "bits/dim" in result and "FD" in result


def _evaluate(workdir, classifier_dir):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  completed = subprocess.run(
      [sys.executable, "-m", "vae_jax.evaluate", f"--workdir={workdir}",
       "--num_importance_samples=4", "--sample_quality_samples=50",
       f"--classifier_dir={classifier_dir}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  return completed.stdout


_MOCK_RUNS = """
import json
import jax
import tensorflow_datasets as tfds
from vae_jax import input_pipeline, train
from tests.image_data_test import _tiny_rgb_config
input_pipeline._prepare = lambda *args: None  # mock_data stands for the prepared files.
printed = {"devices": jax.device_count()}
for name in ("cifar10", "celeb_a"):
  overrides = {"data.validation_size": 0, "figures.final": True}
  if name == "celeb_a":  # 218x178 images, no labels: resized to the config's 32x32.
    overrides["data.image_size"] = (32, 32)
  with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
    summary = train.train_and_evaluate(_tiny_rgb_config(name, **overrides), f"WORKDIR/{name}")
  printed[name] = summary["test_nll_bits_per_dim"]
print(json.dumps(printed))
"""


@pytest.mark.slow
def test_rgb_tfds_configs_train_on_mock_data_on_8_devices(tmp_path):
  """cifar10 (32x32x3, labelled) and celeb_a (218x178x3 resized to 32x32, unlabelled) from
  tfds.testing.mock_data, sharded over 8 devices: uniform noise pixels, so about 8
  bits/dim or more untrained. (Colour images on 1 device: the folder test above.)"""
  import json  # pylint: disable=g-import-not-at-top
  script = _MOCK_RUNS.replace("WORKDIR", str(tmp_path))
  printed = json.loads(run_script(script, devices=8).strip().splitlines()[-1])
  assert printed["devices"] == 8
  for name in ("cifar10", "celeb_a"):
    assert 7.5 < printed[name] < 12.0, (name, printed)
    drawn = {p.name for p in (tmp_path / name / "figures").glob("*.png")}
    assert {"reconstructions.png", "prior_samples.png", "denoising.png"} <= drawn, (name, drawn)


@pytest.mark.slow  # Whole (tiny) training runs, four of them.
@pytest.mark.parametrize("num_runs", [1, 2])
def test_a_split_over_the_device_budget_streams_from_the_host_with_the_same_numbers(
    num_runs, tmp_path, monkeypatch):
  """config.data.max_device_mb below the split's size: the batches come from the host,
  dispatch by dispatch (10 steps, and the shorter ones at epoch ends), for one run and a
  vectorized group of two; parameters and every epoch's metrics equal the
  device-resident run's bit for bit."""
  monkeypatch.setattr(input_pipeline, "load_splits", lambda data_config: synthetic_splits())
  streamed = []
  monkeypatch.setattr(input_pipeline.HostStream, "__init__", _recording(
      input_pipeline.HostStream.__init__, streamed))

  def run(name, max_device_mb):
    configs = []
    for seed in range(num_runs):
      config = tiny_config()
      config.seed = seed
      config.train.num_steps = 60  # 25 steps per epoch: 2.4 epochs.
      config.data.max_device_mb = max_device_mb
      configs.append(config)
    workdirs = [str(tmp_path / name / str(seed)) for seed in range(num_runs)]
    train.train_group(configs, workdirs)
    return [(workdir_lib.read_history(w), workdir_lib.load_run(w)) for w in workdirs]

  resident = run("resident", 4096.0)
  assert not streamed
  host = run("host", 0.0)
  assert streamed
  for (history_a, run_a), (history_b, run_b) in zip(resident, host):
    assert history_a == history_b and len(history_a) == 3
    assert run_a.step == run_b.step == 60
    chex.assert_trees_all_equal(run_a.params, run_b.params)


def _recording(function, calls):
  def wrapper(*args, **kwargs):
    calls.append(args)
    return function(*args, **kwargs)
  return wrapper
