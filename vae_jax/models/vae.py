"""The VAE wrapper shared by every backbone.

q(z|x[, y]) = N(mean, exp(logvar)) from the encoder; p(x|z[, y]) from the decoder followed
by a likelihood head. Conditioning is an option of the wrapper, so every backbone can be a
conditional VAE: the label's one-hot goes to the encoder (each backbone decides how) and is
concatenated to z at the decoder input.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import losses
from vae_jax.models import contract
from vae_jax.models.contract import Outputs


def reparameterize(mean: jax.Array, logvar: jax.Array, eps: jax.Array) -> jax.Array:
  """z = mean + std * eps, so gradients flow through mean and logvar, not the noise."""
  return mean + jnp.exp(0.5 * logvar) * eps


def label_condition(label, num_classes: int) -> jax.Array | None:
  """What a conditional model is fed: integer labels -> one-hot; a float array is taken
  as a (soft) one-hot already. None for an unconditional model (num_classes == 0)."""
  if not num_classes:
    return None
  if label is None:
    raise ValueError("This VAE is conditional: pass the label.")
  label = jnp.asarray(label)
  if jnp.issubdtype(label.dtype, jnp.integer):
    return jax.nn.one_hot(label, num_classes)
  return label


def join_condition(inputs: jax.Array, condition: jax.Array | None) -> jax.Array:
  """inputs [+ the condition, broadcast over inputs' extra leading (sample) axes]."""
  if condition is None:
    return inputs
  condition = jnp.broadcast_to(condition, inputs.shape[:-1] + condition.shape[-1:])
  return jnp.concatenate([inputs, condition.astype(inputs.dtype)], axis=-1)


class BernoulliHead(nn.Module):
  """Decoder outputs are the logits of independent Bernoulli pixels."""

  def outputs_per_pixel(self, channels: int) -> int:
    return channels

  def __call__(self, output: jax.Array) -> dict[str, jax.Array]:
    return {"logits": output}


class LogisticMixtureHead(nn.Module):
  """Decoder outputs -> a mixture of `components` discretized logistics per pixel, its
  channels coupled linearly as in PixelCNN++ (Salimans et al. 2017): channel c's mean is
  shifted by sum_{j<c} coeff_cj * x_j. Per pixel: the mixture's logits, then each channel's
  means and log-scales, then the C (C - 1) / 2 coefficients, each for every component.
  Means live in [-1, 1], the pixel range losses.logistic_mixture_log_likelihood uses."""
  components: int = 10
  channels: int = 1

  def outputs_per_pixel(self, channels: int) -> int:
    return self.components * (1 + 2 * channels + channels * (channels - 1) // 2)

  def __call__(self, output: jax.Array) -> dict[str, jax.Array]:
    m, c = self.components, self.channels
    pairs = c * (c - 1) // 2
    logits, means, log_scales, coeffs = jnp.split(
        output, [m, m + m * c, m + 2 * m * c], axis=-1)
    shape = output.shape[:-1]
    return {"logits": logits,
            "means": means.reshape(shape + (c, m)),
            # PixelCNN++'s floor: a scale below e^-7 is far narrower than a bin (2/255).
            "log_scales": jnp.maximum(log_scales.reshape(shape + (c, m)), -7.0),
            "coeffs": jnp.tanh(coeffs.reshape(shape + (pairs, m)))}


class GaussianHead(nn.Module):
  """Decoder outputs -> mean and log-variance of independent Gaussian pixels.

  Attributes:
    mean_activation: "linear" (seed 003) or "sigmoid" (seeds 001/002: a mean in [0, 1]).
    variance: "fixed" (`fixed_variance` for every pixel), "learned_global" (one learned
      variance) or "learned_per_pixel" (one learned variance per pixel).
    fixed_variance: sigma^2 when fixed; 0.5 turns the NLL into the summed squared error
      (+ a constant), 1.0 into half of it.
    min_variance: floor of a learned variance. Pixels that are always 0 would otherwise
      drive it to 0 and the density to infinity.
  """
  mean_activation: str = "linear"
  variance: str = "fixed"
  fixed_variance: float = 1.0
  min_variance: float = 1e-3

  def outputs_per_pixel(self, channels: int) -> int:
    return channels

  @nn.compact
  def __call__(self, output: jax.Array) -> dict[str, jax.Array]:
    mean = jax.nn.sigmoid(output) if self.mean_activation == "sigmoid" else output
    image_shape = output.shape[-3:]
    if self.variance == "fixed":
      return {"mean": mean, "logvar": jnp.full(image_shape, jnp.log(self.fixed_variance))}
    shape = image_shape if self.variance == "learned_per_pixel" else ()
    raw = self.param("raw_logvar", nn.initializers.zeros, shape)
    # variance = exp(raw) + min_variance, smooth in raw; starts at 1 + min_variance.
    logvar = jnp.logaddexp(raw, jnp.log(self.min_variance))
    return {"mean": mean, "logvar": jnp.broadcast_to(logvar, image_shape)}


class VAE(nn.Module, contract.PriorSampling):
  """Pure: the caller supplies the noise `eps`, drawn from its own explicit key.

  Attributes:
    encoder: module (image, condition, train) -> (mean, logvar) of the Gaussian posterior.
    decoder: module (latent, train) -> the head's raw outputs, (H, W, head.outputs_per_pixel).
    head: module mapping the decoder's output to the likelihood's parameters (a dict).
    num_classes: > 0 makes the model conditional on a label in [0, num_classes).
    image_shape: (H, W, C) of the images it models.
  """
  encoder: nn.Module
  decoder: nn.Module
  head: nn.Module
  num_classes: int = 0
  image_shape: tuple[int, ...] = ()

  @property
  def conditional(self) -> bool:
    return self.num_classes > 0

  @property
  def latent_dim(self) -> int:
    """Size of z, the prior's variable (what `decode` takes)."""
    return self.encoder.latent_dim

  @property
  def noise_dim(self) -> int:
    """Size of the standard-normal noise behind one posterior sample (`eps` below)."""
    return self.encoder.latent_dim

  # The contract's properties (vae_jax/models/contract.py). The prior N(0, I) does not
  # depend on the label, so the latent diagnostics can split the KL into I(x, y; z) +
  # KL(q(z) || p(z)) for conditional models too.
  gaussian_posterior = True
  standard_normal_prior = True
  mutual_information_omitted = None
  inference_networks = ("encoder",)

  def _condition(self, label) -> jax.Array | None:
    return label_condition(label, self.num_classes)

  def encode(self, image: jax.Array, label=None, train: bool = False):
    """(mean, logvar) of q(z|x[, y])."""
    return self.encoder(image, self._condition(label), train=train)

  def decode(self, z: jax.Array, label=None, train: bool = False) -> dict[str, jax.Array]:
    """The likelihood's parameters for p(x|z[, y]); z may have extra leading (sample) axes."""
    z = join_condition(z, self._condition(label))
    return self.head(self.decoder(z, train=train))

  def posterior_mean(self, image: jax.Array, label=None) -> jax.Array:
    """E_q[z|x[, y]], the figures' point of the posterior."""
    return self.encode(image, label)[0]

  def decode_prior_sample(self, noise: jax.Array, label=None,
                          train: bool = False) -> dict[str, jax.Array]:
    """`decode` of a prior sample: noise (..., noise_dim) ~ N(0, I) is z itself."""
    return self.decode(noise, label, train=train)

  def __call__(self, image: jax.Array, eps: jax.Array, label=None,
               train: bool = False) -> Outputs:
    """One example's samples z = mean + std * eps; eps (k, noise_dim) or (noise_dim,).

    The Outputs' `kl` is the analytic KL(q(z|x) || p(z)) (the losses prefer it to a
    sampled estimate), its `kl_groups` the KL of each latent dimension (free bits).
    """
    mean, logvar = self.encode(image, label, train=train)
    z = reparameterize(mean, logvar, eps)
    return Outputs(
        z=z,
        decoded=self.decode(z, label, train=train),
        log_prior=losses.standard_normal_log_density(z),
        log_posterior=losses.reparameterized_log_density(eps, logvar),
        kl=losses.gaussian_kl(mean, logvar),
        kl_groups=losses.gaussian_kl_per_dim(mean, logvar),
        kl_group_units=jnp.ones(mean.shape[-1:], jnp.float32))

  def latent_layers(self, image: jax.Array, eps: jax.Array, label=None) -> list[dict]:
    """What each stochastic layer does for ONE example, for the latent diagnostics
    (evaluators.Evaluators.latents); eps (S, noise_dim) as in `__call__`.

    One dict per layer, nearest x first: `posterior_mean` E_q[z|x], `kl_per_dim` the
    layer's share of KL(q(z|x) || p(z)) per dimension (they sum to the KL); the first also
    has `mean` and `logvar` of its Gaussian q(z1|x) and one sample `z` (from eps[0]),
    which determine the mutual information I(x; z) under q.
    """
    mean, logvar = self.encode(image, label)
    return [{"posterior_mean": mean, "kl_per_dim": losses.gaussian_kl_per_dim(mean, logvar),
             "mean": mean, "logvar": logvar, "z": reparameterize(mean, logvar, eps[0])}]
