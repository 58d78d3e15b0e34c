"""Linear-Gaussian building blocks whose marginal likelihood is analytic, for the NLL tests
(tests/nll_test.py: one latent layer; tests/two_layer_test.py: two)."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


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
