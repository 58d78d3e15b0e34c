"""Pure loss functions, in nats per example.

Array-level densities first, then `elbo_terms`, which wires a VAE module to them for one
example (callers vmap it over a batch, one explicit key per example).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import input_pipeline


def _flat(image_like: jax.Array) -> jax.Array:
  """(..., H, W, C) -> (..., H*W*C). Per-pixel math on the flat shape: with a minor axis
  of size 1, XLA on CPU ran it (and the sum) 10x slower, which dominated the NLL's cost."""
  return image_like.reshape(image_like.shape[:-3] + (-1,))


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)), summed over the last (latent) axis."""
  return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)


def gaussian_kl_per_dim(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """gaussian_kl's terms, one per latent dimension (they sum to it)."""
  return 0.5 * (jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar)


def free_bits_kl(kl_per_group: jax.Array, free_bits) -> jax.Array:
  """sum_g max(KL_g, free_bits_g): a group (a latent dimension, or a stochastic layer with
  free_bits times its units) below its free bits costs that constant, with no gradient
  pushing it lower (Kingma et al. 2016, per example here, so the loss does not depend on
  how the batch is split over devices)."""
  return jnp.sum(jnp.maximum(kl_per_group, free_bits), axis=-1)


def bernoulli_log_likelihood(image: jax.Array, logits: jax.Array) -> jax.Array:
  """log p(x|z) for pixels in [0, 1] under Bernoulli(sigmoid(logits)), summed per image.

  x * l - softplus(l), with softplus(l) = max(l, 0) + log1p(exp(-|l|)): finite for
  saturated logits (unlike the seeds' log(sigmoid + 1e-10)), and one exp and one log1p
  per pixel, which on CPU measured 11x faster than optax.sigmoid_binary_cross_entropy.
  Grayscale targets give the usual cross-entropy.
  """
  image, logits = _flat(image), _flat(logits)
  return jnp.sum(image * logits - _softplus(logits), axis=-1)


@jax.custom_jvp
def _softplus(x: jax.Array) -> jax.Array:
  return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


# The exact derivative, sigmoid(x); autodiff through the kinks of max and |x| would give
# 0 instead of 0.5 at x = 0 (where a zero-initialized decoder's logits sit).
_softplus.defjvps(lambda tangent, _, x: tangent * jax.nn.sigmoid(x))


def logmeanexp(values: jax.Array, axis: int = -1) -> jax.Array:
  """log(mean(exp(values))) along `axis`, stable for values near -1e4 and for one value."""
  return jax.nn.logsumexp(values, axis=axis) - jnp.log(values.shape[axis])


def standard_normal_log_density(z: jax.Array) -> jax.Array:
  """log N(z; 0, I), summed over the last (latent) axis."""
  return -0.5 * jnp.sum(jnp.square(z) + jnp.log(2.0 * jnp.pi), axis=-1)


def diagonal_gaussian_log_density(z: jax.Array, mean: jax.Array,
                                  logvar: jax.Array) -> jax.Array:
  """log N(z; mean, exp(logvar)), summed over the last (latent) axis."""
  return -0.5 * jnp.sum(jnp.square(z - mean) * jnp.exp(-logvar) + logvar
                        + jnp.log(2.0 * jnp.pi), axis=-1)


def diagonal_gaussian_log_density_per_dim(z: jax.Array, mean: jax.Array,
                                          logvar: jax.Array) -> jax.Array:
  """diagonal_gaussian_log_density's terms, one per latent dimension."""
  return -0.5 * (jnp.square(z - mean) * jnp.exp(-logvar) + logvar + jnp.log(2.0 * jnp.pi))


def reparameterized_log_density(eps: jax.Array, logvar: jax.Array) -> jax.Array:
  """log N(z; mean, exp(logvar)) at z = mean + std * eps: (z - mean)^2 / var is eps^2."""
  return -0.5 * jnp.sum(jnp.square(eps) + logvar + jnp.log(2.0 * jnp.pi), axis=-1)


def gaussian_log_likelihood(image: jax.Array, mean: jax.Array,
                            logvar: jax.Array) -> jax.Array:
  """log N(image; mean, exp(logvar)), pixels independent, summed per image, constant included.

  With unit variance this is -0.5 * squared error - (D/2) log(2 pi): a proper log-density
  in nats, not the seeds' bare squared error.
  """
  image, mean, logvar = _flat(image), _flat(mean), _flat(logvar)
  per_pixel = -0.5 * (jnp.square(image - mean) * jnp.exp(-logvar) + logvar
                      + jnp.log(2.0 * jnp.pi))
  return jnp.sum(per_pixel, axis=-1)


# 8-bit pixels k in 0..255 sit at x = 2 k / 255 - 1 in [-1, 1], each in a bin of this half
# width (PixelCNN++'s and vdvae's convention); the end bins reach out to -inf and +inf.
_HALF_BIN = 1.0 / 255.0


def _coupled_means(x: jax.Array, means: jax.Array, coeffs: jax.Array) -> jax.Array:
  """Each channel's mean shifted by sum_{j<c} coeff_cj * x_j (PixelCNN++): x (..., C, 1)
  broadcasts over the components of means (..., C, M); coeffs (..., C(C-1)/2, M) in the
  order (1, 0), (2, 0), (2, 1), ..."""
  channels = means.shape[-2]
  shifted, pair = [means[..., 0, :]], 0
  for c in range(1, channels):
    mean = means[..., c, :]
    for j in range(c):
      mean = mean + coeffs[..., pair, :] * x[..., j, :]
      pair += 1
    shifted.append(mean)
  return jnp.stack(shifted, axis=-2)


def discretized_logistic_log_prob(x: jax.Array, mean: jax.Array,
                                  log_scale: jax.Array) -> jax.Array:
  """log P(bin of x) under a logistic(mean, e^log_scale) discretized to the 256 bins of
  [-1, 1]: log(sigmoid(b+) - sigmoid(b-)) with b+- = (x +- 1/255 - mean) / scale, the
  first bin open to -inf and the last to +inf. Elementwise.

  sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - e^(b - a)) is computed in logs, so
  a bin far in either tail keeps its (tiny) mass instead of PixelCNN++'s density fallback.
  """
  inv_scale = jnp.exp(-log_scale)
  plus = inv_scale * (x - mean + _HALF_BIN)
  minus = inv_scale * (x - mean - _HALF_BIN)
  log_cdf_plus = jax.nn.log_sigmoid(plus)  # log P(X <= upper edge)
  log_survival_minus = jax.nn.log_sigmoid(-minus)  # log P(X > lower edge)
  log_bin = (log_cdf_plus + log_survival_minus
             + jnp.log(-jnp.expm1(-2.0 * _HALF_BIN * inv_scale)))
  return jnp.where(x < -1.0 + _HALF_BIN, log_cdf_plus,
                   jnp.where(x > 1.0 - _HALF_BIN, log_survival_minus, log_bin))


def logistic_mixture_log_likelihood(image: jax.Array, decoded: dict) -> jax.Array:
  """log p(x|z) of 8-bit pixels (image = k / 255 in [0, 1]) under each pixel's mixture of
  discretized logistics (models/vae.py's LogisticMixtureHead), summed per image."""
  x = (2.0 * image - 1.0)[..., None]  # (..., H, W, C, 1): broadcasts over components.
  means = _coupled_means(x, decoded["means"], decoded["coeffs"])
  per_channel = discretized_logistic_log_prob(x, means, decoded["log_scales"])
  per_component = jnp.sum(per_channel, axis=-2) + jax.nn.log_softmax(decoded["logits"])
  per_pixel = jax.nn.logsumexp(per_component, axis=-1)
  return jnp.sum(per_pixel.reshape(per_pixel.shape[:-2] + (-1,)), axis=-1)


def logistic_mixture_mean(decoded: dict) -> jax.Array:
  """E[x|z] in [0, 1] of the mixture: each component's coupled means (linear in x, so
  exact for the logistic's mean; the bins' clipping at the ends is ignored), weighted."""
  means = decoded["means"]
  # Channel c's mean given the earlier channels' expectations; the coupling is strictly
  # lower triangular, so C - 1 substitutions make every channel's exact.
  expected = means
  for _ in range(means.shape[-2] - 1):
    expected = _coupled_means(expected, means, decoded["coeffs"])
  weights = jax.nn.softmax(decoded["logits"])[..., None, :]
  x = jnp.sum(expected * weights, axis=-1)
  return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


def log_likelihood(likelihood: str, image: jax.Array, decoded: dict) -> jax.Array:
  """log p(x|z) per image, from the likelihood parameters the model's head returns."""
  if likelihood == "bernoulli":
    return bernoulli_log_likelihood(image, decoded["logits"])
  if likelihood == "gaussian":
    return gaussian_log_likelihood(image, decoded["mean"], decoded["logvar"])
  if likelihood == "logistic_mixture":
    return logistic_mixture_log_likelihood(image, decoded)
  raise ValueError(f"Unknown likelihood {likelihood!r}.")


def bits_per_dim(nats: jax.Array, image_shape) -> jax.Array:
  """nats per image -> bits per dimension, nats / (H W C ln 2): the unit of natural-image
  likelihoods (per sub-pixel)."""
  return nats / (math.prod(image_shape) * math.log(2.0))


# The objectives (config.loss.objective): 'elbo' (with kl_weight, warm-up and free bits),
# and the bounds on log p(x) from the log importance weights log w of the samples:
# 'iwae' (Burda et al. 2015), and Rainforth et al. 2018's 'miwae' (the mean of M IWAE
# bounds of K samples each), 'ciwae' (beta * ELBO + (1 - beta) * IWAE) and 'piwae' (the
# inference networks trained on MIWAE, the generative ones on IWAE with all M * K samples).
OBJECTIVES = ("elbo", "iwae", "miwae", "ciwae", "piwae")


def samples_per_example(num_samples: int, objective: str, num_bounds: int) -> int:
  """How many posterior samples an example draws: M * K for 'miwae' and 'piwae'."""
  return num_samples * num_bounds if objective in ("miwae", "piwae") else num_samples


def _neg_bound(objective: str, log_weights: jax.Array, num_bounds: int,
               ciwae_beta) -> jax.Array:
  """The negative bound of `objective` from the samples' log weights (M * K,)."""
  if objective == "miwae" or objective == "piwae":
    return -jnp.mean(logmeanexp(log_weights.reshape(num_bounds, -1), axis=-1))
  if objective == "ciwae":
    return -(ciwae_beta * jnp.mean(log_weights)
             + (1.0 - ciwae_beta) * logmeanexp(log_weights))
  return -logmeanexp(log_weights)


def elbo_terms(model: nn.Module, variables, image: jax.Array, label, rng: jax.Array, *,
               likelihood: str, num_samples: int = 1, kl_weight=1.0, free_bits=0.0,
               objective: str = "elbo", kl_estimator: str = "closed_form",
               num_bounds: int = 1, ciwae_beta=0.5, train: bool = False,
               dropout_rng: jax.Array | None = None) -> dict[str, jax.Array]:
  """The training terms for ONE example from `num_samples` reparameterized samples.

  `label` is the example's class for a conditional model (ignored otherwise); `rng` draws
  the reparameterization noise; `dropout_rng` is needed when training a model with dropout.
  Returns scalars: `reconstruction_nats` (-E_q log p(x|z), averaged over the samples),
  `kl_nats` (with kl_estimator 'closed_form', the analytic KL when the model gives one;
  else, and with 'monte_carlo', the samples' mean of log q - log p), `neg_elbo_nats`
  (their sum, the bound) and `loss`, what is minimized: reconstruction + kl_weight * kl
  for objective 'elbo' (with free_bits > 0, kl is free_bits_kl of the analytic KL's
  dimensions, or of the sampled KL of each stochastic layer of a two-layer model with
  free_bits times its units); for 'iwae' the negative IWAE bound -logmeanexp_j log w_j
  over the samples, also returned as `neg_iwae_bound_nats`; for 'miwae', 'ciwae' and
  'piwae' (OBJECTIVES) their negative bound, with num_bounds (M) bounds of num_samples
  (K) samples each for 'miwae' and 'piwae'. kl_weight, free_bits and ciwae_beta may be
  traced (a vmapped sweep gives each model its own).
  """
  total = samples_per_example(num_samples, objective, num_bounds)
  eps = jax.random.normal(rng, (total, model.noise_dim), image.dtype)
  return elbo_terms_from_noise(model, variables, image, label, eps, likelihood=likelihood,
                               kl_weight=kl_weight, free_bits=free_bits, objective=objective,
                               kl_estimator=kl_estimator, num_bounds=num_bounds,
                               ciwae_beta=ciwae_beta, train=train, dropout_rng=dropout_rng)


def elbo_terms_from_noise(model: nn.Module, variables, image: jax.Array, label,
                          eps: jax.Array, *, likelihood: str, kl_weight=1.0, free_bits=0.0,
                          objective: str = "elbo", kl_estimator: str = "closed_form",
                          num_bounds: int = 1, ciwae_beta=0.5, train: bool = False,
                          dropout_rng: jax.Array | None = None) -> dict[str, jax.Array]:
  """elbo_terms with the reparameterization noise given: eps (samples, noise_dim)."""
  rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
  generative_variables = variables
  if objective == "piwae":
    # The generative networks' gradient from this pass (the inference networks held
    # fixed), the inference networks' from a second one below.
    generative_variables = {**variables, "params": _only_trained(
        model, variables["params"], inference=False)}
  outputs = model.apply(generative_variables, image, eps, label, train=train, rngs=rngs)
  log_px_z = log_likelihood(likelihood, image, outputs.decoded)
  reconstruction = -jnp.mean(log_px_z)
  if outputs.kl is not None and kl_estimator == "closed_form":
    kl = outputs.kl
  else:
    kl = jnp.mean(outputs.log_posterior - outputs.log_prior)
  kl_penalty = kl
  # Statically skipped when off, so runs without free bits keep their bits.
  if not (isinstance(free_bits, (int, float)) and free_bits == 0):
    grouped = free_bits_kl(outputs.kl_groups, free_bits * outputs.kl_group_units)
    kl_penalty = jnp.where(free_bits > 0, grouped, kl)
  terms = {
      "loss": reconstruction + kl_weight * kl_penalty,
      "neg_elbo_nats": reconstruction + kl,
      "reconstruction_nats": reconstruction,
      "kl_nats": kl,
  }
  if objective != "elbo":
    log_weights = log_px_z + outputs.log_prior - outputs.log_posterior
    terms["neg_iwae_bound_nats"] = -logmeanexp(log_weights)
    terms["loss"] = _neg_bound(objective, log_weights, num_bounds, ciwae_beta)
  if objective == "piwae":
    # Its value is the IWAE bound of all M * K samples; its gradient reaches the
    # generative networks from that bound and the inference networks from MIWAE's.
    inference_log_weights = log_importance_weights(
        model, {**variables, "params": _only_trained(model, variables["params"],
                                                     inference=True)},
        image, label, eps, likelihood=likelihood, train=train, rngs=rngs)
    miwae = _neg_bound("miwae", inference_log_weights, num_bounds, ciwae_beta)
    terms["loss"] = terms["neg_iwae_bound_nats"] + miwae - jax.lax.stop_gradient(miwae)
  return terms


def _only_trained(model: nn.Module, params: dict, *, inference: bool) -> dict:
  """params with the gradient stopped at the generative networks (inference=True) or at
  the inference networks (inference=False): the model's `inference_networks` name them."""
  names = model.inference_networks
  return {name: value if (name in names) == inference else jax.lax.stop_gradient(value)
          for name, value in params.items()}


def log_importance_weights(model: nn.Module, variables, image: jax.Array, label,
                           eps: jax.Array, *, likelihood: str, train: bool = False,
                           rngs: dict | None = None) -> jax.Array:
  """log w_j = log p(x|z_j) + log p(z_j) - log q(z_j|x) for ONE example, shape (k,).

  z_j is the model's reparameterized sample from eps_j, eps (k, model.noise_dim).
  logmeanexp over j is the IWAE bound (Burda et al. 2015) and, for large k, an estimate
  of log p(x); its mean is the ELBO.
  """
  outputs = model.apply(variables, image, eps, label, train=train, rngs=rngs or {})
  return (log_likelihood(likelihood, image, outputs.decoded) + outputs.log_prior
          - outputs.log_posterior)


def mean_image(likelihood: str, decoded: dict) -> jax.Array:
  """E[x|z], clipped to the pixel range [0, 1], for figures."""
  if likelihood == "bernoulli":
    return jax.nn.sigmoid(decoded["logits"])
  if likelihood == "gaussian":
    return jnp.clip(decoded["mean"], 0.0, 1.0)
  if likelihood == "logistic_mixture":
    return logistic_mixture_mean(decoded)
  raise ValueError(f"Unknown likelihood {likelihood!r}.")


# Each example's key is split by purpose with fold_in, so adding a purpose later leaves the
# random numbers of the others unchanged.
PURPOSE_REPARAMETERIZATION = 0
PURPOSE_BINARIZATION = 1
PURPOSE_DROPOUT = 2


def loss_weights(config) -> dict[str, float]:
  """The loss's numeric knobs as the config gives them (before KL warm-up)."""
  return {"kl_weight": float(config.loss.kl_weight), "free_bits": float(config.loss.free_bits)}


def make_example_terms_fn(model: nn.Module, config, *, train: bool):
  """fn(params, image_uint8, label, example_key, weights) -> elbo_terms for one example.

  The config is read here, once; the returned function is pure and meant to be vmapped
  over a batch with one key per example (derived from the example's global index, so the
  result does not depend on how the batch is split over devices). Dropout is on only
  when `train`; evaluation is deterministic given the key. `weights` are the run's
  {"kl_weight", "free_bits"} (loss_weights; possibly traced, e.g. during KL warm-up).
  `binarization_key` replaces the example key's binarization purpose (evaluators pass
  one that does not depend on the run: evaluators.binarization_keys).
  """
  likelihood = config.model.likelihood
  binarization = config.data.binarization
  num_samples = config.loss.num_samples
  objective = config.loss.objective
  kl_estimator = config.loss.kl_estimator
  num_bounds, ciwae_beta = config.loss.num_bounds, config.loss.ciwae_beta

  def example_terms(params, image_uint8, label, example_key, weights, binarization_key=None):
    if binarization_key is None:
      binarization_key = jax.random.fold_in(example_key, PURPOSE_BINARIZATION)
    image = input_pipeline.to_model_input(image_uint8, binarization, binarization_key)
    dropout_rng = jax.random.fold_in(example_key, PURPOSE_DROPOUT) if train else None
    return elbo_terms(model, {"params": params}, image, label,
                      jax.random.fold_in(example_key, PURPOSE_REPARAMETERIZATION),
                      likelihood=likelihood, num_samples=num_samples,
                      kl_weight=weights["kl_weight"], free_bits=weights["free_bits"],
                      objective=objective, kl_estimator=kl_estimator,
                      num_bounds=num_bounds, ciwae_beta=ciwae_beta, train=train,
                      dropout_rng=dropout_rng)

  return example_terms
