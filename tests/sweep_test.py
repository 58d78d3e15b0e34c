"""The sweep runner: definitions, the command line, skipping finished runs, host split."""

import csv
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import REPO_ROOT, tiny_config
from vae_jax import input_pipeline
from vae_jax import sweep

# A sweep file as a user would write one: tiny model, a handful of steps, a small NLL.
_TINY_SWEEP = textwrap.dedent("""
    from vae_jax import sweep

    def get_sweep():
      return sweep.Sweep(
          question="Does a tiny sweep run?",
          config="configs/mlp.py",
          fixed={{"model.hidden_dims": (32,), "model.latent_dim": 4,
                  "train.batch_size": 50, "train.num_steps": 6, "train.log_every_steps": 3,
                  "eval.num_importance_samples": 5, "eval.nll_batch_size": 500,
                  "figures.final": False, "data.tfds_data_dir": {tfds_data_dir!r}}},
          points=sweep.product({{"loss.kl_weight": [0.5, 2.0]}}),
          seeds=(0, 1))
""")


def _write_sweep(tmp_path, tfds_data_dir):
  path = tmp_path / "tiny.py"
  path.write_text(_TINY_SWEEP.format(tfds_data_dir=tfds_data_dir))
  return path


def _run_sweep(*args, manual_dir, check=True):
  result = subprocess.run([sys.executable, "-m", "vae_jax.sweep", *map(str, args)],
                          cwd=REPO_ROOT, env=dict(os.environ, VAE_JAX_MANUAL_DIR=manual_dir),
                          capture_output=True, text=True, timeout=600)
  if check:
    assert result.returncode == 0, result.stderr[-5000:]
  return result


def _rows(workdir):
  with open(workdir / "results.csv") as f:
    return list(csv.DictReader(f))


def _check_results(workdir, models_per_program):
  """results.csv, results.md and the plots hold each run's own final numbers."""
  rows = _rows(workdir)
  assert [(r["loss.kl_weight"], r["seed"]) for r in rows] == [
      ("0.5", "0"), ("0.5", "1"), ("2.0", "0"), ("2.0", "1")]
  assert {r["models_per_program"] for r in rows} == {str(models_per_program)}
  for row in rows:
    run_dir = workdir / row["point"] / f"seed={row['seed']}"
    # The row holds the run's own final numbers: its history's last entry and eval.json.
    history = [line for line in (run_dir / "epoch_metrics.jsonl").read_text().splitlines()]
    assert f'"test_neg_elbo_nats": {row["test_neg_elbo_nats"]}' in history[-1]
    assert float(row["test_nll_nats"]) < float(row["test_neg_elbo_nats"]) + 1.0
    assert float(row["wall_seconds"]) > 0
    # Every mode writes what a run alone writes (tests/vectorized_test.py compares them).
    assert (run_dir / "timings.json").is_file() and (run_dir / "eval.json").is_file()
    [events] = run_dir.glob("events.out.tfevents.*")
    assert b"train_interval/loss" in events.read_bytes()
  assert rows[0]["test_neg_elbo_nats"] != rows[1]["test_neg_elbo_nats"]  # Seeds differ.
  table = (workdir / "results.md").read_text()
  assert "| loss.kl_weight | seeds | test −ELBO (nats) | test NLL (nats) |" in table
  assert table.count(" ± ") >= 8  # Mean ± std of 4 metrics and the time, per point.
  for plot in ("test_neg_elbo_nats.png", "test_nll_nats.png", "test_kl_nats.png"):
    assert (workdir / plot).stat().st_size > 1000
  return rows


def _check_skips_finished_runs(sweep_file, workdir, monkeypatch, mode):
  """The same sweep again (in this process: it trains nothing) finds every run finished."""
  rows = _rows(workdir)
  stamps = {p: p.stat().st_mtime_ns for p in workdir.glob("*/seed=*/result.json")}
  assert len(stamps) == 4
  logged = []
  monkeypatch.setattr(sweep.logging, "info", lambda fmt, *args: logged.append(fmt % args))
  assert sweep.run_sweep(str(sweep_file), str(workdir), mode=mode) == []
  assert any("4 runs; this process's share is 4, of which 4 are finished and 0 to train"
             in line for line in logged), logged
  assert not any(line.startswith("Training ") for line in logged), logged
  assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
  assert _rows(workdir) == rows


@pytest.mark.slow
def test_two_shards_split_the_runs_then_a_rerun_skips_them(tmp_path, mnist_manual_dir,
                                                           tfds_data_dir, monkeypatch):
  """Sequential mode in two independent processes (--num_shards=2), then the whole sweep
  again in one: it finds the 4 runs finished, trains nothing and aggregates them."""
  sweep_file, workdir = _write_sweep(tmp_path, tfds_data_dir), tmp_path / "sweep"
  env = dict(os.environ, VAE_JAX_MANUAL_DIR=mnist_manual_dir)
  # Two processes preparing one fresh TFDS folder at once collide (on a shared filesystem,
  # prepare it once first); it is fresh when this test runs alone.
  input_pipeline.load_splits(tiny_config(manual_dir=mnist_manual_dir,
                                         tfds_data_dir=tfds_data_dir).data)
  processes = [subprocess.Popen(
      [sys.executable, "-m", "vae_jax.sweep", f"--sweep={sweep_file}",
       f"--workdir={workdir}", "--num_shards=2", f"--shard_index={index}"],
      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for index in range(2)]
  logs = [process.communicate(timeout=600)[1] for process in processes]
  for process, log in zip(processes, logs):
    assert process.returncode == 0, log[-5000:]
    assert "this process's share is 2, of which 0 are finished and 2 to train" in log
  # Runs 0 and 2 went to process 0, runs 1 and 3 (seed 1) to process 1.
  assert "Training loss.kl_weight=0.5/seed=0." in logs[0]
  assert "Training loss.kl_weight=0.5/seed=1." in logs[1]
  sweep.aggregate_sweep(str(sweep_file), str(workdir))  # What --aggregate_only runs.
  _check_results(workdir, models_per_program=1)
  _check_skips_finished_runs(sweep_file, workdir, monkeypatch, "sequential")


@pytest.mark.slow
def test_a_vectorized_sweep_writes_results_and_skips_finished_runs(tmp_path, mnist_manual_dir,
                                                                  tfds_data_dir, monkeypatch):
  sweep_file, workdir = _write_sweep(tmp_path, tfds_data_dir), tmp_path / "sweep"
  result = _run_sweep(f"--sweep={sweep_file}", f"--workdir={workdir}", "--mode=vectorized",
                      manual_dir=mnist_manual_dir)
  assert "4 runs; this process's share is 4, of which 0 are finished and 4 to train" in (
      result.stderr)
  _check_results(workdir, models_per_program=4)
  _check_skips_finished_runs(sweep_file, workdir, monkeypatch, "vectorized")


def test_bad_runner_flags_and_mismatched_groups_fail_before_training(tmp_path):
  with pytest.raises(ValueError, match=r"--shard_index=2 must be in \[0, --num_shards=2\)"):
    sweep.run_sweep(str(REPO_ROOT / "experiments" / "latent_dim.py"), str(tmp_path), num_shards=2, shard_index=2)
  with pytest.raises(ValueError, match="--max_models_per_program=-1 must be >= 0"):
    sweep.run_sweep(str(REPO_ROOT / "experiments" / "latent_dim.py"), str(tmp_path), max_models_per_program=-1)
  with pytest.raises(ValueError, match="--mode='parallel' is not one of"):
    sweep.run_sweep(str(REPO_ROOT / "experiments" / "latent_dim.py"), str(tmp_path), mode="parallel")
  # Runs that may share a program but not a cadence: refused before anything trains.
  definition = tmp_path / "cadence.py"
  definition.write_text(textwrap.dedent("""
      from vae_jax import sweep
      def get_sweep():
        return sweep.Sweep(question="?", config="configs/mlp.py",
                           points=[{"train.log_every_steps": 10},
                                   {"train.log_every_steps": 20}])
  """))
  with pytest.raises(ValueError, match="need the same config.train.log_every_steps"):
    sweep.run_sweep(str(definition), str(tmp_path / "runs"), mode="vectorized")
  assert not (tmp_path / "runs").exists()


def test_report_keeps_the_text_written_by_hand(tmp_path):
  from vae_jax import sweep_results  # pylint: disable=g-import-not-at-top
  report = tmp_path / "report"
  report.mkdir()
  (report / "README.md").write_text(f"# Mine\n\nIntro.\n\n{sweep_results.BEGIN}\nold\n"
                                    f"{sweep_results.END}\n\nWhat it shows.\n")
  sweep_results.write_report(str(report), "tiny", None, "new table", [], str(tmp_path))
  assert (report / "README.md").read_text() == (
      f"# Mine\n\nIntro.\n\n{sweep_results.BEGIN}\nnew table\n{sweep_results.END}\n\n"
      "What it shows.\n")


def test_product_and_point_names():
  points = sweep.product({"model.latent_dim": [2, 8], "loss.objective": ["elbo", "iwae"]})
  assert points == [{"model.latent_dim": 2, "loss.objective": "elbo"},
                    {"model.latent_dim": 2, "loss.objective": "iwae"},
                    {"model.latent_dim": 8, "loss.objective": "elbo"},
                    {"model.latent_dim": 8, "loss.objective": "iwae"}]
  assert sweep.point_name({"model.hidden_dims": (32, 16), "loss.objective": "iwae"}) == (
      "model.hidden_dims=(32,16),loss.objective=iwae")


@pytest.mark.parametrize("point, expected", [
    ({"model.latent_size": 3}, "Run model.latent_size=3, seed 0: Unknown config key "
                               "'model.latent_size'"),
    ({"model.likelihood": "poisson"}, "Run model.likelihood=poisson, seed 0: Invalid config"),
    ({"model.latent_dim": "big"}, "Run model.latent_dim=big, seed 0: config.model.latent_dim"),
])
def test_a_bad_point_fails_before_training_naming_the_run(tmp_path, point, expected):
  bad = sweep.Sweep(question="?", config="configs/mlp.py", points=[point])
  with pytest.raises(ValueError, match=expected.replace("(", r"\(")):
    sweep.expand(bad, str(tmp_path))


def test_vectorized_groups_only_runs_that_share_a_program(tmp_path):
  mixed = sweep.Sweep(question="?", config="configs/mlp.py", seeds=(0, 1, 2),
                      points=sweep.product({"model.latent_dim": [2, 8],
                                            "loss.kl_weight": [1.0, 2.0]}))
  runs = sweep.expand(mixed, str(tmp_path))
  groups = sweep.groups_for(runs, "vectorized", max_models=4)
  # Per latent size 6 runs (2 weights x 3 seeds), in groups of at most 4.
  assert [len(g) for g in groups] == [4, 2, 4, 2]
  for group in groups:
    assert len({run.config.model.latent_dim for run in group}) == 1
  assert [len(g) for g in sweep.groups_for(runs, "sequential", 0)] == [1] * 12


def test_shipped_sweeps_load_under_lock_and_validate(tmp_path):
  paths = sorted((REPO_ROOT / "experiments").glob("*.py"))
  shipped = [p for p in paths if "get_sweep" in p.read_text()]
  assert len(shipped) >= 7
  for path in shipped:
    name, definition = sweep.load_sweep(str(path))
    runs = sweep.expand(definition, str(tmp_path / name))  # Locked configs, validated.
    assert len(runs) == len(definition.points) * len(definition.seeds)
