"""Inverse autoregressive flow posterior (Kingma et al. 2016) on the one-layer VAE.

q(z|x): the encoder's diagonal Gaussian z0 = mean + std * eps, then T steps

    (m_t, s_t) = MADE_t(z_{t-1}),  sigma_t = sigmoid(s_t),
    z_t = sigma_t * z_{t-1} + (1 - sigma_t) * m_t,

each autoregressive in the unit order (unit i's m, s depend on units < i only), the order
reversed between steps. Each step's Jacobian is triangular with diagonal sigma_t, so

    log q(z_T|x) = log N(eps; 0, I) - sum log std - sum_t sum log sigma_t.

The prior stays N(0, I); the KL has no closed form (the losses estimate it from the
samples), and the posterior is not a diagonal Gaussian (no latent diagnostics). The MADE
takes z only, not a context from the encoder (the paper's h), so each step's transform
is the same for every x: the flexibility comes from where x puts z0.

Config (`config.model.iaf`): steps (T), hidden_dim (the MADE's width), gate_bias (the
initial bias of s_t: sigma_t starts near sigmoid(gate_bias), close to the identity).
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import losses
from vae_jax.models import contract
from vae_jax.models.contract import Outputs
from vae_jax.models.vae import VAE, reparameterize


def made_masks(num_units: int, hidden_dim: int) -> tuple[np.ndarray, np.ndarray]:
  """The MADE masks (Germain et al. 2015) for inputs in their order 1..D: (D, H) into the
  hidden layer and (H, D) out of it, so output i depends on inputs < i only (output 1 on
  none: its m, s are biases)."""
  input_degrees = np.arange(1, num_units + 1)
  hidden_degrees = np.arange(hidden_dim) % max(num_units - 1, 1) + 1
  into_hidden = (hidden_degrees[None, :] >= input_degrees[:, None]).astype(np.float32)
  out_of_hidden = (input_degrees[None, :] > hidden_degrees[:, None]).astype(np.float32)
  return into_hidden, out_of_hidden


class MADE(nn.Module):
  """z (..., D) -> (m, s), each (..., D), autoregressive in the unit order."""
  hidden_dim: int
  activation: Callable[[jax.Array], jax.Array]
  kernel_init: nn.initializers.Initializer
  gate_bias: float

  @nn.compact
  def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    num_units = z.shape[-1]
    into_hidden, out_of_hidden = made_masks(num_units, self.hidden_dim)
    kernel = self.param("hidden_kernel", self.kernel_init, (num_units, self.hidden_dim))
    hidden = self.activation(z @ (kernel * into_hidden)
                             + self.param("hidden_bias", nn.initializers.zeros,
                                          (self.hidden_dim,)))
    out_kernel = self.param("output_kernel", self.kernel_init,
                            (self.hidden_dim, 2 * num_units))
    out_bias = self.param("output_bias", lambda key, shape: jnp.concatenate(
        [jnp.zeros(shape[0] // 2), jnp.full(shape[0] // 2, self.gate_bias)]),
                          (2 * num_units,))
    outputs = hidden @ (out_kernel * jnp.tile(out_of_hidden, (1, 2))) + out_bias
    return outputs[..., :num_units], outputs[..., num_units:]


class IAFVAE(VAE):
  """VAE whose posterior is the encoder's Gaussian followed by `steps` IAF steps."""
  steps: int = 2
  hidden_dim: int = 256
  gate_bias: float = 1.0
  made_activation: Callable[[jax.Array], jax.Array] = nn.elu
  made_kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  gaussian_posterior = False

  def setup(self):
    self.flow = [MADE(self.hidden_dim, self.made_activation, self.made_kernel_init,
                      self.gate_bias) for _ in range(self.steps)]  # flow_0, flow_1, ...

  @property
  def inference_networks(self) -> tuple[str, ...]:
    return ("encoder",) + tuple(f"flow_{step}" for step in range(self.steps))

  def _flow(self, z0: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(z_T, sum_t sum_i log sigma_t,i) from z0 (..., D)."""
    z, log_det = z0, jnp.zeros(z0.shape[:-1], z0.dtype)
    for step, made in enumerate(self.flow):
      if step:  # Reversing the order lets every unit depend on every other.
        z = z[..., ::-1]
      m, s = made(z)
      sigma = jax.nn.sigmoid(s)
      z = sigma * z + (1.0 - sigma) * m
      log_det = log_det + jnp.sum(jax.nn.log_sigmoid(s), axis=-1)
    return z, log_det

  def posterior_mean(self, image: jax.Array, label=None) -> jax.Array:
    """The flow of z0 = the encoder's mean (eps = 0): the figures' point of q(z|x)."""
    return self._flow(self.encode(image, label)[0])[0]

  def __call__(self, image: jax.Array, eps: jax.Array, label=None,
               train: bool = False) -> Outputs:
    """Samples z_T of the flow from eps (k, latent_dim), with log q(z_T|x) = the
    Gaussian's log-density of z0 minus the flow's log-determinant; one free-bits group,
    the whole latent, with the samples' mean of log q - log p."""
    mean, logvar = self.encode(image, label, train=train)
    z, log_det = self._flow(reparameterize(mean, logvar, eps))
    log_prior = losses.standard_normal_log_density(z)
    log_posterior = losses.reparameterized_log_density(eps, logvar) - log_det
    return Outputs(z=z, decoded=self.decode(z, label, train=train), log_prior=log_prior,
                   log_posterior=log_posterior,
                   kl_groups=jnp.mean(log_posterior - log_prior).reshape(1),
                   kl_group_units=jnp.full((1,), self.latent_dim, jnp.float32))

  def latent_layers(self, image: jax.Array, eps: jax.Array, label=None) -> list[dict]:
    """Not called: the diagnostics need a diagonal-Gaussian posterior
    (gaussian_posterior is False)."""
    raise NotImplementedError("An IAF posterior is not a diagonal Gaussian.")


def build(model_config, parts: contract.Parts) -> IAFVAE:
  options = model_config.iaf
  return IAFVAE(encoder=parts.encoder, decoder=parts.decoder, head=parts.head,
                num_classes=parts.num_classes, image_shape=parts.image_shape,
                steps=options.steps,
                hidden_dim=options.hidden_dim, gate_bias=options.gate_bias,
                made_activation=parts.activation, made_kernel_init=parts.kernel_init)


REGISTRATION = contract.Registration(
    build=build,
    examples={"iaf": {"model.iaf.hidden_dim": 8},
              "iaf_conditional": {"model.iaf.hidden_dim": 8, "model.conditional": True,
                                  "model.likelihood": "gaussian"}})
