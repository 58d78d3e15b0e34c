"""The model contract: what every family provides, and all that the rest of vae_jax calls.

A family is a linen Module that satisfies `Family`. Outside `vae_jax/models/`, code talks
to a model only through it: the losses and the NLL through `__call__`'s typed `Outputs`,
figures and samples through `posterior_mean`, `decode`, `prior_noise` and
`decode_prior_sample`, the latent diagnostics through `latent_layers`; and where a caller
needs more than the contract promises, it checks the model's properties
(`gaussian_posterior`, `standard_normal_prior`, `mutual_information_omitted`) instead of
assuming them.
"""

import dataclasses
from typing import Callable, Protocol, runtime_checkable

import flax.linen as nn
import flax.struct
import jax
import ml_collections


@flax.struct.dataclass
class Outputs:
  """One example's k posterior samples z_j = f(x, eps_j), from model(image, eps, label).

  Attributes:
    z: the samples themselves, (k, total latent units): every stochastic layer's,
      nearest x first, concatenated.
    decoded: the likelihood's parameters of p(x|z_j) per sample (the head's dict).
    log_prior: log p(z_j), shape (k,).
    log_posterior: log q(z_j|x), shape (k,).
    kl: KL(q(z|x) || p(z)) in closed form, a scalar, where both sides allow one; None
      where it must be estimated from the samples (the losses then use
      mean_j log q - log p).
    kl_groups: the KL split into the groups that free bits floor (each latent dimension's
      closed form, or each stochastic layer's sample mean), shape (G,).
    kl_group_units: the latent units in each group, (G,): a group's floor is free_bits
      (nats per unit) times its units.
  """
  z: jax.Array
  decoded: dict
  log_prior: jax.Array
  log_posterior: jax.Array
  kl: jax.Array | None = None
  kl_groups: jax.Array | None = None
  kl_group_units: jax.Array | None = None


@runtime_checkable
class Family(Protocol):
  """A VAE family, as the rest of vae_jax may use it. Every method is pure: randomness
  comes in as keys or as noise the caller drew from `prior_noise`'s key or its own.

  Sizes: `latent_dim`, the size of z as `decode` takes it; `noise_dim`, the standard-normal
  noise behind one posterior sample (`eps` of `__call__`); `num_classes` > 0 for a model
  conditional on a label (`conditional`); `image_shape`, (H, W, C) of its images.
  """
  num_classes: int
  image_shape: tuple[int, ...]

  @property
  def conditional(self) -> bool: ...

  @property
  def latent_dim(self) -> int: ...

  @property
  def noise_dim(self) -> int: ...

  @property
  def gaussian_posterior(self) -> bool:
    """q(z|x) is a diagonal Gaussian whose parameters `latent_layers` gives: the latent
    diagnostics (activity, mutual information) need it."""

  @property
  def standard_normal_prior(self) -> bool:
    """p(z) over `decode`'s z is N(0, I): figures that place z themselves (the 2-D
    manifold on normal quantiles) need it."""

  @property
  def mutual_information_omitted(self) -> str | None:
    """Why the KL cannot be split into I(x; z) + KL(q(z) || p(z)), or None."""

  @property
  def inference_networks(self) -> tuple[str, ...]:
    """The top-level parameter collections that only q(z|x) uses: the networks that the
    'piwae' objective trains on MIWAE's gradient. Empty when q and p share a network."""

  def __call__(self, image: jax.Array, eps: jax.Array, label=None,
               train: bool = False) -> Outputs:
    """Samples of q(z|x[, y]) from eps (k, noise_dim), with their densities."""

  def posterior_mean(self, image: jax.Array, label=None) -> jax.Array:
    """A point of q(z|x[, y]) in `decode`'s space, for figures (reconstructions, the
    latent scatter, interpolations)."""

  def decode(self, z: jax.Array, label=None, train: bool = False) -> dict:
    """The likelihood's parameters of p(x|z[, y]); z may have leading sample axes."""

  def prior_noise(self, rng: jax.Array, num: int) -> jax.Array:
    """Noise for `num` prior samples, (num, ...): parameter-free, so callers can draw it
    once and decode it in batches or for several labels."""

  def decode_prior_sample(self, noise: jax.Array, label=None, train: bool = False) -> dict:
    """The likelihood's parameters of p(x|z[, y]) for the prior samples that `noise`
    (from prior_noise) stands for, ancestral through every stochastic layer."""

  def sample_prior(self, rng: jax.Array, num: int, label=None) -> dict:
    """decode_prior_sample of prior_noise(rng, num): `num` prior samples' likelihood
    parameters, of class `label` (one per sample) for a conditional model."""

  def latent_layers(self, image: jax.Array, eps: jax.Array, label=None) -> list[dict]:
    """Per stochastic layer, nearest x first, what the latent diagnostics need for ONE
    example from S samples eps (S, noise_dim)."""


class PriorSampling:
  """`prior_noise` as N(0, I) of the model's noise_dim, and `sample_prior` as the contract
  composes it, for a family to inherit (a family whose prior needs other noise overrides
  prior_noise)."""

  def prior_noise(self, rng: jax.Array, num: int) -> jax.Array:
    """(num, noise_dim) ~ N(0, I): what decode_prior_sample turns into prior samples."""
    return jax.random.normal(rng, (num, self.noise_dim))

  def sample_prior(self, rng: jax.Array, num: int, label=None) -> dict:
    """decode_prior_sample of prior_noise(rng, num)."""
    return self.decode_prior_sample(self.prior_noise(rng, num), label)


@dataclasses.dataclass(frozen=True)
class Parts:
  """What `models.get_model` builds from `config.model` for every family: the backbone
  (`model.name`) and the likelihood head, and what a family needs to build more layers
  in the same style."""
  encoder: nn.Module  # (image, condition, train) -> (mean, logvar) of a diagonal Gaussian.
  decoder: nn.Module  # (z [+ condition], train) -> the head's raw outputs per pixel.
  head: nn.Module  # Raw outputs -> the likelihood's parameters.
  num_classes: int  # > 0 for a conditional model.
  image_shape: tuple[int, ...]
  activation: Callable[[jax.Array], jax.Array]
  kernel_init: nn.initializers.Initializer
  dropout_rate: float
  dtype: jax.typing.DTypeLike  # Of the computation; parameters are float32.


@dataclasses.dataclass(frozen=True)
class Registration:
  """A family's line in the registry (`models.FAMILIES`), under its `config.model.family`
  name. Its name, its own keys (config.model.<name>) and what it refuses are in
  vae_jax/config_schema.py, which comes first in the import order (names as strings).

  Attributes:
    build: (config.model, Parts) -> the family's module.
    examples: name -> flattened overrides of a small test config: the models of this
      family that the conformance suite (tests/conformance_test.py) checks.
  """
  build: Callable[[ml_collections.ConfigDict, Parts], nn.Module]
  examples: dict = dataclasses.field(default_factory=dict)
