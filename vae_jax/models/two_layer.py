"""Burda et al. 2015's VAE with two stochastic layers, z1 (near x) and z2 (the top).

Generative: p(z2) = N(0, I), p(z1|z2) and p(x|z1). Inference: q(z1|x) and q(z2|z1). All
conditionals are diagonal Gaussians from MLPs except p(x|z1), the likelihood head's. The
paper's sizes: 200-200 hidden units between x and z1 (100 units), 100-100 between z1 and
z2 (50 units). A conditional model feeds the label's one-hot to every network.

It satisfies the model contract (vae_jax/models/contract.py) as `VAE` does, so losses,
evaluators and figures take either: `__call__` gives the log densities of joint samples
(z1, z2); `posterior_mean` and `decode` work on the top latent z2 and pass z1 at its
conditional mean, so manifolds and interpolations are drawn in the space of
p(z2) = N(0, I); prior samples are ancestral (`decode_prior_sample`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import losses
from vae_jax.models import contract
from vae_jax.models.contract import Outputs
from vae_jax.models.vae import join_condition, label_condition, reparameterize


class TwoLayerVAE(nn.Module, contract.PriorSampling):
  """Attributes:
    bottom_encoder: (image, condition, train) -> (mean, logvar) of q(z1|x).
    top_encoder: (z1, condition, train) -> (mean, logvar) of q(z2|z1).
    top_decoder: (z2, condition, train) -> (mean, logvar) of p(z1|z2).
    decoder: (z1 [+ condition], train) -> one raw output per pixel, then `head`.
    num_classes: > 0 makes the model conditional on a label in [0, num_classes).
    image_shape: (H, W, C) of the images it models.
  """
  bottom_encoder: nn.Module
  top_encoder: nn.Module
  top_decoder: nn.Module
  decoder: nn.Module
  head: nn.Module
  num_classes: int = 0
  image_shape: tuple[int, ...] = ()

  @property
  def conditional(self) -> bool:
    return self.num_classes > 0

  @property
  def latent_dim(self) -> int:
    """Size of z2, the prior's variable (what `decode` takes)."""
    return self.top_encoder.latent_dim

  @property
  def noise_dim(self) -> int:
    """One joint posterior sample (z1, z2) takes noise for both: dim z1 + dim z2."""
    return self.bottom_encoder.latent_dim + self.top_encoder.latent_dim

  # The contract's properties (vae_jax/models/contract.py): `decode` takes z2, whose
  # prior is N(0, I); each layer's posterior is a diagonal Gaussian.
  gaussian_posterior = True
  standard_normal_prior = True
  inference_networks = ("bottom_encoder", "top_encoder")

  @property
  def mutual_information_omitted(self) -> str | None:
    """Why the latent diagnostics cannot split the KL into I(x; z) + marginal KL, or None.

    Unconditional, z2 depends on x only through z1, so I(x; z1, z2) = I(x; z1). With a
    label, q(z2|z1, y) and p(z1|z2, y) depend on it too: neither that identity nor
    KL = I + KL(q(z) || p(z)) (p would have to be one prior for all labels) holds."""
    if self.conditional:
      return ("a conditional two-layer model's top encoder and prior depend on the label, "
              "so the KL is not I(x, y; z) plus one marginal KL")
    return None

  def _condition(self, label):
    return label_condition(label, self.num_classes)

  def _decode_z1(self, z1, condition, train):
    return self.head(self.decoder(join_condition(z1, condition), train=train))

  def encode(self, image: jax.Array, label=None, train: bool = False):
    """(mean, logvar) of q(z2 | z1 = E_q[z1|x]) (a deterministic summary, for figures)."""
    condition = self._condition(label)
    z1_mean, _ = self.bottom_encoder(image, condition, train=train)
    return self.top_encoder(z1_mean, condition, train=train)

  def decode(self, z2: jax.Array, label=None, train: bool = False) -> dict[str, jax.Array]:
    """The likelihood's parameters of p(x | z1 = E_p[z1|z2]); z2 may have sample axes."""
    condition = self._condition(label)
    z1_mean, _ = self.top_decoder(z2, condition, train=train)
    return self._decode_z1(z1_mean, condition, train)

  def posterior_mean(self, image: jax.Array, label=None) -> jax.Array:
    """The mean of q(z2 | z1 = E_q[z1|x]): the figures' point, in decode's space."""
    return self.encode(image, label)[0]

  def decode_prior_sample(self, noise: jax.Array, label=None,
                          train: bool = False) -> dict[str, jax.Array]:
    """p(x|z1)'s parameters for an ancestral sample z2 ~ p(z2), z1 ~ p(z1|z2) from noise
    (..., noise_dim) ~ N(0, I): its z1 part draws z1, its z2 part is z2. Unlike `decode`,
    z1 keeps p(z1|z2)'s spread, so samples vary even where z2 is ignored (collapsed)."""
    condition = self._condition(label)
    z1_dim = self.bottom_encoder.latent_dim
    z1_mean, z1_logvar = self.top_decoder(noise[..., z1_dim:], condition, train=train)
    z1 = reparameterize(z1_mean, z1_logvar, noise[..., :z1_dim])
    return self._decode_z1(z1, condition, train)

  def __call__(self, image: jax.Array, eps: jax.Array, label=None,
               train: bool = False) -> Outputs:
    """One example's joint samples (z1, z2) ~ q(z1|x) q(z2|z1); eps (k, noise_dim).

    The Outputs' log_prior is log p(z1, z2) = log p(z2) + log p(z1|z2), its kl None
    (p(z1|z2) makes it intractable, so the losses estimate it from the samples), and its
    kl_groups the sampled KL of z1 and of z2 (free bits per layer).
    """
    condition = self._condition(label)
    z1_dim = self.bottom_encoder.latent_dim
    eps1, eps2 = eps[..., :z1_dim], eps[..., z1_dim:]
    z1_mean, z1_logvar = self.bottom_encoder(image, condition, train=train)
    z1 = reparameterize(z1_mean, z1_logvar, eps1)
    z2_mean, z2_logvar = self.top_encoder(z1, condition, train=train)
    z2 = reparameterize(z2_mean, z2_logvar, eps2)
    prior_z1_mean, prior_z1_logvar = self.top_decoder(z2, condition, train=train)
    log_prior = (losses.diagonal_gaussian_log_density(z1, prior_z1_mean, prior_z1_logvar),
                 losses.standard_normal_log_density(z2))
    log_posterior = (losses.reparameterized_log_density(eps1, z1_logvar),
                     losses.reparameterized_log_density(eps2, z2_logvar))
    return Outputs(
        z=jnp.concatenate([z1, z2], axis=-1),
        decoded=self._decode_z1(z1, condition, train),
        log_prior=log_prior[1] + log_prior[0],
        log_posterior=log_posterior[0] + log_posterior[1],
        # Each layer's share of log q - log p, z1's then z2's, over the samples.
        kl_groups=jnp.mean(jnp.stack([log_posterior[0] - log_prior[0],
                                      log_posterior[1] - log_prior[1]], axis=-1), axis=0),
        kl_group_units=jnp.asarray([z1_dim, self.top_encoder.latent_dim], jnp.float32))

  def latent_layers(self, image: jax.Array, eps: jax.Array, label=None) -> list[dict]:
    """VAE.latent_layers for z1 and z2, from S joint samples (eps (S, noise_dim)).

    z1: E_q[z1|x] is q(z1|x)'s mean; its KL share per dimension, E_q[log q(z1_u|x) -
    log p(z1_u|z2)], is the samples' mean (p(z1|z2) makes it intractable). z2: E_q[z2|x]
    and its share E_q(z1|x)[KL(q(z2|z1) || p(z2))] per dimension are the means over the
    S samples of z1 of the closed forms, with `posterior_mean_variance`, the variance of
    that mean over the S samples (their sample variance / S), which the diagnostics
    subtract from z2's activity. The shares sum to an unbiased estimate of the total
    KL(q(z1, z2|x) || p(z1, z2)). z2 depends on x only through z1, so I(x; z1, z2) =
    I(x; z1): q(z1|x) alone gives the mutual information (unconditional models only:
    `mutual_information_omitted`).
    """
    condition = self._condition(label)
    z1_dim = self.bottom_encoder.latent_dim
    eps1, eps2 = eps[..., :z1_dim], eps[..., z1_dim:]
    z1_mean, z1_logvar = self.bottom_encoder(image, condition)
    z1 = reparameterize(z1_mean, z1_logvar, eps1)
    z2_mean, z2_logvar = self.top_encoder(z1, condition)
    z2 = reparameterize(z2_mean, z2_logvar, eps2)
    prior_z1_mean, prior_z1_logvar = self.top_decoder(z2, condition)
    z1_kl = (losses.diagonal_gaussian_log_density_per_dim(z1, z1_mean, z1_logvar)
             - losses.diagonal_gaussian_log_density_per_dim(z1, prior_z1_mean,
                                                            prior_z1_logvar))
    return [
        {"posterior_mean": z1_mean, "kl_per_dim": z1_kl.mean(axis=0), "mean": z1_mean,
         "logvar": z1_logvar, "z": z1[0]},
        {"posterior_mean": z2_mean.mean(axis=0),
         "posterior_mean_variance": z2_mean.var(axis=0, ddof=1) / z2_mean.shape[0],
         "kl_per_dim": losses.gaussian_kl_per_dim(z2_mean, z2_logvar).mean(axis=0)},
    ]
