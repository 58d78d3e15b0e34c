"""The VampPrior (Tomczak & Welling 2018): a learned prior, the mixture of the model's
own posterior at K learned pseudo-inputs u_k,

    p(z) = 1/K sum_k q(z | u_k),

on the one-layer VAE of any backbone. The pseudo-inputs are images (the data's shape),
initialized around a gray level and kept in the pixel range by a hard tanh, as in the
authors' code (`pseudoinputs_mean` 0.05, `pseudoinputs_std` 0.01 for MNIST). The KL to a
mixture has no closed form, so the losses estimate it from the samples; prior samples
pick a pseudo-input uniformly and sample its posterior.

Config (`config.model.vampprior`): num_pseudo_inputs (K, 500 in the paper),
pseudo_input_mean, pseudo_input_stddev.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import losses
from vae_jax.models import contract
from vae_jax.models.contract import Outputs
from vae_jax.models.vae import VAE, reparameterize


class VampPriorVAE(VAE):
  """VAE whose prior is the mixture of q(z|u_k) over K learned pseudo-inputs u_k."""
  num_pseudo_inputs: int = 500
  pseudo_input_mean: float = 0.05
  pseudo_input_stddev: float = 0.01

  standard_normal_prior = False
  inference_networks = ()  # The encoder is also the prior's.

  def setup(self):
    mean, stddev = self.pseudo_input_mean, self.pseudo_input_stddev
    self.raw_pseudo_inputs = self.param(
        "pseudo_inputs", lambda key, shape: mean + stddev * jax.random.normal(key, shape),
        (self.num_pseudo_inputs,) + tuple(self.image_shape))

  def pseudo_inputs(self) -> jax.Array:
    """The u_k, (K, *image_shape), in the pixel range [0, 1]."""
    return jnp.clip(self.raw_pseudo_inputs, 0.0, 1.0)  # The authors' hardtanh(0, 1).

  def _components(self):
    """(mean, logvar) of q(z|u_k) for the K pseudo-inputs, each (K, latent_dim). It does
    not depend on the example, so a batch vmapped over examples computes it once."""
    return self.encoder(self.pseudo_inputs(), None)

  def log_prior(self, z: jax.Array) -> jax.Array:
    """log p(z) = logmeanexp_k log q(z|u_k), over the last (latent) axis of z."""
    mean, logvar = self._components()
    return losses.logmeanexp(mixture_component_log_densities(z, mean, logvar), axis=-1)

  def prior_noise(self, rng: jax.Array, num: int) -> jax.Array:
    """(num, latent_dim + 1): a standard normal per latent unit, then a uniform in [0, 1)
    that picks the pseudo-input."""
    normal_key, uniform_key = jax.random.split(rng)
    return jnp.concatenate([jax.random.normal(normal_key, (num, self.latent_dim)),
                            jax.random.uniform(uniform_key, (num, 1))], axis=-1)

  def decode_prior_sample(self, noise: jax.Array, label=None,
                          train: bool = False) -> dict[str, jax.Array]:
    """z ~ q(z|u_k) for k = floor(K * uniform), decoded."""
    mean, logvar = self._components()
    index = jnp.minimum((noise[..., -1] * self.num_pseudo_inputs).astype(jnp.int32),
                        self.num_pseudo_inputs - 1)
    z = reparameterize(mean[index], logvar[index], noise[..., :-1])
    return self.decode(z, label, train=train)

  def __call__(self, image: jax.Array, eps: jax.Array, label=None,
               train: bool = False) -> Outputs:
    """As VAE's, with log p(z) the mixture's; no closed-form KL: one free-bits group, the
    whole latent, with the samples' mean of log q - log p."""
    mean, logvar = self.encode(image, label, train=train)
    z = reparameterize(mean, logvar, eps)
    log_prior = self.log_prior(z)
    log_posterior = losses.reparameterized_log_density(eps, logvar)
    return Outputs(z=z, decoded=self.decode(z, label, train=train), log_prior=log_prior,
                   log_posterior=log_posterior,
                   kl_groups=jnp.mean(log_posterior - log_prior).reshape(1),
                   kl_group_units=jnp.full((1,), self.latent_dim, jnp.float32))

  def latent_layers(self, image: jax.Array, eps: jax.Array, label=None) -> list[dict]:
    """VAE.latent_layers, but a mixture prior does not split the KL by dimension: `kl` is
    the S samples' mean of log q - log p, and there is no `kl_per_dim`."""
    mean, logvar = self.encode(image, label)
    z = reparameterize(mean, logvar, eps)
    kl = jnp.mean(losses.reparameterized_log_density(eps, logvar) - self.log_prior(z))
    return [{"posterior_mean": mean, "kl": kl, "mean": mean, "logvar": logvar, "z": z[0]}]


def mixture_component_log_densities(z: jax.Array, mean: jax.Array,
                                    logvar: jax.Array) -> jax.Array:
  """log N(z; mean_k, exp(logvar_k)) for every component k: z (..., D), mean and logvar
  (K, D) -> (..., K). losses.diagonal_gaussian_log_density on a (..., K, D) broadcast
  gives the same numbers, but reducing over the short minor axis D is slow on CPU, and at
  k = 5000 importance samples and K = 500 it dominated the test NLL. A scan over D adding
  (..., K) slices is as exact (tests/vampprior_test.py) and much faster; the matmul
  expansion z^2/v - 2zm/v + m^2/v would be faster still but loses about 0.1 nats to
  cancellation when trained posteriors are narrow."""
  dimensions = jnp.moveaxis(z, -1, 0), mean.T, jnp.exp(-logvar).T

  def term(z_d, mean_d, inverse_variance_d):
    return jnp.square(z_d[..., None] - mean_d) * inverse_variance_d

  def add_dimension(total, dimension):
    return total + term(*dimension), None

  # The first term starts the sum (not zeros), so that the carry is batched wherever z is
  # (under vmap or a sharded batch).
  squared_distance, _ = jax.lax.scan(add_dimension, term(*(d[0] for d in dimensions)),
                                     tuple(d[1:] for d in dimensions))
  return -0.5 * (squared_distance + jnp.sum(logvar, axis=-1)
                 + z.shape[-1] * jnp.log(2.0 * jnp.pi))


def build(model_config, parts: contract.Parts) -> VampPriorVAE:
  options = model_config.vampprior
  return VampPriorVAE(encoder=parts.encoder, decoder=parts.decoder, head=parts.head,
                      num_pseudo_inputs=options.num_pseudo_inputs,
                      pseudo_input_mean=options.pseudo_input_mean,
                      pseudo_input_stddev=options.pseudo_input_stddev,
                      image_shape=parts.image_shape)


REGISTRATION = contract.Registration(
    build=build,
    # Small models the conformance suite checks (tests/conformance_test.py).
    examples={"vampprior": {"model.vampprior.num_pseudo_inputs": 3}})
