"""A sweep's report: paired differences to a baseline with t intervals (no training)."""

import json
import math
import types

import numpy as np
import pytest

from tests.helpers import REPO_ROOT
from vae_jax import sweep
from vae_jax import sweep_results


def test_the_t_quantile_matches_tables_and_closed_forms():
  # Two-sided 95% (and a few other) quantiles as printed in t tables, 6 decimals.
  table = {(0.975, 1): 12.706205, (0.975, 2): 4.302653, (0.975, 3): 3.182446,
           (0.975, 4): 2.776445, (0.975, 7): 2.364624, (0.975, 9): 2.262157,
           (0.975, 29): 2.045230, (0.975, 30): 2.042272, (0.95, 1): 6.313752,
           (0.995, 5): 4.032143}
  for (p, df), expected in table.items():
    assert sweep_results.student_t_quantile(p, df) == pytest.approx(expected, abs=1e-6), (p, df)
    assert sweep_results.student_t_quantile(1 - p, df) == pytest.approx(-expected, abs=1e-6)
  for p in (0.6, 0.9, 0.975, 0.999):
    # Closed forms: 1 degree of freedom is Cauchy, 2 is (2p - 1) / sqrt(2p(1 - p)).
    assert sweep_results.student_t_quantile(p, 1) == pytest.approx(
        math.tan(math.pi * (p - 0.5)), rel=1e-10)
    assert sweep_results.student_t_quantile(p, 2) == pytest.approx(
        (2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
    for df in (1, 3, 8, 100):
      quantile = sweep_results.student_t_quantile(p, df)
      assert sweep_results.student_t_cdf(quantile, df) == pytest.approx(p, abs=1e-13)
  # Many degrees of freedom: the normal quantile.
  assert sweep_results.student_t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-6)


@pytest.mark.parametrize("num_seeds", [2, 3, 8])
def test_the_interval_has_its_stated_coverage_and_a_null_effect_is_rarely_bold(num_seeds):
  """2000 fixed-seed synthetic sweeps per case, normal seed noise.

  (a) No true difference: bold (the interval excludes 0) should be 5% of them. (b) A true
  difference of 0.5: the interval should cover it 95% of the time. 2000 repetitions give
  a standard error of 0.005, so [0.02, 0.08] and [0.92, 0.98] hold an exact 95% interval
  with 6 standard errors to spare (measured here at 2, 3 and 8 seeds: null bold 0.049,
  0.057, 0.0465; coverage 0.9635, 0.9475, 0.9525), while at each of 2, 3 and 8 seeds
  failing the percentile bootstrap this replaced (null bold 0.49, 0.27, 0.11 on these
  draws), a z interval mean ± 1.96 · s / √n (null bold 0.30, 0.20, 0.088) and a 90% or
  99% t interval (null bold about 0.10 or 0.01).
  """
  rng = np.random.default_rng(num_seeds)
  repetitions, true_difference = 2000, 0.5
  bold = covered = 0
  for _ in range(repetitions):
    baseline = rng.normal(100.0, 1.0, num_seeds)
    null = sweep_results.paired_difference(
        dict(enumerate(baseline)), dict(enumerate(baseline + rng.normal(0.0, 1.0, num_seeds))))
    bold += null["significant"]
    values = baseline + true_difference + rng.normal(0.0, 1.0, num_seeds)
    difference = sweep_results.paired_difference(dict(enumerate(baseline)),
                                                 dict(enumerate(values)))
    assert difference["num_seeds"] == num_seeds
    assert difference["mean"] == pytest.approx(np.mean(values - baseline), abs=1e-12)
    assert difference["low"] <= difference["mean"] <= difference["high"]
    covered += difference["low"] <= true_difference <= difference["high"]
  assert 0.02 <= bold / repetitions <= 0.08, bold / repetitions
  assert 0.92 <= covered / repetitions <= 0.98, covered / repetitions


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
  # Exactly equal differences: s = 0 exactly, the interval a point.
  exact = sweep_results.paired_difference({0: 1.0, 1: 2.0}, {0: 1.5, 1: 2.5})
  assert (exact["low"], exact["mean"], exact["high"]) == (0.5, 0.5, 0.5)
  assert exact["significant"]


def test_runs_pair_by_seed_and_few_seeds_give_what_they_can():
  # Only seeds in both count; the order of the dicts does not matter. Differences 3 and 2:
  # mean 2.5, s = sqrt(1/2), s / sqrt(2) = 0.5, so 2.5 ± 12.706205 · 0.5.
  difference = sweep_results.paired_difference({2: 10.0, 0: 1.0, 1: 5.0}, {1: 7.0, 0: 4.0, 3: 0.0})
  assert difference["num_seeds"] == 2 and difference["mean"] == pytest.approx(2.5)
  assert difference["low"] == pytest.approx(2.5 - 6.3531025, abs=1e-6)
  assert difference["high"] == pytest.approx(2.5 + 6.3531025, abs=1e-6)
  # Both seeds agree in sign, but 2 seeds cannot tell that from noise at 95%.
  assert not difference["significant"]
  # A 90% interval: t(0.95, 1) = 6.313752.
  ninety = sweep_results.paired_difference({0: 1.0, 1: 5.0}, {0: 4.0, 1: 7.0}, confidence=0.9)
  assert ninety["low"] == pytest.approx(2.5 - 6.313752 * 0.5, abs=1e-6)
  # 3 seeds, differences -1, 0, 1: s = 1, so ± t(0.975, 2) / sqrt(3) = ± 2.484138.
  spread = sweep_results.paired_difference({0: 0.0, 1: 0.0, 2: 0.0}, {0: -1.0, 1: 0.0, 2: 1.0})
  assert spread["mean"] == 0.0 and not spread["significant"]
  assert (spread["low"], spread["high"]) == pytest.approx((-2.484138, 2.484138), abs=1e-6)
  # 8 seeds, differences 1 + small noise: the interval excludes 0.
  large = sweep_results.paired_difference(dict(enumerate(np.zeros(8))),
                                          dict(enumerate(1.0 + np.linspace(-0.5, 0.5, 8))))
  assert large["significant"] and 0 < large["low"] < 1 < large["high"]
  one = sweep_results.paired_difference({0: 1.0}, {0: 3.0, 1: 0.0})
  assert one["mean"] == 2.0 and one["num_seeds"] == 1 and not one["significant"]
  assert np.isnan(one["low"]) and np.isnan(one["high"])
  none = sweep_results.paired_difference({0: 1.0}, {1: 3.0})
  assert none["num_seeds"] == 0 and np.isnan(none["mean"]) and not none["significant"]


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
    return {"summary": {"test_neg_elbo_nats": value, "test_reconstruction_nats": value - 20.0,
                        "test_kl_nats": 20.0},
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
  # -1, 0, +1: s = 1, so ± t(0.975, 2) / sqrt(3) = ± 2.48.
  interval = "[-2.48, +2.48]"
  assert ("Paired differences to `loss.kl_weight=0.5` (point − baseline; mean over 3 seeds "
          "[95% paired t interval]).") in text
  # No NLL in the summaries: no NLL column. KL is the same everywhere: a difference of 0.
  assert ("| loss.kl_weight | seeds | test −ELBO (nats) | test reconstruction (nats) | "
          "test KL (nats) |") in text
  assert ("| 1.0 | 3 | **+1.00 [+1.00, +1.00]** | **+1.00 [+1.00, +1.00]** | "
          "+0.00 [+0.00, +0.00] |") in text
  assert f"| 2.0 | 3 | +0.00 {interval} | +0.00 {interval} | +0.00 [+0.00, +0.00] |" in text
  assert "| 0.5 | 3 | +" not in text  # The baseline is not compared with itself.
  assert "mean ± t(0.975, n − 1) · s / √n" in text and "**bold**: it excludes 0" in text
  assert "One seed" not in text and "With 2 seeds" not in text
  assert "bootstrap" not in text
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
  assert "mean over 2 seeds [95% paired t interval]" in text
  # +1 and +3: both positive, yet 2 ± 12.71 · 1 includes 0, so not bold.
  assert "| 1.0 | 2 | +2.00 [-10.71, +14.71] |" in text
  assert "| 2.0 | 2 | +0.00 [-12.71, +12.71] |" in text
  assert ("With 2 seeds t(0.975, 1) = 12.71: the interval is wide, so only a large, "
          "consistent difference is bold.") in text
  assert "bootstrap" not in text and "range of the two" not in text


def test_an_unknown_baseline_is_refused_before_training_or_writing(tmp_path):
  expected = (r"--baseline='loss.kl_weight=3.0' is not a point of the sweep; its points are: "
              r"loss.kl_weight=0.5, loss.kl_weight=1.0, loss.kl_weight=2.0, "
              r"loss.kl_weight=4.0\.")
  with pytest.raises(ValueError, match=expected):
    sweep.run_sweep(str(REPO_ROOT / "experiments" / "kl_weight.py"), str(tmp_path / "runs"),
                    baseline="loss.kl_weight=3.0")
  assert not (tmp_path / "runs").exists()
  # --aggregate_only's path (and aggregate itself) refuse it before writing anything.
  with pytest.raises(ValueError, match=expected):
    sweep.aggregate_sweep(str(REPO_ROOT / "experiments" / "kl_weight.py"),
                          str(tmp_path / "runs"), baseline="loss.kl_weight=3.0")
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
        "summary": {"test_neg_elbo_nats": value, "test_reconstruction_nats": value - 20.0,
                    "test_kl_nats": 20.0, "step": 100},
        "wall_seconds": 3.0, "models_per_program": 1, "machine": "a test"}))
    # The sample quality that `python -m vae_jax.evaluate` merges into eval.json: counted
    # for the final step's raw weights (seed 0), not for another checkpoint's (seed 1).
    (tmp_path / "sweep" / run.name / "eval.json").write_text(json.dumps({
        "step": 100 if run.seed == 0 else 50, "weights": "raw", "split": "test",
        "sample_quality": {"fd": 10.0 * run.point["loss.kl_weight"], "precision": 0.5,
                           "recall": 0.25}}))
  sweep_results.aggregate(definition, runs, str(tmp_path / "sweep"), name="tiny",
                          report_dir=str(tmp_path / "report"), baseline="loss.kl_weight=1.0")
  for text in ((tmp_path / "sweep" / "results.md").read_text(),
               (tmp_path / "report" / "README.md").read_text()):
    assert "Paired differences to `loss.kl_weight=1.0`" in text
    assert "| 0.5 | 2 | **-0.50 [-0.50, -0.50]** |" in text
    assert "| 2.0 | 2 | **+1.00 [+1.00, +1.00]** |" in text
    # The sample quality of seed 0 alone; precision and recall to 3 decimals.
    assert "| 5.00 | 0.500 | 0.250 |" in text
  assert (tmp_path / "sweep" / "test_neg_elbo_nats.png").stat().st_size > 1000
  # results.csv names each metric's column exactly as the summary key it comes from.
  lines = (tmp_path / "sweep" / "results.csv").read_text().splitlines()
  assert lines[0] == (
      "point,loss.kl_weight,seed,test_neg_elbo_nats,test_nll_nats,test_neg_elbo_bits_per_dim,"
      "test_nll_bits_per_dim,test_reconstruction_nats,test_kl_nats,test_active_units,"
      "test_mutual_information_nats,test_active_units_z1,test_active_units_z2,test_kl_nats_z1,"
      "test_kl_nats_z2,test_sample_fd,test_sample_precision,test_sample_recall,"
      "wall_seconds,models_per_program")
  assert lines[1] == "loss.kl_weight=0.5,0.5,0,100.5,,,,80.5,20.0,,,,,,,5.0,0.5,0.25,3.0,1"
  assert lines[2] == "loss.kl_weight=0.5,0.5,1,101.5,,,,81.5,20.0,,,,,,,,,,3.0,1"
