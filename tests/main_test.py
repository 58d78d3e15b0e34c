"""End to end through the real entry point and the real TFDS path, plus bad input."""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import REPO_ROOT, shipped_config, synthetic_splits, tiny_config
from vae_jax import config_schema
from vae_jax import input_pipeline
from vae_jax import sample
from vae_jax import train

_TINY_FLAGS = [
    "--config.model.hidden_dims=(32,)",  # configs/cvae.py's 2-D latent space, for its figures.
    "--config.train.batch_size=50", "--config.train.num_steps=30",
    "--config.train.log_every_steps=10", "--config.figures.num_prior_samples=4",
]


def _run_main(*flags, env_extra=None, timeout=600):
  env = dict(os.environ, **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "vae_jax.main", *flags], cwd=REPO_ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


def _run_sample(*flags):
  return subprocess.run([sys.executable, "-m", "vae_jax.sample", *flags], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_tiny_main_run_then_the_evaluate_and_sample_clis_on_it(tmp_path, mnist_manual_dir,
                                                                tfds_data_dir):
  """One tiny conditional run through the real entry points (one run pays for all three)."""
  workdir = tmp_path / "cvae"
  result = _run_main("--config=configs/cvae.py", f"--workdir={workdir}",
                     f"--config.data.tfds_data_dir={tfds_data_dir}",
                     *_TINY_FLAGS,
                     # 1000 training images: 20 steps per epoch, and a test NLL after the first.
                     "--config.data.validation_size=59000", "--config.eval.nll_at_epochs=(1,)",
                     "--config.eval.nll_samples_during_training=5",
                     "--config.figures.manifold_size=4", "--config.figures.num_scatter_points=100",
                     env_extra={"VAE_JAX_MANUAL_DIR": mnist_manual_dir})
  assert result.returncode == 0, result.stderr[-5000:]
  assert "test -ELBO" in result.stderr
  assert (workdir / "config.json").is_file()
  events = list(workdir.glob("events.out.tfevents.*"))
  assert len(events) == 1
  event_bytes = events[0].read_bytes()
  for tag in (b"train/neg_elbo_nats", b"train/reconstruction_nats", b"train/kl_nats",
              b"test/neg_elbo_nats",
              b"train/learning_rate", b"train_interval/loss"):
    assert tag in event_bytes, tag
  assert (workdir / "checkpoints" / "30").is_dir()
  during = json.loads((workdir / "eval.json").read_text())["nll_during_training"]
  assert [(e["epoch"], e["num_importance_samples"]) for e in during] == [(1.0, 5)]
  for name in ("reconstructions", "class_grid", "interpolations", "denoising",
               "denoising_error", "training_curves", "latent_manifold", "latent_scatter"):
    png = (workdir / "figures" / f"{name}.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000, name
    assert f"figures/{name}".encode() in event_bytes  # Also a TensorBoard image.
  assert not (workdir / "figures" / "samples_label3.png").exists()
  trained_figures = {path.name: path.read_bytes() for path in (workdir / "figures").iterdir()}

  # The evaluate CLI: eval.json, and the -ELBO that training logged.
  result = subprocess.run([sys.executable, "-m", "vae_jax.evaluate", f"--workdir={workdir}",
                           "--num_importance_samples=20", "--label_fidelity_samples=0",
                           "--sample_quality_samples=0"],  # Both would train the classifier.
                          cwd=REPO_ROOT, env=dict(os.environ, VAE_JAX_MANUAL_DIR=mnist_manual_dir),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-5000:]
  assert "test -ELBO" in result.stdout and "NLL" in result.stdout
  evaluation = json.loads((workdir / "eval.json").read_text())
  for key in ("nll_nats", "neg_elbo_nats", "nll_stderr", "num_importance_samples",
              "num_examples", "split", "nll_seconds"):
    assert key in evaluation, key
  assert evaluation["num_examples"] == 10000 and evaluation["split"] == "test"
  assert evaluation["nll_during_training"] == during  # Kept: the NLLs of training.
  logged = json.loads((workdir / "epoch_metrics.jsonl").read_text().splitlines()[-1])
  np.testing.assert_allclose(evaluation["neg_elbo_nats"], logged["test_neg_elbo_nats"], rtol=1e-5)
  # Importance sampling tightens the bound: NLL estimate below the -ELBO, both positive.
  assert 0 < evaluation["nll_nats"] < evaluation["neg_elbo_nats"]
  assert 0 < evaluation["nll_stderr"] < 5
  # How far to trust it: the prefix estimates (the last is the NLL), the ESS summary, and
  # the k-curve as a figure.
  by_k = evaluation["nll_by_num_samples"]
  assert [entry["k"] for entry in by_k] == [1, 2, 10, 20]
  np.testing.assert_allclose(by_k[-1]["nll_nats"], evaluation["nll_nats"], rtol=1e-12)
  np.testing.assert_allclose(by_k[0]["nll_nats"], evaluation["neg_elbo_nats"], rtol=0.02)
  assert 1 <= evaluation["ess_p5"] <= evaluation["ess_mean"] <= 20
  assert "NLL from the first k samples: k = 1:" in result.stdout
  assert "effective sample size: mean" in result.stdout
  assert (workdir / "figures" / "nll_vs_k.png").read_bytes().startswith(b"\x89PNG")
  # What the latents do, on the whole test split; which weights; which code.
  assert evaluation["checkpoint"] == "latest" and evaluation["weights"] == "raw"
  assert evaluation["num_units"] == 2 and 0 <= evaluation["active_units"] <= 2
  np.testing.assert_allclose(evaluation["mutual_information_nats"]
                             + evaluation["marginal_kl_nats"], evaluation["latent_kl_nats"],
                             rtol=1e-9)
  assert 0 <= evaluation["mutual_information_nats"] <= np.log(10000)
  assert "active units (A_u > 0.01):" in result.stdout
  assert (workdir / "figures" / "kl_per_dimension.png").read_bytes().startswith(b"\x89PNG")
  manifest = json.loads((workdir / "manifest.json").read_text())
  assert len(manifest) == 1 and manifest[0]["resumed_from_step"] is None
  # Another split writes its own file and leaves the test numbers in place.
  result = subprocess.run([sys.executable, "-m", "vae_jax.evaluate", f"--workdir={workdir}",
                           "--split=validation", "--num_examples=200",
                           "--num_importance_samples=0", "--label_fidelity_samples=0",
                           "--sample_quality_samples=0"],
                          cwd=REPO_ROOT, env=dict(os.environ, VAE_JAX_MANUAL_DIR=mnist_manual_dir),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-5000:]
  assert json.loads((workdir / "eval.json").read_text()) == evaluation
  validation = json.loads((workdir / "eval_validation.json").read_text())
  assert validation["split"] == "validation" and validation["num_examples"] == 200

  # The sample CLI, asked to redraw everything too.
  result = _run_sample(f"--workdir={workdir}", "--label=3", "--num=16", "--all_figures")
  assert result.returncode == 0, result.stderr[-5000:]
  png = (workdir / "figures" / "samples_label3.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 1000
  printed = {os.path.basename(path) for path in result.stdout.split()}
  # Every figure but the evaluation's own (drawn by training's and evaluate's last step).
  assert printed == set(trained_figures) - {"kl_per_dimension.png"} | {"samples_label3.png"}
  # Same checkpoint, same fixed keys: the redrawn figures are the training run's, byte for byte.
  for name, png in trained_figures.items():
    assert (workdir / "figures" / name).read_bytes() == png, name

  # Without --all_figures, only what is asked (in this process: the CLI's output is above).
  assert sample.make_run_figures(str(workdir), label=5, num=4) == [
      str(workdir / "figures" / "samples_label5.png")]
  with pytest.raises(ValueError, match=re.escape("--label=10 must be in [0, 10)")):
    sample.make_run_figures(str(workdir), label=10, num=4)


@pytest.mark.slow
def test_sample_cli_errors_are_one_line_and_say_what_to_do(tmp_path, monkeypatch):
  result = _run_sample(f"--workdir={tmp_path}")
  assert result.returncode == 1
  assert "config.json does not exist" in result.stderr and "Traceback" not in result.stderr
  # The CLI prints the errors below as it printed that one.
  config = tiny_config()
  config.figures.final = False
  (tmp_path / "config.json").write_text(config.to_json_best_effort())
  with pytest.raises(ValueError, match="No checkpoint"):
    sample.make_run_figures(str(tmp_path), label=None, num=4)
  monkeypatch.setattr(input_pipeline, "load_splits", lambda data_config: synthetic_splits())
  train.train_and_evaluate(config, str(tmp_path / "unconditional"))
  with pytest.raises(ValueError, match="--label=3 needs a conditional model"):
    sample.make_run_figures(str(tmp_path / "unconditional"), label=3, num=4)
  with pytest.raises(ValueError, match="--num=0 must be positive"):
    sample.make_run_figures(str(tmp_path / "unconditional"), label=None, num=0)


@pytest.mark.slow
def test_unknown_config_key_fails_before_any_work(tmp_path):
  start = time.time()
  result = _run_main("--config=configs/mlp.py", f"--workdir={tmp_path}",
                     "--config.model.latnt_dim=3")
  assert result.returncode != 0
  assert "latnt_dim" in result.stderr
  assert not (tmp_path / "config.json").exists()
  assert time.time() - start < 60


@pytest.mark.slow
def test_bad_enum_value_names_the_key_and_the_allowed_values(tmp_path):
  result = _run_main("--config=configs/mlp.py", f"--workdir={tmp_path}",
                     "--config.data.binarization=foo")
  assert result.returncode != 0
  assert "config.data.binarization='foo'" in result.stderr
  assert "'none', 'dynamic', 'static'" in result.stderr
  assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("key, value, expected", [
    ("model.name", "transformer", "config.model.name='transformer' is not one of"),
    ("model.likelihood", "poisson", "config.model.likelihood='poisson' is not one of"),
    ("data.name", "", "config.data.name must name a TFDS image dataset"),
    ("data.image_size", (32,), "config.data.image_size=(32,) must be empty or 2 positive"),
    ("data.resize_method", "crop", "config.data.resize_method='crop' is not one of"),
    ("model.likelihood", "logistic", "config.model.likelihood='logistic' is not one of"),
    ("loss.objective", "vimco", "config.loss.objective='vimco' is not one of"),
    ("train.batch_size", 0, "config.train.batch_size=0 must be a positive integer"),
    ("data.binarization", "static", "needs a statically binarized dataset"),
    ("model.gaussian_variance", "learned", "config.model.gaussian_variance='learned' is not"),
    ("model.gaussian_fixed_variance", 0.0, "config.model.gaussian_fixed_variance=0.0 must be"),
    ("model.dropout_rate", 1.0, "config.model.dropout_rate=1.0 must be in [0, 1)"),
    ("model.conv.encoder_strides", (2, 2), "encoder_strides=(2, 2) must have the same length"),
    ("model.conv.decoder_dense_dims", (24, 50), "must be a multiple of"),
    ("model.hidden_dims", (512, -1), "must be a non-empty tuple of positive integers"),
    ("figures.label", 10, "config.figures.label=10 must be in [0, "),
    ("model.stochastic_layers", 3, "config.model.stochastic_layers=3 is not one of 1, 2"),
    ("resume_mismatch", "maybe", "config.resume_mismatch='maybe' is not one of 'refuse', "
                                 "'allow'"),
    ("checkpoint_every_steps", -5, "config.checkpoint_every_steps=-5 must be a non-negative"),
    ("train.progress_every_seconds", -1.0, "config.train.progress_every_seconds=-1.0 must be"),
    ("train.learning_rate_schedule", "cosine", "config.train.learning_rate_schedule='cosine'"),
    ("loss.kl_weight", -1.0, "config.loss.kl_weight=-1.0 must be a number >= 0"),
    ("loss.kl_warmup_epochs", -2.0, "config.loss.kl_warmup_epochs=-2.0 must be a number >= 0"),
    ("loss.free_bits", -0.5, "config.loss.free_bits=-0.5 must be a number >= 0"),
    ("dtype", "float16", "config.dtype='float16' is not one of 'float32', 'bfloat16'"),
    ("train.ema_decay", 1.0, "config.train.ema_decay=1.0 must be in [0, 1)"),
    ("train.ema_decay", -0.1, "config.train.ema_decay=-0.1 must be in [0, 1)"),
    ("eval.diagnostics_examples", -1, "config.eval.diagnostics_examples=-1 must be a "
                                      "non-negative integer"),
    ("eval.diagnostics_every_epochs", -1, "config.eval.diagnostics_every_epochs=-1 must be "
                                          "a non-negative integer"),
    ("loss.kl_estimator", "exact", "config.loss.kl_estimator='exact' is not one of "
                                   "'closed_form', 'monte_carlo'"),
])
def test_validate_rejects_bad_values(key, value, expected):
  config = config_schema.default_config()
  config.model.conditional = key == "figures.label"
  *parents, name = key.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  node[name] = value
  with pytest.raises(ValueError, match=re.escape(expected)):
    config_schema.validate(config)


@pytest.mark.slow
@pytest.mark.parametrize("override, expected", [
    ("--config.train.batch_size=abc", "--config.train.batch_size=abc: invalid literal"),
    ("--config.model.conditional=maybe", "--config.model.conditional=maybe"),
])
def test_wrong_type_on_the_command_line_names_the_key(tmp_path, override, expected):
  result = _run_main("--config=configs/mlp.py", f"--workdir={tmp_path}", override)
  assert result.returncode != 0
  assert expected in result.stderr
  assert not (tmp_path / "config.json").exists()


def test_iwae_refuses_the_elbo_only_loss_options():
  config = config_schema.default_config()
  config.loss.objective = "iwae"
  config.loss.kl_warmup_epochs = 10.0
  with pytest.raises(ValueError, match=re.escape("config.loss.kl_warmup_epochs=10.0 must be 0.0")):
    config_schema.validate(config)


def test_free_bits_of_one_layer_need_the_closed_form_kl():
  config = config_schema.default_config()
  config.loss.kl_estimator, config.loss.free_bits = "monte_carlo", 0.5
  with pytest.raises(ValueError, match="config.loss.free_bits=0.5 applies to each latent "
                                       "dimension's closed-form KL"):
    config_schema.validate(config)
  config.model.stochastic_layers = 2  # Per layer, from the sampled KL: allowed.
  config_schema.validate(config)


def test_static_dataset_requires_static_binarization():
  config = config_schema.default_config()
  config.data.name = "binarized_mnist"
  with pytest.raises(ValueError, match="already binarized"):
    config_schema.validate(config)
  config.data.binarization = "static"
  config_schema.validate(config)


def test_conditional_model_needs_a_labelled_dataset():
  config = config_schema.default_config()
  config.data.name, config.data.binarization = "binarized_mnist", "static"
  config.model.conditional = True
  with pytest.raises(ValueError, match="conditional=True needs labels.*binarized_mnist"):
    config_schema.validate(config)


def test_shipped_configs_load_locked_and_validate():
  for path in sorted((REPO_ROOT / "configs").glob("*.py")):
    config = config_schema.load_shipped(path.stem)
    config.lock()
    config_schema.validate(config)
  for name, arg in [("conv", "short"), ("iwae", "objective=iwae,k=50"),
                    ("iwae", "layers=2,objective=vae,k=1,short")]:
    config = shipped_config(name, arg)
    config.lock()
    config_schema.validate(config)
  with pytest.raises(ValueError, match="Unknown variant configs/conv.py:long"):
    shipped_config("conv", "long")


def _tiny_offline_config(manual_dir, tfds_data_dir, **train_overrides):
  config = tiny_config(manual_dir=manual_dir, tfds_data_dir=tfds_data_dir)
  for key, value in train_overrides.items():
    config.train[key] = value
  return config


@pytest.mark.slow
def test_same_seed_gives_identical_metrics_twice(tmp_path, mnist_manual_dir, tfds_data_dir):
  config = _tiny_offline_config(mnist_manual_dir, tfds_data_dir)
  config.model.dropout_rate = 0.2  # Dropout masks come from keys too.
  first = train.train_and_evaluate(config, str(tmp_path / "a"))
  second = train.train_and_evaluate(config, str(tmp_path / "b"))
  assert first == second
  assert np.isfinite(first["test_neg_elbo_nats"])


@pytest.mark.slow
def test_non_finite_loss_stops_training_naming_the_step(tmp_path, mnist_manual_dir,
                                                         tfds_data_dir):
  config = _tiny_offline_config(mnist_manual_dir, tfds_data_dir, learning_rate=1e8,
                                num_steps=40)
  with pytest.raises(train.NonFiniteLossError, match=r"at step \d+"):
    train.train_and_evaluate(config, str(tmp_path / "nan"))
  assert not (tmp_path / "nan" / "checkpoints" / "40").exists()


@pytest.mark.slow
def test_restarting_on_a_workdir_continues_from_its_checkpoint(tmp_path, mnist_manual_dir,
                                                               tfds_data_dir):
  """1 epoch, then the same workdir asked for 2 epochs, equals 2 epochs straight."""
  config = _tiny_offline_config(mnist_manual_dir, tfds_data_dir, num_steps=0, num_epochs=2,
                                batch_size=50)
  config.data.validation_size = 59000  # 1000 training images: 20 steps per epoch.
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  config.train.num_epochs = 1
  train.train_and_evaluate(config, str(tmp_path / "restarted"))
  config.train.num_epochs = 2
  restarted = train.train_and_evaluate(config, str(tmp_path / "restarted"))
  assert restarted == straight
  assert (tmp_path / "restarted" / "checkpoints" / "40").is_dir()
