"""configs/iwae.py's schedule by stage count, and the test NLL at the stages' ends."""

import json

import numpy as np
import pytest

from experiments import stages
from tests.helpers import shipped_config, synthetic_splits, tiny_config
from vae_jax import config_schema
from vae_jax import input_pipeline
from vae_jax import steps
from vae_jax import train


@pytest.mark.parametrize("stages", range(1, 9))
def test_stages_set_the_epochs_and_the_learning_rate_boundaries(stages):
  config = shipped_config("iwae", f"objective=vae,k=1,stages={stages}")
  config_schema.validate(config)
  stage_ends = [sum(3 ** i for i in range(stage + 1)) for stage in range(stages)]
  assert config_schema.num_epochs(config) == stage_ends[-1]
  assert tuple(config.eval.nll_at_epochs) == tuple(stage_ends[:-1])
  steps_per_epoch = 7
  for stage in range(stages):
    first_step = (stage_ends[stage - 1] if stage else 0) * steps_per_epoch
    last_step = stage_ends[stage] * steps_per_epoch - 1
    # Burda et al.: stage i at 0.001 * 10^(-i/7), from its first step to its last.
    for step in (first_step, last_step):
      np.testing.assert_allclose(steps.learning_rate_at(config, steps_per_epoch, step),
                                 1e-3 * 10 ** (-stage / 7), rtol=1e-5)


def test_the_stage_count_is_the_one_source_of_the_length():
  config = shipped_config("iwae", "objective=vae,k=1")  # 8 stages: 3280 epochs.
  assert config_schema.num_epochs(config) == 3280
  config.train.schedule_stages = 3  # As --config.train.schedule_stages=3 does.
  assert config_schema.num_epochs(config) == 13
  short = shipped_config("iwae", "objective=vae,k=1,short")
  assert config_schema.num_epochs(short) == 13 and short.train.schedule_stages == 3
  assert tuple(short.eval.nll_at_epochs) == ()


@pytest.mark.parametrize("arg, message", [
    ("stages=9", "stages='9' is not one of 1..8"),
    ("stages=0", "stages='0' is not one of 1..8"),
    ("stages=3,short", "short is stages=3; give one of them"),
])
def test_bad_stage_args_are_refused(arg, message):
  with pytest.raises(ValueError, match=message):
    shipped_config("iwae", arg)


@pytest.mark.slow  # A whole (tiny) run of 3 stages.
def test_stage_end_nlls_are_logged_at_the_right_epochs(tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, "load_splits", lambda data_config: synthetic_splits())
  config = tiny_config()
  config.train.batch_size = 100  # 4 steps per epoch.
  config.train.num_steps, config.train.num_epochs = 0, 0
  config.train.learning_rate_schedule, config.train.schedule_stages = "iwae", 3
  config.eval.nll_at_epochs = (1, 4)
  config.eval.nll_samples_during_training = 5
  config.eval.num_importance_samples = 10
  train.train_and_evaluate(config, str(tmp_path))
  history = [json.loads(line) for line in (tmp_path / "epoch_metrics.jsonl").open()]
  assert [entry["epoch"] for entry in history] == list(range(1, 14))
  assert [entry["epoch"] for entry in history if "test_nll_nats" in entry] == [1, 4]
  assert all(entry["test_nll_num_samples"] == 5 for entry in history if "test_nll_nats" in entry)
  evaluation = json.loads((tmp_path / "eval.json").read_text())
  assert [(e["epoch"], e["step"]) for e in evaluation["nll_during_training"]] == [(1, 4),
                                                                                  (4, 16)]
  assert evaluation["num_importance_samples"] == 10 and evaluation["step"] == 52
  events = next(tmp_path.glob("events.out.tfevents.*")).read_bytes()
  assert b"test/nll_nats" in events
  # experiments/stages.py's table: the stage ends, the last with the final NLL (k = 10).
  rows = stages.stage_rows(str(tmp_path))
  assert [(row["epoch"], row["step"], row["k"]) for row in rows] == [(1, 4, 5), (4, 16, 5),
                                                                     (13, 52, 10)]
  assert rows[-1]["nll"] == evaluation["nll_nats"]
  np.testing.assert_allclose([row["learning_rate"] for row in rows],
                             [1e-3, 1e-3 * 10 ** (-1 / 7), 1e-3 * 10 ** (-2 / 7)])
