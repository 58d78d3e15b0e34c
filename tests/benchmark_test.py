"""The benchmark command's records, and evaluation that compiles once per split."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.helpers import MNIST_SHAPE, REPO_ROOT, count_traces, tiny_config
from vae_jax import evaluators
from vae_jax import models
from vae_jax import parallel
from vae_jax import steps


def _run_benchmark(*flags):
  result = subprocess.run([sys.executable, "-m", "vae_jax.benchmark", *flags], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-5000:]
  return result


@pytest.mark.slow
def test_benchmark_prints_a_table_and_writes_json_records(tmp_path):
  path = tmp_path / "bench.json"
  result = _run_benchmark("--configs=mlp2d", "--seconds=0.2", "--steps_per_dispatch=5",
                          "--roofline_max_size=512", f"--json={path}")
  assert "float32 matmul roofline:" in result.stdout
  assert "(best of square sizes 256-512, at " in result.stdout
  assert "| config | batch | per dispatch |" in result.stdout
  [record] = json.loads(path.read_text())
  for key in ("config", "steps_per_sec", "examples_per_sec", "roofline_steps_per_sec",
              "roofline_fraction", "compile_seconds", "peak_rss_mb"):
    assert key in record, key
  assert record["config"] == "mlp2d" and record["steps_per_dispatch"] == 5
  np.testing.assert_allclose(record["examples_per_sec"],
                             record["steps_per_sec"] * record["batch_size"], rtol=1e-9)
  np.testing.assert_allclose(record["roofline_fraction"],
                             record["steps_per_sec"] / record["roofline_steps_per_sec"],
                             rtol=1e-9)
  # FLOPs of seed 003's MLP step, batch 128, from its matmuls: forward 2*B*sum(in*out)
  # over 784-256-(2+2) and 2-256-784; backward the same for the weights' gradients and
  # again for the inputs' (but none for the image). XLA's count adds elementwise work.
  forward = 2 * 128 * (784 * 256 + 256 * 2 * 2 + 2 * 256 + 256 * 784)
  matmul_flops = 3 * forward - 2 * 128 * 784 * 256
  assert matmul_flops <= record["gflops_per_step"] * 1e9 <= 1.5 * matmul_flops
  assert record["steps_per_sec"] > 0 and record["compile_seconds"] > 0


@pytest.mark.parametrize("kind", ["elbo", "nll"])
def test_evaluation_of_a_ragged_split_compiles_once(kind):
  config = tiny_config()
  config.eval.batch_size, config.eval.nll_batch_size = 300, 300
  model = models.get_model(config.model, MNIST_SHAPE)
  mesh = parallel.make_mesh(jax.devices()[:1])
  params = steps.create_train_state(model, config, jax.random.key(0)).params
  images = np.random.default_rng(0).integers(0, 256, (1000, 28, 28, 1)).astype(np.uint8)
  dataset = {"image": jax.numpy.asarray(images), "label": jax.numpy.zeros(1000, "int32")}
  evaluator = evaluators.Evaluators(model, config, mesh)
  with count_traces() as traces:  # 1000 = 3 full batches of 300 + 100.
    if kind == "elbo":
      evaluator.neg_elbo(params, dataset, jax.random.key(1), config)
    else:
      evaluator.nll(params, dataset, jax.random.key(1), config, 3)
  assert traces[f"{kind}_batch"] == 1, traces


@pytest.mark.slow
def test_vectorized_benchmark_prints_model_steps_and_their_ratio(tmp_path):
  path = tmp_path / "vectorized.json"
  result = _run_benchmark("--configs=iwae", "--seconds=0.2", "--vectorized_models=3",
                          f"--json={path}")
  assert "| config | models | batch | per dispatch | one at a time: model-steps/s |" in (
      result.stdout)
  [record] = json.loads(path.read_text())
  assert record["config"] == "iwae" and record["models"] == 3
  assert record["sequential_model_steps_per_sec"] > 0
  np.testing.assert_allclose(record["speedup"], record["vectorized_model_steps_per_sec"]
                             / record["sequential_model_steps_per_sec"], rtol=1e-9)
  assert f"| iwae | 3 | 20 | 10 | {record['sequential_model_steps_per_sec']:.1f} |" in (
      result.stdout)
