"""The config files' args (config_schema.parse_config_arg), the configs they give, and
config.json read back (config_schema.load_json)."""

import json
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from tests.helpers import REPO_ROOT, shipped_config, tiny_config
from vae_jax import config_schema

_SPEC = {"objective": "vae", "k": 1, "scale": 0.5, "stages": None, "short": False}


def _parse(arg):
  return config_schema.parse_config_arg(arg, "configs/x.py", **_SPEC)


@pytest.mark.parametrize("arg", [None, "", ","])
def test_no_arg_gives_the_defaults(arg):
  assert _parse(arg).to_dict() == _SPEC


def test_bare_flag_and_typed_values():
  options = _parse("short,objective=iwae,k=50,scale=2,stages=08")
  assert isinstance(options, ml_collections.ConfigDict)
  assert options.to_dict() == {"objective": "iwae", "k": 50, "scale": 2.0, "stages": "08",
                               "short": True}
  assert type(options.k) is int and type(options.scale) is float
  assert _parse("short=false").short is False and _parse("short=True").short is True
  assert _parse("k=5,k=7").k == 7  # The last one given.


@pytest.mark.parametrize("arg, message", [
    ("foo=1", "Unknown variant configs/x.py:foo=1: no option 'foo'; known: objective, k, "
              "scale, stages, short."),
    ("short,long", "Unknown variant configs/x.py:short,long: no option 'long'; known: "),
    ("k=x", "configs/x.py: k='x' is not an int."),
    ("scale=x", "configs/x.py: scale='x' is not a number."),
    ("k", "configs/x.py: k needs a value (k=...)."),
    ("objective=", "configs/x.py: objective needs a value (objective=...)."),
    ("short=0", "configs/x.py: short is a flag: give it bare, or short=true or short=false"),
])
def test_bad_args_are_refused_naming_the_option_and_the_file(arg, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    _parse(arg)


def test_a_config_without_options_refuses_any():
  assert config_schema.parse_config_arg(None, "configs/x.py").to_dict() == {}
  with pytest.raises(ValueError, match="no option 'foo'; known: none"):
    config_schema.parse_config_arg("foo", "configs/x.py")


# What each shipped config sets apart from config_schema.default_config(), as the configs
# gave it before their args had one parser.
_IWAE_NO_NLLS = {"data.binarization": "dynamic", "data.validation_size": 0,
                 "eval.num_importance_samples": 5000, "figures.every_epochs": 100,
                 "model.hidden_dims": (200, 200), "model.latent_dim": 50,
                 "train.adam_eps": 1e-4, "train.batch_size": 20,
                 "train.learning_rate_schedule": "iwae", "train.log_every_steps": 1000,
                 "train.num_epochs": 0}
_IWAE = {**_IWAE_NO_NLLS, "eval.nll_at_epochs": (1, 4, 13, 40, 121, 364, 1093)}
_IWAE_SHORT = {**_IWAE_NO_NLLS, "figures.every_epochs": 0, "train.schedule_stages": 3}
_CONV = {"eval.importance_chunk_size": 200, "eval.nll_batch_size": 10,
         "model.activation": "leaky_relu", "model.dropout_rate": 0.2,
         "model.gaussian_fixed_variance": 0.5, "model.gaussian_mean": "sigmoid",
         "model.latent_dim": 8, "model.likelihood": "gaussian", "model.name": "conv",
         "model.negative_slope": 0.3, "train.batch_size": 64, "train.learning_rate": 5e-4,
         "train.num_steps": 30000, "train.steps_per_dispatch": 1}
_MLP2D = {"figures.every_epochs": 10, "loss.kl_weight": 1 / 128, "model.activation": "relu",
          "model.hidden_dims": (256,), "model.kernel_init": "truncated_normal",
          "model.latent_dim": 2, "model.likelihood": "gaussian", "train.batch_size": 128,
          "train.num_epochs": 50}


@pytest.mark.parametrize("name, arg, expected", [
    ("mlp", None, {}),
    ("mlp2d", None, _MLP2D),
    ("cvae", None, {**_MLP2D, "model.conditional": True}),
    ("conv", None, _CONV),
    ("conv", "", _CONV),
    ("conv", "short", {**_CONV, "train.num_steps": 3000, "figures.every_epochs": 1}),
    ("iwae", None, _IWAE),
    ("iwae", "objective=vae,k=1", _IWAE),
    ("iwae", "objective=iwae,k=50", {**_IWAE, "loss.objective": "iwae",
                                     "loss.num_samples": 50}),
    ("iwae", "layers=2", {**_IWAE, "model.stochastic_layers": 2, "model.latent_dim": 100}),
    ("iwae", "stages=6", {**_IWAE, "eval.nll_at_epochs": (1, 4, 13, 40, 121),
                          "train.schedule_stages": 6}),
    ("iwae", "stages=1", {**_IWAE_NO_NLLS, "train.schedule_stages": 1}),
    ("iwae", "short", _IWAE_SHORT),
    ("iwae", "objective=vae,k=1,short", _IWAE_SHORT),
    ("iwae", "layers=2,objective=iwae,k=50,stages=2",
     {**_IWAE, "eval.nll_at_epochs": (1,), "loss.objective": "iwae", "loss.num_samples": 50,
      "model.stochastic_layers": 2, "model.latent_dim": 100, "train.schedule_stages": 2}),
])
def test_shipped_configs_are_as_before_key_for_key(name, arg, expected):
  defaults = config_schema.flat_items(config_schema.default_config())
  config = config_schema.flat_items(shipped_config(name, arg))
  assert config.keys() == defaults.keys()
  assert {key: value for key, value in config.items() if value != defaults[key]} == expected


@pytest.mark.parametrize("name, arg, message", [
    ("iwae", "stages=9", "configs/iwae.py: stages='9' is not one of 1..8."),
    ("iwae", "stages=08", "configs/iwae.py: stages='08' is not one of 1..8."),
    ("iwae", "objective=foo", "configs/iwae.py: objective='foo' is not one of 'vae', 'iwae'."),
    ("iwae", "layers=3", "configs/iwae.py: layers='3' is not one of 1, 2."),
    ("iwae", "short,stages=3", "configs/iwae.py: short is stages=3; give one of them."),
    ("iwae", "k=5,foo=1", "Unknown variant configs/iwae.py:k=5,foo=1: no option 'foo'; "
                          "known: objective, k, layers, stages, short."),
    ("conv", "long", "Unknown variant configs/conv.py:long: no option 'long'; known: short."),
    ("mlp2d", "foo", "Unknown variant configs/mlp2d.py:foo: no option 'foo'; known: none."),
    ("cvae", "foo", "Unknown variant configs/mlp2d.py:foo: no option 'foo'; known: none."),
])
def test_bad_config_args_are_refused(name, arg, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    shipped_config(name, arg)


@pytest.mark.slow  # A subprocess.
def test_configs_load_by_path_from_another_directory(tmp_path):
  """As config_flags loads them: the parser comes with vae_jax, not with `configs`."""
  script = ("import sys; from vae_jax import config_schema; "
            "print(config_schema.load_file(sys.argv[1], 'objective=iwae,k=5').loss.num_samples)")
  result = subprocess.run([sys.executable, "-c", script, str(REPO_ROOT / "configs" / "iwae.py")],
                          cwd=tmp_path, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": ""})
  assert result.returncode == 0, result.stderr
  assert result.stdout.split()[-1] == "5"


def test_load_json_round_trips_a_saved_config(tmp_path):
  config = tiny_config()
  config.model.hidden_dims = (7, 5)
  config.eval.nll_at_epochs = (1, 4)
  path = tmp_path / "config.json"
  path.write_text(config.to_json_best_effort())
  loaded = config_schema.load_json(str(path))
  assert loaded.is_locked
  assert config_schema.flat_items(loaded) == config_schema.flat_items(config)
  assert loaded.model.hidden_dims == (7, 5) and loaded.eval.nll_at_epochs == (1, 4)


def test_load_json_keeps_todays_defaults_for_keys_it_lacks(tmp_path):
  path = tmp_path / "config.json"
  path.write_text(json.dumps({"model": {"latent_dim": 3}, "train": {}}))
  loaded = config_schema.load_json(str(path))
  expected = config_schema.default_config()
  expected.model.latent_dim = 3
  assert config_schema.flat_items(loaded) == config_schema.flat_items(expected)


@pytest.mark.parametrize("saved, key", [({"model": {"latnt_dim": 3}}, "model.latnt_dim"),
                                        ({"extra": 1}, "extra")])
def test_load_json_refuses_unknown_keys(tmp_path, saved, key):
  path = tmp_path / "config.json"
  path.write_text(json.dumps(saved))
  with pytest.raises(ValueError, match=re.escape(f"{path} has the key {key}, which this "
                                                 "version of vae_jax does not know; was it "
                                                 "written by another version?")):
    config_schema.load_json(str(path))
