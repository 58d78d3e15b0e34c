"""A sweep's report: paired differences to a baseline with bootstrap intervals (no training)."""

import json
import types

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from vae_jax import sweep
from vae_jax import sweep_results


def test_the_bootstrap_interval_covers_a_known_difference_about_as_often_as_it_should():
  """8 seeds, normal noise, true difference 0.5, 1000 fixed-seed repetitions.

  The percentile bootstrap of a mean is about mean ± 1.96 · s·sqrt((n-1)/n) / sqrt(n): a
  z quantile and the plug-in spread where a t quantile and the sample spread belong. For
  n = 8 that covers P(|t_7| < 1.96·sqrt(7/8)) = 0.891, not 0.95 (measured here: 0.889).
  1000 repetitions give it a standard error of 0.01, so [0.86, 0.92] holds it with room
  while failing a 90% interval (0.83), a 99% one (0.95) or an exact 95% t interval.
  """
  rng = np.random.default_rng(0)
  true_difference, covered, repetitions = 0.5, 0, 1000
  for repetition in range(repetitions):
    baseline = rng.normal(100.0, 1.0, 8)
    values = baseline + true_difference + rng.normal(0.0, 1.0, 8)
    difference = sweep_results.paired_difference(
        dict(enumerate(baseline)), dict(enumerate(values)), seed=repetition)
    assert difference["num_seeds"] == 8
    assert difference["mean"] == pytest.approx(np.mean(values - baseline), abs=1e-12)
    assert difference["low"] <= difference["mean"] <= difference["high"]
    covered += difference["low"] <= true_difference <= difference["high"]
  assert 0.86 <= covered / repetitions <= 0.92, covered / repetitions


def test_identical_points_and_a_constant_shift():
  rng = np.random.default_rng(1)
  baseline = dict(enumerate(rng.normal(90.0, 2.0, 5)))
  same = sweep_results.paired_difference(baseline, dict(baseline))
  assert same == {"mean": 0.0, "low": 0.0, "high": 0.0, "num_seeds": 5,
                  "significant": False}
  shifted = sweep_results.paired_difference(baseline, {s: v + 1.0 for s, v in baseline.items()})
  assert shifted["mean"] == pytest.approx(1.0, abs=1e-12)
  assert shifted["low"] == pytest.approx(1.0, abs=1e-12)
  assert shifted["high"] == pytest.approx(1.0, abs=1e-12)
  assert shifted["significant"] and shifted["num_seeds"] == 5


def test_runs_pair_by_seed_and_few_seeds_give_what_they_can():
  # Only seeds in both count; the order of the dicts does not matter.
  difference = sweep_results.paired_difference({2: 10.0, 0: 1.0, 1: 5.0}, {1: 7.0, 0: 4.0, 3: 0.0})
  assert difference["num_seeds"] == 2 and difference["mean"] == pytest.approx(2.5)
  # With 2 seeds a resample's mean is one of 3 values: the interval is their range.
  assert (difference["low"], difference["high"]) == (2.0, 3.0)
  assert difference["significant"]
  one = sweep_results.paired_difference({0: 1.0}, {0: 3.0, 1: 0.0})
  assert one["mean"] == 2.0 and one["num_seeds"] == 1 and not one["significant"]
  assert np.isnan(one["low"]) and np.isnan(one["high"])
  # A fixed generator seed: the same interval every time a report is written.
  rng = np.random.default_rng(2)
  baseline, values = dict(enumerate(rng.normal(size=6))), dict(enumerate(rng.normal(size=6)))
  assert (sweep_results.paired_difference(baseline, values)
          == sweep_results.paired_difference(baseline, values))


def _tiny_sweep(seeds):
  return sweep.Sweep(question="Does β matter?", config="configs/mlp.py",
                     fixed={"train.num_steps": 30},
                     points=sweep.product({"loss.kl_weight": [0.5, 1.0, 2.0]}), seeds=seeds)


def _rows(definition, elbo):
  """Rows as collect returns them from result.json files; elbo[(kl_weight, seed)]."""
  runs = [types.SimpleNamespace(point=point, seed=seed,
                                name=f"{sweep.point_name(point)}/seed={seed}")
          for point in definition.points for seed in definition.seeds]

  def result(run):
    value = elbo[(run.point["loss.kl_weight"], run.seed)]
    return {"summary": {"test_neg_elbo": value, "test_reconstruction": value - 20.0,
                        "test_kl": 20.0},
            "wall_seconds": 3.0, "models_per_program": 1, "machine": "a test"}
  return sweep_results.collect(runs, result)


def _markdown(definition, rows, baseline=None):
  keys = sweep_results.swept_keys(definition)
  groups = sweep_results.summarize(rows, keys, definition)
  return sweep_results.markdown("tiny", definition, keys, groups, rows, len(rows), "", [],
                                baseline=baseline)


def test_the_markdown_has_the_paired_table():
  definition = _tiny_sweep(seeds=(0, 1, 2))
  elbo = {(0.5, 0): 100.0, (0.5, 1): 101.0, (0.5, 2): 102.0,
          (1.0, 0): 101.0, (1.0, 1): 102.0, (1.0, 2): 103.0,   # +1 on every seed.
          (2.0, 0): 99.0, (2.0, 1): 101.0, (2.0, 2): 103.0}    # -1, 0, +1.
  rows = _rows(definition, elbo)
  text = _markdown(definition, rows)
  spread = sweep_results.paired_difference({0: 100.0, 1: 101.0, 2: 102.0},
                                           {0: 99.0, 1: 101.0, 2: 103.0})
  assert spread["mean"] == 0.0 and spread["low"] < 0 < spread["high"]
  interval = f"[{spread['low']:+.2f}, {spread['high']:+.2f}]"
  assert ("Paired differences to `loss.kl_weight=0.5` (point − baseline; mean over 3 seeds "
          "[95% bootstrap CI]).") in text
  # No NLL in the summaries: no NLL column. KL is the same everywhere: a difference of 0.
  assert ("| loss.kl_weight | seeds | test −ELBO (nats) | test reconstruction (nats) | "
          "test KL (nats) |") in text
  assert ("| 1.0 | 3 | **+1.00 [+1.00, +1.00]** | **+1.00 [+1.00, +1.00]** | "
          "+0.00 [+0.00, +0.00] |") in text
  assert f"| 2.0 | 3 | +0.00 {interval} | +0.00 {interval} | +0.00 [+0.00, +0.00] |" in text
  assert "| 0.5 | 3 | +" not in text  # The baseline is not compared with itself.
  assert "**bold**: it excludes 0" in text and "One seed" not in text
  # Another baseline, by its name in results.csv: the signs turn.
  text = _markdown(definition, rows, baseline="loss.kl_weight=1.0")
  assert "Paired differences to `loss.kl_weight=1.0`" in text
  assert "| 0.5 | 3 | **-1.00 [-1.00, -1.00]** |" in text
  assert "| 2.0 | 3 | -1.00 " in text


def test_the_markdown_says_one_seed_gives_no_interval():
  definition = _tiny_sweep(seeds=(0,))
  rows = _rows(definition, {(0.5, 0): 100.0, (1.0, 0): 101.5, (2.0, 0): 99.25})
  text = _markdown(definition, rows)
  assert "Paired differences to `loss.kl_weight=0.5` (point − baseline, 1 seed)." in text
  assert "| 1.0 | 1 | +1.50 | +1.50 | +0.00 |" in text
  assert "| 2.0 | 1 | -0.75 | -0.75 | +0.00 |" in text
  assert ("One seed gives no interval: the table shows the difference of the two runs "
          "alone") in text
  assert "bootstrap" not in text and "**" not in text


def test_a_two_seed_table_says_what_its_interval_is():
  definition = _tiny_sweep(seeds=(0, 1))
  rows = _rows(definition, {(0.5, 0): 100.0, (0.5, 1): 100.0, (1.0, 0): 101.0,
                            (1.0, 1): 103.0, (2.0, 0): 99.0, (2.0, 1): 101.0})
  text = _markdown(definition, rows)
  assert "mean over 2 seeds [95% bootstrap CI]" in text
  assert "| 1.0 | 2 | **+2.00 [+1.00, +3.00]** |" in text
  assert "| 2.0 | 2 | +0.00 [-1.00, +1.00] |" in text
  assert "the interval is the range of the two seeds' differences" in text


def test_an_unknown_baseline_is_refused_before_training_or_writing(tmp_path):
  expected = (r"--baseline='loss.kl_weight=3.0' is not a point of the sweep; its points are: "
              r"loss.kl_weight=0.5, loss.kl_weight=1.0, loss.kl_weight=2.0, "
              r"loss.kl_weight=4.0\.")
  with pytest.raises(ValueError, match=expected):
    sweep.run_sweep(str(REPO_ROOT / "experiments" / "kl_weight.py"), str(tmp_path / "runs"),
                    baseline="loss.kl_weight=3.0")
  assert not (tmp_path / "runs").exists()
  # --aggregate_only's path: aggregate refuses it before writing anything.
  name, definition = sweep.load_sweep(str(REPO_ROOT / "experiments" / "kl_weight.py"))
  runs = sweep.expand(definition, str(tmp_path / "runs"))
  with pytest.raises(ValueError, match=expected):
    sweep_results.aggregate(definition, runs, str(tmp_path / "runs"), name=name,
                            baseline="loss.kl_weight=3.0")
  assert not (tmp_path / "runs").exists()
  assert sweep_results.baseline_name(definition, "loss.kl_weight=2.0") == "loss.kl_weight=2.0"
  assert sweep_results.baseline_name(definition) == "loss.kl_weight=0.5"


def test_aggregate_writes_the_paired_table_into_results_md_and_the_report(tmp_path):
  definition = _tiny_sweep(seeds=(0, 1))
  runs = sweep.expand(definition, str(tmp_path / "sweep"))
  for run in runs:
    value = 100.0 + run.point["loss.kl_weight"] + run.seed
    (tmp_path / "sweep" / run.name).mkdir(parents=True)
    (tmp_path / "sweep" / run.name / "result.json").write_text(json.dumps({
        "summary": {"test_neg_elbo": value, "test_reconstruction": value - 20.0,
                    "test_kl": 20.0},
        "wall_seconds": 3.0, "models_per_program": 1, "machine": "a test"}))
  sweep_results.aggregate(definition, runs, str(tmp_path / "sweep"), name="tiny",
                          report_dir=str(tmp_path / "report"), baseline="loss.kl_weight=1.0")
  for text in ((tmp_path / "sweep" / "results.md").read_text(),
               (tmp_path / "report" / "README.md").read_text()):
    assert "Paired differences to `loss.kl_weight=1.0`" in text
    assert "| 0.5 | 2 | **-0.50 [-0.50, -0.50]** |" in text
    assert "| 2.0 | 2 | **+1.00 [+1.00, +1.00]** |" in text
  assert (tmp_path / "sweep" / "test_elbo_nats.png").stat().st_size > 1000
  # results.csv keeps its columns.
  assert (tmp_path / "sweep" / "results.csv").read_text().splitlines()[0] == (
      "point,loss.kl_weight,seed,test_elbo_nats,test_nll_nats,test_reconstruction_nats,"
      "test_kl_nats,test_active_units,test_mutual_information_nats,wall_seconds,"
      "models_per_program")
