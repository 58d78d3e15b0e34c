"""Every config key, its default, and the values it may take.

`configs/*.py` start from `default_config()` and override what their model needs, so all
configs share one set of keys: an override that names a key not listed here is refused by
the locked ConfigDict, and `validate(config)` refuses bad values before any work starts.
"""

import ml_collections

from vae_jax import models

# Enum-valued keys and the values they accept; extend these as families are added.
ALLOWED_VALUES = {
    "data.name": ("mnist", "fashion_mnist", "binarized_mnist"),
    "data.binarization": ("none", "dynamic", "static"),
    "model.name": ("mlp",),
    "model.activation": tuple(models.ACTIVATIONS),
    "model.kernel_init": tuple(models.KERNEL_INITS),
    "model.likelihood": ("bernoulli",),
    "loss.objective": ("elbo",),
}

# Datasets whose pixels are already 0/1; the "static" binarization mode means "use one".
STATICALLY_BINARIZED_DATASETS = ("binarized_mnist",)


def default_config() -> ml_collections.ConfigDict:
  """All keys with neutral defaults (seed 000's MLP VAE on grayscale MNIST)."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "mnist"
  config.data.binarization = "none"
  # Folder with one sub-folder per TFDS dataset name holding the original files.
  # Empty: use $VAE_JAX_MANUAL_DIR, else let TFDS download.
  config.data.manual_dir = ""
  # Where TFDS keeps prepared datasets. Empty: TFDS's default (~/tensorflow_datasets).
  config.data.tfds_data_dir = ""
  # Carved from the end of a reproducible permutation of train when the dataset has no
  # validation split (5000 gives the 55000/5000 split of the seeds' TF MNIST reader).
  config.data.validation_size = 5000

  config.model = ml_collections.ConfigDict()
  config.model.name = "mlp"
  config.model.conditional = False
  config.model.latent_dim = 128
  config.model.hidden_dims = (512, 256)
  config.model.activation = "tanh"
  config.model.kernel_init = "glorot_uniform"
  config.model.likelihood = "bernoulli"

  config.loss = ml_collections.ConfigDict()
  config.loss.objective = "elbo"
  config.loss.num_samples = 1
  config.loss.kl_weight = 1.0

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 100
  config.train.learning_rate = 1e-3
  config.train.num_epochs = 20
  config.train.num_steps = 0  # When > 0, overrides num_epochs.
  # Metrics are fetched from the device (and checked for NaN) this often.
  config.train.log_every_steps = 100

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 1000

  config.figures = ml_collections.ConfigDict()
  config.figures.num_reconstructions = 10
  config.figures.num_prior_samples = 64

  config.checkpoints_to_keep = 2
  return config


def _get(config, dotted_key):
  value = config
  for part in dotted_key.split("."):
    value = value[part]
  return value


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key, its value and what is allowed."""
  errors = []
  for key, allowed in ALLOWED_VALUES.items():
    value = _get(config, key)
    if value not in allowed:
      errors.append(f"config.{key}={value!r} is not one of {', '.join(map(repr, allowed))}.")

  def require(condition, message):
    if not condition:
      errors.append(message)

  positive_ints = ("model.latent_dim", "loss.num_samples", "train.batch_size",
                   "train.log_every_steps", "eval.batch_size", "checkpoints_to_keep")
  for key in positive_ints:
    value = _get(config, key)
    require(isinstance(value, int) and value > 0,
            f"config.{key}={value!r} must be a positive integer.")
  for key in ("train.num_epochs", "train.num_steps", "data.validation_size",
              "figures.num_reconstructions", "figures.num_prior_samples"):
    value = _get(config, key)
    require(isinstance(value, int) and value >= 0,
            f"config.{key}={value!r} must be a non-negative integer.")
  require(config.train.num_epochs > 0 or config.train.num_steps > 0,
          "config.train.num_epochs and config.train.num_steps are both 0: nothing to train.")
  require(config.train.learning_rate > 0,
          f"config.train.learning_rate={config.train.learning_rate!r} must be > 0.")
  require(config.loss.kl_weight >= 0,
          f"config.loss.kl_weight={config.loss.kl_weight!r} must be >= 0.")
  hidden_dims = config.model.hidden_dims
  require(isinstance(hidden_dims, (tuple, list)) and len(hidden_dims) > 0
          and all(isinstance(h, int) and h > 0 for h in hidden_dims),
          f"config.model.hidden_dims={hidden_dims!r} must be a non-empty tuple of positive "
          "integers, e.g. --config.model.hidden_dims='(512, 256)'.")

  static_dataset = config.data.name in STATICALLY_BINARIZED_DATASETS
  if config.data.binarization == "static":
    require(static_dataset,
            f"config.data.binarization='static' needs a statically binarized dataset "
            f"(config.data.name in {STATICALLY_BINARIZED_DATASETS}), "
            f"not config.data.name={config.data.name!r}.")
  elif static_dataset:
    require(config.data.binarization == "static",
            f"config.data.name={config.data.name!r} is already binarized: set "
            f"config.data.binarization='static', not {config.data.binarization!r}.")
  if config.model.conditional:
    require(config.data.name not in ("binarized_mnist",),
            f"config.model.conditional=True needs labels, but config.data.name="
            f"{config.data.name!r} has none.")
    errors.append("config.model.conditional=True is not implemented yet.")

  if errors:
    raise ValueError("Invalid config:\n  " + "\n  ".join(errors))
