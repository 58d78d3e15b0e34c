"""The evaluators: parameters and device-resident data in, numbers out; nothing written.

`Evaluators` holds the jitted programs of one model (−ELBO, importance-sampled NLL,
latent diagnostics). A group of runs builds it once and every run of the group, during
training and at the end, calls the same programs, so each compiles once (jax caches a
program per input shape: runs whose eval.* sizes differ get their own). `final_result`
assembles what eval.json holds, for the training loop and `python -m vae_jax.evaluate`
alike.

One name per number: the keys returned here are eval.json's; the loop's epoch summaries,
TensorBoard and a sweep's results.csv add only the split (`test_neg_elbo_nats`,
`test/neg_elbo_nats`). All values are nats per example unless the name says otherwise.
"""

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import input_pipeline
from vae_jax import losses
from vae_jax import parallel

# Burda et al. 2015's threshold: a unit whose posterior mean varies less than this over
# the data is inactive (the decoder cannot read anything from it).
ACTIVITY_THRESHOLD = 0.01
# Samples of the posterior per example for the latent diagnostics: what a two-layer model
# estimates by sampling (z2's posterior mean, z1's KL share) averages over them.
LATENT_SAMPLES_PER_EXAMPLE = 16
# Where an NLL's last decade of k still moves it by more than this, it is flagged.
NLL_CONVERGENCE_NATS = 0.1


def binarization_keys(binarization_seed: int, indices: jax.Array) -> jax.Array:
  """Example i's binarization key for evaluation: fold_in(key(binarization_seed), i).

  Independent of the run's seed, so runs with different seeds or configs score the same
  binarized validation and test images (the literature's protocol, as in Burda et al.'s
  released code); their reparameterization noise stays the run's own.
  """
  return parallel.example_keys(jax.random.key(binarization_seed), indices)


def per_example_outputs(batch_fn, num_examples: int, batch_size: int,
                        mesh: jax.sharding.Mesh):
  """batch_fn(indices) -> a tree of per-example arrays, over the first `num_examples` in
  padded batches (parallel.padded_batches), brought to the host without the padding and
  concatenated."""
  batches = [jax.tree.map(lambda value, n=count: np.asarray(value)[:n], batch_fn(indices))
             for indices, _, count in parallel.padded_batches(num_examples, batch_size, mesh)]
  return jax.tree.map(lambda *parts: np.concatenate(parts), *batches)


def _stderr(values: np.ndarray) -> float:
  return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


# Importance-sampled log-likelihood.


def prefix_sizes(num_samples: int) -> tuple[int, ...]:
  """The k of the prefix estimates: 1, 10, 100, ... below num_samples, num_samples // 10
  (the last decade, for the convergence warning) and num_samples."""
  sizes, size = {num_samples}, 1
  while size < num_samples:
    sizes.add(size)
    size *= 10
  if num_samples >= 10:
    sizes.add(num_samples // 10)
  return tuple(sorted(sizes))


def importance_sampling_terms(model: nn.Module, params, image: jax.Array, label,
                              rng: jax.Array, *, likelihood: str, num_samples: int,
                              chunk_size: int) -> dict[str, jax.Array]:
  """For ONE example, from `num_samples` samples of q(z|x):

  - `log_likelihood`: log p(x) ~ logmeanexp_j log w_j;
  - `log_likelihood_at`: the same over the first k samples, for each k of
    prefix_sizes(num_samples) (the last is `log_likelihood`): IWAE-k bounds at no extra cost;
  - `ess`: the effective sample size of the normalized weights, 1 / sum_j w~_j^2;
  - `max_weight`: the largest normalized weight max_j w~_j.

  The samples are processed `chunk_size` at a time (memory stays bounded for k = 5000);
  sample j's noise comes from fold_in(rng, j), so nothing depends on the chunk size. Each
  chunk keeps its logsumexps and maximum, combined exactly at the end.
  """
  num_chunks = -(-num_samples // chunk_size)
  prefixes = prefix_sizes(num_samples)

  def chunk_statistics(chunk):
    indices = chunk * chunk_size + jnp.arange(chunk_size)
    keys = parallel.example_keys(rng, indices)
    eps = jax.vmap(lambda key: jax.random.normal(key, (model.noise_dim,)))(keys)
    log_weights = losses.log_importance_weights(model, {"params": params}, image, label,
                                                eps, likelihood=likelihood)
    # Samples past num_samples (the last chunk's padding) get weight 0.
    log_weights = jnp.where(indices < num_samples, log_weights, -jnp.inf)
    prefix_logsumexp = [jax.nn.logsumexp(jnp.where(indices < size, log_weights, -jnp.inf))
                        for size in prefixes[:-1]]
    return {"logsumexp": jax.nn.logsumexp(log_weights),
            "prefix_logsumexp": (jnp.stack(prefix_logsumexp) if prefix_logsumexp
                                 else jnp.zeros((0,))),
            "logsumexp_of_squares": jax.nn.logsumexp(2 * log_weights),
            "max": jnp.max(log_weights)}

  chunks = jax.lax.map(chunk_statistics, jnp.arange(num_chunks))
  total = jax.nn.logsumexp(chunks["logsumexp"])
  log_likelihood = total - jnp.log(num_samples)
  at_prefixes = (jax.nn.logsumexp(chunks["prefix_logsumexp"], axis=0)
                 - jnp.log(jnp.asarray(prefixes[:-1], jnp.float32)))
  return {"log_likelihood": log_likelihood,
          "log_likelihood_at": jnp.concatenate([at_prefixes, log_likelihood[None]]),
          # (sum w)^2 / sum w^2, in logs: the normalization cancels.
          "ess": jnp.exp(2 * total - jax.nn.logsumexp(chunks["logsumexp_of_squares"])),
          "max_weight": jnp.exp(jnp.max(chunks["max"]) - total)}


def importance_sampled_log_likelihood(model: nn.Module, params, image: jax.Array, label,
                                      rng: jax.Array, *, likelihood: str,
                                      num_samples: int, chunk_size: int) -> jax.Array:
  """log p(x) ~ logmeanexp_j log w_j over `num_samples` samples of q(z|x), for ONE
  example (importance_sampling_terms' `log_likelihood`)."""
  return importance_sampling_terms(model, params, image, label, rng, likelihood=likelihood,
                                   num_samples=num_samples,
                                   chunk_size=chunk_size)["log_likelihood"]


def nll_diagnostics(num_samples: int, nll_at: np.ndarray, ess: np.ndarray,
                    max_weight: np.ndarray) -> dict:
  """eval.json's summary of per-example prefix NLLs (N, P), ESS (N,) and largest weights."""
  return {
      "nll_by_num_samples": [
          {"k": k, "nll_nats": float(column.mean()), "nll_stderr": _stderr(column)}
          for k, column in zip(prefix_sizes(num_samples), nll_at.T)],
      "ess_mean": float(ess.mean()),
      "ess_p5": float(np.percentile(ess, 5)),
      "ess_fraction_below_10": float(np.mean(ess < 10)),
      "max_normalized_weight_mean": float(max_weight.mean()),
      "max_normalized_weight_max": float(max_weight.max()),
  }


def nll_warnings(result: dict) -> list[str]:
  """What says the NLL is not to be trusted yet: the last decade of k still moving it by
  more than NLL_CONVERGENCE_NATS, or most examples with an effective sample size below 10."""
  warnings = []
  by_k = {entry["k"]: entry["nll_nats"] for entry in result.get("nll_by_num_samples", [])}
  k = result.get("num_importance_samples", 0)
  if k >= 10 and k // 10 in by_k and k in by_k:
    fall = by_k[k // 10] - by_k[k]
    if fall > NLL_CONVERGENCE_NATS:
      warnings.append(f"the NLL fell by {fall:.2f} nats from k = {k // 10} to k = {k}: it "
                      "has not converged, more samples would likely lower it further")
    elif fall < -NLL_CONVERGENCE_NATS:
      # The IWAE-k bound cannot rise with k in expectation: this is sampling noise.
      warnings.append(f"the NLL rose by {-fall:.2f} nats from k = {k // 10} to k = {k}: a "
                      "few heavy importance weights make the estimate noisy; more samples "
                      "(or examples) are needed to trust its last decimal")
  if result.get("ess_fraction_below_10", 0.0) > 0.5:
    warnings.append(f"{100 * result['ess_fraction_below_10']:.0f}% of the examples have an "
                    "effective sample size below 10: a few samples dominate their estimate")
  return warnings


# Latent diagnostics.


@functools.partial(jax.jit, static_argnames="block_size")
def log_aggregate_posterior(mean: jax.Array, logvar: jax.Array, z: jax.Array, *,
                            block_size: int = 32) -> jax.Array:
  """log q(z_i) = log (1/N) sum_n q(z_i | x_n) for each row z_i of z (M, d), where q(z|x_n)
  = N(mean_n, exp(logvar_n)) over the N examples: the aggregate posterior of the split.

  Rows are done `block_size` at a time against all N examples, so memory stays at
  block_size x N x d floats. Written out, not expanded into matmuls: for the narrow
  posteriors of active units (variance 1e-4) the expansion's cancellation in float32 cost
  more than the time it saves.
  """
  num_examples, dim = mean.shape
  inv_var = jnp.exp(-logvar)
  log_normalizer = -0.5 * (jnp.sum(logvar, axis=-1) + dim * jnp.log(2.0 * jnp.pi))
  num_rows = z.shape[0]
  padded = jnp.pad(z, ((0, (-num_rows) % block_size), (0, 0))).reshape(-1, block_size, dim)

  def rows(z_block):
    squares = jnp.sum(jnp.square(z_block[:, None, :] - mean[None]) * inv_var[None], axis=-1)
    return jax.nn.logsumexp(log_normalizer[None] - 0.5 * squares, axis=1)

  return jax.lax.map(rows, padded).reshape(-1)[:num_rows] - jnp.log(num_examples)


def latent_diagnostics(layers: list[dict], mutual_information_omitted: str | None = None
                       ) -> dict:
  """What the latents do, from per-example arrays (N, ...) of model.latent_layers.

  Per layer: the mean KL per dimension over the split, the activity A_u = Var_x(E_q[z_u|x])
  (Burda et al. 2015, Sec. 5.2) and the active units (A_u > ACTIVITY_THRESHOLD). Where a
  layer's E_q[z_u|x] is itself a mean over samples, the layer gives that estimate's
  variance per example (`posterior_mean_variance`), and the variance it adds to Var_x,
  (N - 1)/N times its mean over x, is subtracted: A_u is then unbiased (clipped at 0).

  For the whole latent, unless `mutual_information_omitted` gives the model's reason
  (model.mutual_information_omitted): the mean KL split as E_x KL(q(z|x) || p(z)) =
  I(x; z) + KL(q(z) || p(z)) (Hoffman & Johnson 2016), with x uniform over the split's N examples. For a conditional model x is the
  pair (image, label). The mutual information is estimated as mean_i [log q(z_i|x_i) -
  log q(z_i)], z_i ~ q(z|x_i), with the aggregate posterior q(z) the mixture of the N
  posteriors (so it is at most log N), and the marginal KL is the rest. The bottom
  layer's `mean`, `logvar` and one sample `z` determine it: the model vouches that the
  rest of the latent depends on x only through that layer.
  """
  per_layer = []
  for index, layer in enumerate(layers, start=1):
    # A prior that does not factorize over dimensions (a mixture) gives the layer's KL
    # `kl` per example, and no split by dimension.
    kl_per_dim = (np.asarray(layer["kl_per_dim"], np.float64).mean(axis=0)
                  if "kl_per_dim" in layer else None)
    posterior_mean = np.asarray(layer["posterior_mean"], np.float64)
    activity = posterior_mean.var(axis=0)
    if "posterior_mean_variance" in layer:
      sampling = np.asarray(layer["posterior_mean_variance"], np.float64).mean(axis=0)
      num_examples = len(posterior_mean)
      activity = np.maximum(activity - (num_examples - 1) / num_examples * sampling, 0.0)
    per_layer.append({"layer": index, "activity": activity.tolist(),
                      "active_units": int(np.sum(activity > ACTIVITY_THRESHOLD)),
                      "num_units": int(len(activity))})
    if kl_per_dim is None:
      per_layer[-1]["kl_nats"] = float(np.mean(np.asarray(layer["kl"], np.float64)))
    else:
      per_layer[-1].update(kl_nats=float(kl_per_dim.sum()), kl_per_dim=kl_per_dim.tolist())
  kl = sum(layer["kl_nats"] for layer in per_layer)
  bottom = layers[0]
  result = {"latent_layers": per_layer,
            "active_units": sum(layer["active_units"] for layer in per_layer),
            "num_units": sum(layer["num_units"] for layer in per_layer),
            "latent_kl_nats": kl,
            "latent_diagnostics_examples": int(np.shape(bottom["posterior_mean"])[0])}
  if mutual_information_omitted:
    result["mutual_information_omitted"] = mutual_information_omitted
    return result
  log_posterior = np.asarray(losses.diagonal_gaussian_log_density(
      bottom["z"], bottom["mean"], bottom["logvar"]), np.float64)
  log_aggregate = np.asarray(log_aggregate_posterior(
      jnp.asarray(bottom["mean"]), jnp.asarray(bottom["logvar"]), jnp.asarray(bottom["z"])),
      np.float64)
  mutual_information = float(np.mean(log_posterior - log_aggregate))
  result.update(mutual_information_nats=mutual_information,
                marginal_kl_nats=kl - mutual_information)
  return result


def summary_numbers(result: dict) -> dict[str, float]:
  """The scalars of an evaluation (an evaluator's dict or final_result's) that a run's
  summaries carry (epoch_metrics.jsonl, TensorBoard, results.csv), by their own names;
  a two-layer model's active units and KL share per layer as active_units_z1,
  kl_nats_z1, active_units_z2, kl_nats_z2."""
  names = ("neg_elbo_nats", "neg_elbo_bits_per_dim", "reconstruction_nats", "kl_nats",
           "active_units", "mutual_information_nats", "marginal_kl_nats", "nll_nats",
           "nll_bits_per_dim", "nll_stderr")
  numbers = {name: result[name] for name in names if name in result}
  layers = result.get("latent_layers", ())
  if len(layers) > 1:
    for layer in layers:
      numbers.update({f"active_units_z{layer['layer']}": layer["active_units"],
                      f"kl_nats_z{layer['layer']}": layer["kl_nats"]})
  return numbers


class Evaluators:
  """The jitted evaluators of one model, shared by the runs of a group.

  Built from the group's shared config (the model, the data's binarization, the loss:
  keys every run of a group has in common); each call takes the run's own config for
  what may differ between runs (its eval.* sizes and binarization seed, its loss
  weights). `params` and `dataset` should be replicated over `mesh`; batches are sharded
  over its "batch" axis, the last one padded and masked, so one program serves every
  batch. Example i's noise comes from fold_in(rng, i) and its binarization from
  `binarization_keys`, so no result depends on the batch size or the device count.
  """

  def __init__(self, model: nn.Module, config, mesh: jax.sharding.Mesh):
    self.model, self.mesh = model, mesh
    self._binarization = config.data.binarization
    self._likelihood = config.model.likelihood
    self._example_terms = losses.make_example_terms_fn(model, config, train=False)
    # Replicated results: every process can read them (multi-host) without a gather.
    replicated = parallel.replicated(mesh)
    self._elbo_batch = jax.jit(self.elbo_batch, out_shardings=replicated)
    self._nll_batch = jax.jit(self.nll_batch, out_shardings=replicated,
                              static_argnames=("num_samples", "chunk_size"))
    self._latent_batch = jax.jit(self.latent_batch, out_shardings=replicated)

  # The per-batch programs (jitted in __init__; their names are what jax logs).

  def elbo_batch(self, params, dataset, indices, mask, rng, binarization_key, weights):
    keys = parallel.example_keys(rng, indices)
    terms = jax.vmap(self._example_terms, in_axes=(None, 0, 0, 0, None, 0))(
        params, dataset["image"][indices], dataset["label"][indices], keys, weights,
        parallel.example_keys(binarization_key, indices))
    return {name: jnp.sum(jnp.where(mask, value, 0.0)) for name, value in terms.items()}

  def nll_batch(self, params, dataset, indices, rng, binarization_key, *, num_samples,
                chunk_size):
    def example(image_uint8, label, example_key, example_binarization_key):
      image = input_pipeline.to_model_input(image_uint8, self._binarization,
                                            example_binarization_key)
      return importance_sampling_terms(
          self.model, params, image, label,
          jax.random.fold_in(example_key, losses.PURPOSE_REPARAMETERIZATION),
          likelihood=self._likelihood, num_samples=num_samples, chunk_size=chunk_size)

    return jax.vmap(example)(dataset["image"][indices], dataset["label"][indices],
                             parallel.example_keys(rng, indices),
                             parallel.example_keys(binarization_key, indices))

  def latent_batch(self, params, dataset, indices, rng, binarization_key):
    def example(image_uint8, label, example_key, example_binarization_key):
      image = input_pipeline.to_model_input(image_uint8, self._binarization,
                                            example_binarization_key)
      eps = jax.random.normal(jax.random.fold_in(example_key,
                                                 losses.PURPOSE_REPARAMETERIZATION),
                              (LATENT_SAMPLES_PER_EXAMPLE, self.model.noise_dim))
      return self.model.apply({"params": params}, image, eps, label,
                              method=self.model.latent_layers)

    return jax.vmap(example)(dataset["image"][indices], dataset["label"][indices],
                             parallel.example_keys(rng, indices),
                             parallel.example_keys(binarization_key, indices))

  # The evaluators.

  def neg_elbo(self, params, dataset, rng, config, weights=None) -> dict[str, float]:
    """Mean ELBO terms over the split: neg_elbo_nats, reconstruction_nats, kl_nats and
    the training objective `loss` under `weights` (losses.loss_weights; default the
    config's), so runs with other KL weights share the program."""
    weights = losses.loss_weights(config) if weights is None else weights
    binarization_key = jax.random.key(config.eval.binarization_seed)
    num_examples = dataset["image"].shape[0]
    totals = None
    for indices, mask, _ in parallel.padded_batches(num_examples, config.eval.batch_size,
                                                    self.mesh):
      sums = self._elbo_batch(params, dataset, indices, mask, rng, binarization_key, weights)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return {name: float(value) / num_examples
            for name, value in jax.device_get(totals).items()}

  def nll(self, params, dataset, rng, config, num_samples: int) -> dict:
    """The importance-sampled NLL over the split from `num_samples` samples per example:
    `nll_nats` (the mean of -log p(x)), `nll_stderr` (its standard error over examples),
    `per_example_nll` (numpy) and how far to trust it (nll_diagnostics). Batches of
    config.eval.nll_batch_size examples, config.eval.importance_chunk_size samples at a
    time: speed and memory, not the estimate."""
    binarization_key = jax.random.key(config.eval.binarization_seed)
    chunk_size = min(config.eval.importance_chunk_size, num_samples)
    terms = jax.tree.map(lambda v: v.astype(np.float64), per_example_outputs(
        lambda indices: self._nll_batch(params, dataset, indices, rng, binarization_key,
                                        num_samples=num_samples, chunk_size=chunk_size),
        dataset["image"].shape[0], config.eval.nll_batch_size, self.mesh))
    per_example = -terms["log_likelihood"]
    return {"nll_nats": float(per_example.mean()),
            "nll_stderr": _stderr(per_example),
            "per_example_nll": per_example,
            **nll_diagnostics(num_samples, -terms["log_likelihood_at"], terms["ess"],
                              terms["max_weight"])}

  def latents(self, params, dataset, rng, config, num_examples: int | None = None) -> dict:
    """latent_diagnostics of the split's first `num_examples` examples (all by default);
    for a model whose posterior is not a diagonal Gaussian, only the reason there are
    none (`latent_diagnostics_omitted`)."""
    if not self.model.gaussian_posterior:
      return {"latent_diagnostics_omitted": "the posterior is not a diagonal Gaussian, whose "
                                            "mean and variance the diagnostics need"}
    binarization_key = jax.random.key(config.eval.binarization_seed)
    return latent_diagnostics(per_example_outputs(
        lambda indices: self._latent_batch(params, dataset, indices, rng, binarization_key),
        num_examples or dataset["image"].shape[0], config.eval.batch_size, self.mesh),
        self.model.mutual_information_omitted)


# The bounds on -log p(x) that are also reported in bits per dimension (name_bits_per_dim
# beside name_nats), the unit of natural-image likelihoods.
IN_BITS_PER_DIM = ("neg_elbo_nats", "nll_nats")


def with_bits_per_dim(numbers: dict, image_shape) -> dict:
  """`numbers` with X_bits_per_dim beside every X_nats of IN_BITS_PER_DIM (any prefix):
  nats / (H W C ln 2)."""
  result = dict(numbers)
  for name, value in numbers.items():
    if name.endswith(IN_BITS_PER_DIM) and isinstance(value, (int, float)):
      result[name[:-len("nats")] + "bits_per_dim"] = float(
          losses.bits_per_dim(value, image_shape))
  return result


def final_result(evaluators: Evaluators, params, dataset, rng, config, *,
                 num_importance_samples: int, history: list[dict] = (), split="test",
                 **provenance) -> dict:
  """What eval.json holds for a split: the −ELBO and its terms, the latent diagnostics
  and, when num_importance_samples > 0, the NLL with how far to trust it; the NLLs
  logged during training (`history`'s, as `nll_during_training`); and `provenance`
  (step, checkpoint, weights). `rng` is the run's eval key, so the −ELBO equals the one
  logged in training for the same parameters.
  """
  elbo = evaluators.neg_elbo(params, dataset, rng, config)
  result = {"split": split, **provenance, **elbo,
            "num_examples": int(dataset["image"].shape[0]),
            "num_importance_samples": num_importance_samples,
            **evaluators.latents(params, dataset, rng, config)}
  if num_importance_samples:
    start = time.time()
    nll = evaluators.nll(params, dataset, rng, config, num_importance_samples)
    result.update({key: value for key, value in nll.items() if key != "per_example_nll"},
                  nll_seconds=time.time() - start)  # Compilation included.
  during = [{"epoch": entry["epoch"], "step": entry["step"],
             "nll_nats": entry[f"{split}_nll_nats"], "nll_stderr": entry[f"{split}_nll_stderr"],
             "num_importance_samples": entry[f"{split}_nll_num_samples"]}
            for entry in history if f"{split}_nll_nats" in entry]
  if during:  # The NLLs of config.eval.nll_at_epochs, for curves.
    result["nll_during_training"] = during
  return with_bits_per_dim(result, evaluators.model.image_shape)


def format_latent_diagnostics(result: dict) -> str:
  layers = result["latent_layers"]
  units = ", ".join(f"z{layer['layer']} {layer['active_units']} of {layer['num_units']}"
                    for layer in layers) if len(layers) > 1 else (
                        f"{result['active_units']} of {result['num_units']}")
  text = f"active units (A_u > {ACTIVITY_THRESHOLD}): {units}; KL {result['latent_kl_nats']:.2f} nats"
  if "mutual_information_nats" in result:
    text += (f" = mutual information I(x; z) {result['mutual_information_nats']:.2f} + "
             f"marginal KL(q(z) || p(z)) {result['marginal_kl_nats']:.2f}")
  else:
    text += f" (no split into I(x; z) + marginal KL: {result['mutual_information_omitted']})"
  return text + f" ({result['latent_diagnostics_examples']} examples)"


def _in_bits(numbers: dict, name: str) -> str:
  value = numbers.get(f"{name}_bits_per_dim")
  return "" if value is None else f" ({value:.4f} bits/dim)"


def format_result(result: dict) -> str:
  """The printed (and logged) form of final_result's dict, with the NLL's warnings."""
  parts = [f"{result.get('split', 'test')} -ELBO {result['neg_elbo_nats']:.2f} nats"
           f"{_in_bits(result, 'neg_elbo')}"]
  if "nll_nats" in result:
    parts.append(f"NLL {result['nll_nats']:.2f} ± {result['nll_stderr']:.2f} nats"
                 f"{_in_bits(result, 'nll')} (k = {result['num_importance_samples']}, "
                 f"{result['num_examples']} examples, {result['nll_seconds']:.0f} s)")
  lines = ["; ".join(parts)]
  if "nll_by_num_samples" in result:
    lines.append("NLL from the first k samples: " + ", ".join(
        f"k = {entry['k']}: {entry['nll_nats']:.2f}" for entry in result["nll_by_num_samples"]))
    lines.append(f"effective sample size: mean {result['ess_mean']:.1f}, 5th percentile "
                 f"{result['ess_p5']:.1f}, {100 * result['ess_fraction_below_10']:.1f}% of "
                 f"examples below 10; largest normalized weight: mean "
                 f"{result['max_normalized_weight_mean']:.3f}, max "
                 f"{result['max_normalized_weight_max']:.3f}")
    lines += [f"WARNING: {warning}" for warning in nll_warnings(result)]
  if "latent_layers" in result:
    lines.append(format_latent_diagnostics(result))
  elif "latent_diagnostics_omitted" in result:
    lines.append(f"no latent diagnostics: {result['latent_diagnostics_omitted']}")
  return "\n".join(lines)
