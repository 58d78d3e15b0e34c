"""Linear-Gaussian building blocks whose marginal likelihood is analytic, for the NLL tests
(tests/nll_test.py: one latent layer; tests/two_layer_test.py: two)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import models


class LinearGaussian(nn.Module):
  """inputs -> (inputs @ a + c, logvar): a diagonal Gaussian whose parameters the test
  sets. With `flatten_image`, the input is a (D, 1, 1) 'image' (a posterior q(.|x))."""
  in_dim: int
  latent_dim: int
  flatten_image: bool = False

  @nn.compact
  def __call__(self, inputs, condition=None, train=False):
    x = inputs.reshape(inputs.shape[:-3] + (-1,)) if self.flatten_image else inputs
    a = self.param("a", nn.initializers.zeros, (self.in_dim, self.latent_dim))
    c = self.param("c", nn.initializers.zeros, (self.latent_dim,))
    logvar = self.param("logvar", nn.initializers.zeros, (self.latent_dim,))
    return x @ a + c, jnp.broadcast_to(logvar, x.shape[:-1] + (self.latent_dim,))


class LinearDecoder(nn.Module):
  """The mean of p(x|z), W z + b, as a (D, 1, 1) 'image'."""
  latent_dim: int
  data_dim: int

  @nn.compact
  def __call__(self, z, train=False):
    w = self.param("w", nn.initializers.zeros, (self.latent_dim, self.data_dim))
    b = self.param("b", nn.initializers.zeros, (self.data_dim,))
    return (z @ w + b).reshape(z.shape[:-1] + (self.data_dim, 1, 1))


def gaussian_log_density(x, mean, cov) -> float:
  """log N(x; mean, cov) for a full covariance, in float64 numpy."""
  diff = x - mean
  _, logdet = np.linalg.slogdet(cov)
  return -0.5 * (diff @ np.linalg.solve(cov, diff) + logdet + len(x) * np.log(2 * np.pi))


def linear_gaussian_vae(scales, data_dim: int, noise_variance: float):
  """p(z) = N(0, I), p(x|z) = N(Wz + b, s2 I) with W's rows orthogonal and of lengths
  `scales` (a 0 is a latent dimension the decoder ignores), and its exact posterior as q.

  Orthogonal rows make the exact posterior's covariance (I + W W^T / s2)^-1 diagonal, so
  the model's diagonal Gaussian q represents it. Returns (model, params, b, the marginal
  covariance of x).
  """
  latent_dim = len(scales)
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(data_dim, latent_dim)))
  w = (q * np.asarray(scales, np.float64)).T  # (latent, data); W W^T = diag(scales^2).
  b = rng.normal(size=data_dim)
  posterior_cov = np.linalg.inv(np.eye(latent_dim) + w @ w.T / noise_variance)
  a = (posterior_cov @ w / noise_variance).T  # The posterior mean is (x - b) @ a.
  params = {
      "encoder": {"a": a, "c": -b @ a, "logvar": np.log(np.diag(posterior_cov))},
      "decoder": {"w": w, "b": b},
  }
  model = models.VAE(encoder=LinearGaussian(data_dim, latent_dim, flatten_image=True),
                     decoder=LinearDecoder(latent_dim, data_dim),
                     head=models.GaussianHead(variance="fixed", fixed_variance=noise_variance))
  marginal_cov = w.T @ w + noise_variance * np.eye(data_dim)
  return model, jax.tree.map(jnp.asarray, params), b, marginal_cov
