"""Every config key, its default, and the values it may take.

`configs/*.py` start from `default_config()` and override what their model needs, so all
configs share one set of keys: an override that names a key not listed here is refused by
the locked ConfigDict, and `validate(config)` refuses bad values before any work starts.
"""

import importlib.util
import json
import math
import os

from etils import epath
from flax import traverse_util
import ml_collections

# Names only (vae_jax/models maps them to functions; models_test checks the two agree),
# so that this module comes first in the import order.
ACTIVATIONS = ("tanh", "relu", "leaky_relu", "elu", "gelu", "softplus")
KERNEL_INITS = ("glorot_uniform", "lecun_normal", "he_normal", "truncated_normal")

# Enum-valued keys and the values they accept; extend these as families are added.
ALLOWED_VALUES = {
    "data.binarization": ("none", "dynamic", "static"),
    "data.resize_method": ("center_crop", "stretch"),  # vae_jax/image_files.py
    "model.family": ("vae", "vampprior", "iaf"),  # vae_jax/models' registry, FAMILIES
    "model.name": ("mlp", "conv"),
    "model.stochastic_layers": (1, 2),
    "model.activation": ACTIVATIONS,
    "model.kernel_init": KERNEL_INITS,
    "model.conv.decoder_conv_activation": ACTIVATIONS,
    "model.likelihood": ("bernoulli", "gaussian", "logistic_mixture"),
    "model.conv.decoder_output": ("dense", "conv"),
    "model.gaussian_mean": ("linear", "sigmoid"),
    "model.gaussian_variance": ("fixed", "learned_global", "learned_per_pixel"),
    "loss.objective": ("elbo", "iwae", "miwae", "ciwae", "piwae"),  # losses.OBJECTIVES
    "loss.kl_estimator": ("closed_form", "monte_carlo"),
    "train.learning_rate_schedule": ("constant", "iwae"),
    "resume_mismatch": ("refuse", "allow"),
    "dtype": ("float32", "bfloat16"),
}

# Keys that may change when a run is resumed: where things are, how often the loop logs
# and saves, and what is evaluated and drawn. The others shape the trained model.
RESUME_FREE_KEYS = ("resume_mismatch", "data.manual_dir", "data.tfds_data_dir",
                    "data.image_shape",  # Read from the data (runs before it: empty).
                    "data.max_device_mb",  # Where the data lives, not what it is.
                    "train.num_epochs", "train.num_steps",  # Longer runs continue exactly.
                    # More stages of the 'iwae' schedule: the earlier stages are the same.
                    "train.schedule_stages",
                    "train.log_every_steps", "train.progress_every_seconds",
                    "train.steps_per_dispatch",
                    "checkpoint_every_steps", "checkpoints_to_keep", "eval.", "figures.")

# data.name values that read the user's own images at data.path (vae_jax/image_files.py).
OWN_DATA = ("folder", "npz")
# Datasets whose pixels are already 0/1; the "static" binarization mode means "use one".
STATICALLY_BINARIZED_DATASETS = ("binarized_mnist",)
# Datasets without class labels (no conditional models, no label colours in figures).
UNLABELLED_DATASETS = ("binarized_mnist",)


def default_config() -> ml_collections.ConfigDict:
  """All keys with neutral defaults (seed 000's MLP VAE on grayscale MNIST)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # The networks' compute dtype. 'bfloat16' (for GPUs/TPUs; slow on most CPUs) keeps the
  # parameters, Adam, the sampling and the losses in float32.
  config.dtype = "float32"

  config.data = ml_collections.ConfigDict()
  # A TFDS image dataset by name (e.g. 'mnist', 'cifar10', 'celeb_a' with image_size), or
  # the user's own images: 'folder' (PNG/JPEG, one sub-folder per class for labels) or
  # 'npz' (uint8 `images` (N, H, W, C), optional `labels`), at data.path.
  config.data.name = "mnist"
  config.data.path = ""
  # (height, width): resize every image to it; empty keeps the data's size (a folder of
  # mixed sizes is then refused). 'center_crop' keeps the aspect ratio, 'stretch' does not.
  config.data.image_size = ()
  config.data.resize_method = "center_crop"
  # (height, width, channels) of the images the model sees. Empty: read from the data when
  # the run starts, and written into the workdir's config.json; set, it is checked.
  config.data.image_shape = ()
  config.data.binarization = "none"
  # Folder with one sub-folder per TFDS dataset name holding the original files.
  # Empty: use $VAE_JAX_MANUAL_DIR, else let TFDS download.
  config.data.manual_dir = ""
  # Where TFDS keeps prepared datasets. Empty: TFDS's default (~/tensorflow_datasets).
  config.data.tfds_data_dir = ""
  # Carved from the end of a reproducible permutation of train when the dataset has no
  # validation split (5000 gives the 55000/5000 split of the seeds' TF MNIST reader).
  config.data.validation_size = 5000
  # The training split is held on every device when its images take at most this many MB;
  # a larger one stays on the host and each dispatch's batches are sent (the same numbers).
  config.data.max_device_mb = 4096.0
  # For data without a test split (a folder, an .npz, some TFDS datasets): this many
  # examples, before the validation ones at the end of the fixed permutation, are the test
  # split (0: no test split; the final evaluation then uses validation).
  config.data.test_size = 0

  config.model = ml_collections.ConfigDict()
  # The family: a name in vae_jax/models' registry, FAMILIES ('vae': Gaussian posterior,
  # N(0, I) prior, one or two stochastic layers). A family's own keys are under
  # config.model.<family>, below.
  config.model.family = "vae"
  # The backbone: the encoder and decoder networks every family builds on.
  config.model.name = "mlp"
  # Conditional: the label's one-hot goes to the encoder and joins z at the decoder input.
  config.model.conditional = False
  config.model.num_classes = 10
  config.model.latent_dim = 128
  config.model.activation = "tanh"
  config.model.negative_slope = 0.01  # Of leaky_relu, for x < 0 (seeds 001/002: 0.3).
  config.model.kernel_init = "glorot_uniform"
  config.model.init_stddev = 0.001  # Of kernel_init='truncated_normal' only.
  config.model.dropout_rate = 0.0  # After each hidden layer; training only.
  # model.name='mlp': hidden widths of the encoder, mirrored in the decoder.
  config.model.hidden_dims = (512, 256)
  # 1: z only. 2: Burda et al.'s hierarchy x -> z1 -> z2 (model.name='mlp' only), where
  # latent_dim and hidden_dims are z1's and top_layer gives z2 and the layers around it.
  config.model.stochastic_layers = 1
  config.model.top_layer = ml_collections.ConfigDict()
  config.model.top_layer.hidden_dims = (100, 100)  # q(z2|z1); mirrored in p(z1|z2).
  config.model.top_layer.latent_dim = 50
  # model.name='conv': seeds 001/002's layers.
  config.model.conv = ml_collections.ConfigDict()
  config.model.conv.kernel_size = 4
  config.model.conv.encoder_features = (64, 64, 64)
  config.model.conv.encoder_strides = (2, 2, 1)
  # Dense layers after z; the last one is reshaped to a decoder_initial_side^2 x c map.
  config.model.conv.decoder_dense_dims = (24, 49)
  config.model.conv.decoder_initial_side = 7
  config.model.conv.decoder_features = (64, 64, 64)
  config.model.conv.decoder_strides = (2, 1, 1)
  config.model.conv.decoder_conv_activation = "relu"
  # The decoder's last layer: 'dense' (the seeds: a dense layer from the whole feature map to
  # every pixel's outputs; any image size) or 'conv' (a stride-1 convolution to each pixel's
  # outputs: for larger images and mixture likelihoods; the transposed convs must then reach
  # the image's size, decoder_initial_side * prod(decoder_strides) = height = width).
  config.model.conv.decoder_output = "dense"

  # p(x|z): 'bernoulli' (decoder outputs are logits), 'gaussian' (independent pixels) or
  # 'logistic_mixture' (8-bit pixels: the discretized logistic mixture of PixelCNN++).
  config.model.likelihood = "bernoulli"
  config.model.gaussian_mean = "linear"  # Or 'sigmoid': a mean in [0, 1] (seeds 001/002).
  config.model.gaussian_variance = "fixed"
  # sigma^2 when fixed: 1.0 gives 0.5 * squared error + const; 0.5 the squared error + const.
  config.model.gaussian_fixed_variance = 1.0
  config.model.gaussian_min_variance = 1e-3  # Floor of a learned variance.
  # 'logistic_mixture': components per pixel (1: a single discretized logistic).
  config.model.logistic_mixture_components = 10
  # model.family='vampprior' (vae_jax/models/vampprior.py).
  config.model.vampprior = ml_collections.ConfigDict()
  config.model.vampprior.num_pseudo_inputs = 500  # K; the paper's for MNIST.
  # The u_k's initialization, N(mean, stddev^2), clipped to [0, 1] (the authors' MNIST values).
  config.model.vampprior.pseudo_input_mean = 0.05
  config.model.vampprior.pseudo_input_stddev = 0.01
  # model.family='iaf' (vae_jax/models/iaf.py).
  config.model.iaf = ml_collections.ConfigDict()
  config.model.iaf.steps = 2  # T, the IAF steps after the Gaussian.
  config.model.iaf.hidden_dim = 256  # Each MADE's one hidden layer.
  config.model.iaf.gate_bias = 1.0  # sigma_t starts near sigmoid(1) = 0.73.

  config.loss = ml_collections.ConfigDict()
  # 'elbo', or a bound on log p(x) from the samples' importance weights: 'iwae' (Burda et
  # al. 2015), 'miwae', 'ciwae' or 'piwae' (Rainforth et al. 2018; vae_jax/losses.py).
  config.loss.objective = "elbo"
  config.loss.num_samples = 1  # K: samples per example, or per bound for 'miwae'/'piwae'.
  config.loss.num_bounds = 1  # M: the IWAE bounds that 'miwae' and 'piwae' average.
  config.loss.ciwae_beta = 0.5  # 'ciwae': beta * ELBO + (1 - beta) * IWAE.
  config.loss.kl_weight = 1.0  # beta: the KL term's weight in the loss ('elbo' only).
  # KL warm-up: the KL weight rises linearly from 0 to kl_weight over this many epochs.
  config.loss.kl_warmup_epochs = 0.0
  # Free bits (Kingma et al. 2016), in nats per latent dimension and example: a dimension
  # whose KL is below this adds this constant to the loss instead (no gradient to shrink
  # it further); where the KL is sampled (two stochastic layers, the VampPrior, the IAF),
  # per layer: a layer whose sampled KL is below this times its units. 0: off.
  config.loss.free_bits = 0.0
  # The ELBO's KL: 'closed_form' where the model has one (one stochastic layer; two
  # layers have none and sample it), or 'monte_carlo', the mean of log q(z|x) - log p(z)
  # over the posterior samples, always.
  config.loss.kl_estimator = "closed_form"

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 100
  config.train.learning_rate = 1e-3
  # 'constant', or 'iwae': Burda et al. 2015's 3^i epochs at learning_rate * 10^(-i/7).
  config.train.learning_rate_schedule = "constant"
  config.train.schedule_stages = 8  # Of the 'iwae' schedule: i = 0..7, 3280 epochs.
  config.train.adam_b1 = 0.9
  config.train.adam_b2 = 0.999
  config.train.adam_eps = 1e-8  # optax's default; Burda et al. used 1e-4.
  # 0 with the 'iwae' schedule: as long as its schedule_stages (schedule_epochs).
  config.train.num_epochs = 20
  config.train.num_steps = 0  # When > 0, overrides num_epochs.
  # Metrics are fetched from the device (and checked for NaN) this often.
  config.train.log_every_steps = 100
  # Train steps per dispatch from the host, run in one lax.scan on the device. Results do
  # not depend on it (each step's batch and key come from its step number); 10 measured
  # 8-11% faster than 1 for the MLPs on a 2-core CPU (python -m vae_jax.benchmark).
  config.train.steps_per_dispatch = 10
  # A progress line (steps/s, examples/s, epoch, time left) this often; 0: none.
  config.train.progress_every_seconds = 10.0
  # False: a NaN or inf in the loss or gradients stops the run, naming the step. True:
  # such an update is skipped (parameters and Adam state kept) and counted.
  config.train.skip_nonfinite_updates = False
  # An exponential moving average of the parameters, updated after every step with this
  # decay and saved with the state (vae_jax.evaluate --weights=ema); 0: off.
  config.train.ema_decay = 0.0

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 1000
  # Importance-sampled test NLL at the end of training (0: off; the literature uses 5000).
  config.eval.num_importance_samples = 0
  # Examples per NLL batch times samples per chunk: the samples decoded at once. 10,000
  # kept the logits in cache: 1.7x the speed of 100,000 for configs/iwae.py on a 2-core
  # CPU (README, "Performance"); a larger model may want fewer.
  config.eval.nll_batch_size = 20
  config.eval.importance_chunk_size = 500
  # The binarization of the evaluated (validation, test) images under 'dynamic' comes from
  # jax.random.key(binarization_seed), not from the run's seed, so runs with different
  # seeds or configs are scored on the same binarized images (as Burda et al.'s code).
  config.eval.binarization_seed = 0
  # The test NLL also at the end of these epochs before the last (e.g. the schedule's
  # stage ends), with nll_samples_during_training samples; the end of training has the
  # final evaluation's, from num_importance_samples.
  config.eval.nll_at_epochs = ()
  config.eval.nll_samples_during_training = 1000
  # Latent diagnostics (active units, mutual information) during training, on the first
  # diagnostics_examples of the validation split (else test), every
  # diagnostics_every_epochs epochs and at the nll_at_epochs (0: only at those); the final
  # evaluation has them on the whole test split. diagnostics_examples=0: none during
  # training.
  config.eval.diagnostics_examples = 1000
  config.eval.diagnostics_every_epochs = 5

  config.figures = ml_collections.ConfigDict()
  config.figures.num_reconstructions = 10
  config.figures.num_prior_samples = 64
  # Cheap figures (reconstructions, samples) go to TensorBoard every this many epochs, from
  # fixed keys so epochs compare; all figures are written at the end. 0: only at the end.
  config.figures.every_epochs = 5
  config.figures.final = True  # False: no figures at the end (e.g. sweeps after numbers).
  config.figures.manifold_size = 15  # Tiles per side of the 2-D latent manifold.
  config.figures.num_scatter_points = 5000  # Test posterior means in the 2-D scatter.
  config.figures.samples_per_class = 10  # Columns of the conditional class grid.
  config.figures.num_interpolations = 6  # Pairs of test digits.
  config.figures.interpolation_steps = 8
  config.figures.denoising_noise_stds = (0.1, 0.2, 0.3, 0.5)
  config.figures.num_denoising_examples = 8  # Shown; the error plot uses a larger set.
  config.figures.label = 7  # Of the 2-D manifold of a conditional model.

  # A checkpoint at every epoch's end, at the end, on SIGTERM, and every this many steps
  # (0: no extra ones); the last checkpoints_to_keep are kept.
  config.checkpoint_every_steps = 0
  config.checkpoints_to_keep = 2
  # 'refuse': a workdir holding a checkpoint of a run with a different config is an
  # error that lists the differing keys; 'allow': resume it with the new values.
  config.resume_mismatch = "refuse"
  return config


def schedule_epochs(stages: int) -> int:
  """The 'iwae' schedule's length: stage i lasts 3^i epochs, 1 + 3 + 9 + ... ."""
  return sum(3 ** stage for stage in range(stages))


def num_epochs(config) -> int:
  """The epochs to train: train.num_epochs, or with 0 the 'iwae' schedule's length."""
  if config.train.num_epochs == 0 and config.train.learning_rate_schedule == "iwae":
    return schedule_epochs(config.train.schedule_stages)
  return config.train.num_epochs


def flat_items(config: ml_collections.ConfigDict) -> dict:
  """{'model.latent_dim': 128, ...}: every leaf under its dotted key."""
  return traverse_util.flatten_dict(config.to_dict(), sep=".")


def resume_differences(saved: ml_collections.ConfigDict, current: ml_collections.ConfigDict
                       ) -> list[tuple[str, object, object]]:
  """(key, saved value, current value) for each key that shapes training and differs."""
  saved_items, current_items = flat_items(saved), flat_items(current)
  return [(key, saved_items.get(key), value) for key, value in sorted(current_items.items())
          if not key.startswith(RESUME_FREE_KEYS) and saved_items.get(key) != value]


CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")


def load_module(path: str):
  """Executes a Python file (a config or a sweep) by path, as config_flags does."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"vae_jax_file_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def parse_config_arg(arg, config_file: str, /, **spec) -> ml_collections.ConfigDict:
  """A config file's `arg` ("objective=iwae,k=50,short") as options, after big_vision's
  configs/common.py:parse_arg.

  Here, not in configs/common.py: config files are executed by path (load_module,
  config_flags), where `configs` need not be importable, and every config already imports
  vae_jax.config_schema.

  Args:
    arg: the text after the config file's ':' (None or '' for none); comma-separated
      `name=value` items, or a bare `name` for a flag.
    config_file: the file's name for messages, e.g. "configs/iwae.py".
    **spec: each option's name and default, whose type gives the value's: a bool is a
      flag (bare: True; or =true/=false), an int or float is parsed as one, a str or
      None (no default) keeps the text. The caller checks the allowed values.

  Returns:
    Every option of spec, as given or its default.
  """
  options = dict(spec)
  for item in filter(None, (arg or "").split(",")):
    name, _, text = item.partition("=")
    if name not in spec:
      raise ValueError(f"Unknown variant {config_file}:{arg}: no option {name!r}; known: "
                       f"{', '.join(spec) or 'none'}.")
    default = spec[name]
    if isinstance(default, bool):
      if text.lower() not in ("", "true", "false"):
        raise ValueError(f"{config_file}: {name} is a flag: give it bare, or {name}=true or "
                         f"{name}=false, not {item!r}.")
      options[name] = text.lower() != "false"
    elif not text:
      raise ValueError(f"{config_file}: {name} needs a value ({name}=...).")
    elif isinstance(default, (int, float)):
      try:
        options[name] = type(default)(text)
      except ValueError:
        raise ValueError(f"{config_file}: {name}={text!r} is not "
                         f"{'an int' if isinstance(default, int) else 'a number'}.") from None
    else:
      options[name] = text
  return ml_collections.ConfigDict(options)


def load_file(path: str, arg=None) -> ml_collections.ConfigDict:
  """A config file's get_config(arg)."""
  if not os.path.isfile(path):
    raise ValueError(f"Config file {path} does not exist (e.g. configs/mlp.py).")
  return load_module(path).get_config(arg)


def load_shipped(name: str, arg=None) -> ml_collections.ConfigDict:
  """configs/<name>.py's get_config(arg)."""
  return load_file(os.path.join(CONFIGS_DIR, f"{name}.py"), arg)


def override(config: ml_collections.ConfigDict, dotted_key: str, value) -> None:
  """config.<dotted_key> = value, refusing unknown keys and wrong types with the key named."""
  node = config
  for part in dotted_key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ValueError(f"Unknown config key {dotted_key!r}: every key is listed in "
                       "vae_jax/config_schema.py.")
    node = node[part]
  if isinstance(node, tuple) and isinstance(value, list):
    value = tuple(value)
  try:
    config.update_from_flattened_dict({dotted_key: value})
  except (TypeError, ValueError, KeyError, AttributeError) as error:
    raise ValueError(f"config.{dotted_key}={value!r}: {error}") from None


def load_json(path: str) -> ml_collections.ConfigDict:
  """The config a run saved as config.json, on top of today's defaults, locked.

  JSON has no tuples, so lists become tuples where the default is one.
  """
  with epath.Path(path).open() as f:  # A workdir may be on any filesystem epath reads.
    saved = traverse_util.flatten_dict(json.load(f), sep=".")
  config = default_config()
  defaults = flat_items(config)
  for key, value in saved.items():
    # Checked here: unlocked, update_from_flattened_dict would add an unknown leaf.
    if key not in defaults:
      raise ValueError(f"{path} has the key {key}, which this version of vae_jax "
                       "does not know; was it written by another version?")
    if isinstance(defaults[key], tuple) and isinstance(value, list):
      saved[key] = tuple(value)
  config.update_from_flattened_dict(saved)
  config.lock()
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

  def is_int_tuple(value):
    return (isinstance(value, (tuple, list)) and len(value) > 0
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))

  def require_int_tuple(key):
    value = _get(config, key)
    require(is_int_tuple(value), f"config.{key}={value!r} must be a non-empty tuple of "
            f"positive integers, e.g. --config.{key}='(512, 256)'.")

  positive_ints = ("model.latent_dim", "model.top_layer.latent_dim", "model.num_classes",
                   "model.conv.kernel_size", "model.conv.decoder_initial_side",
                   "loss.num_samples", "train.batch_size", "train.log_every_steps",
                   "train.steps_per_dispatch", "eval.batch_size", "eval.nll_batch_size",
                   "eval.importance_chunk_size", "checkpoints_to_keep", "train.schedule_stages",
                   "figures.manifold_size", "figures.samples_per_class",
                   "figures.interpolation_steps")
  for key in positive_ints:
    value = _get(config, key)
    require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
            f"config.{key}={value!r} must be a positive integer.")
  for key in ("train.num_epochs", "train.num_steps", "data.validation_size",
              "eval.num_importance_samples", "eval.binarization_seed",
              "eval.diagnostics_examples", "eval.diagnostics_every_epochs",
              "eval.nll_samples_during_training",
              "checkpoint_every_steps",
              "figures.num_reconstructions", "figures.num_prior_samples",
              "figures.every_epochs", "figures.num_scatter_points",
              "figures.num_interpolations", "figures.num_denoising_examples"):
    value = _get(config, key)
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            f"config.{key}={value!r} must be a non-negative integer.")
  require(config.train.num_epochs > 0 or config.train.num_steps > 0
          or config.train.learning_rate_schedule == "iwae",
          "config.train.num_epochs and config.train.num_steps are both 0: nothing to train "
          "(0 epochs means the schedule's length only with "
          "config.train.learning_rate_schedule='iwae').")
  nll_epochs = config.eval.nll_at_epochs
  require(isinstance(nll_epochs, (tuple, list))
          and all(isinstance(e, int) and not isinstance(e, bool) and e > 0 for e in nll_epochs),
          f"config.eval.nll_at_epochs={nll_epochs!r} must be a tuple of positive epoch "
          "numbers, e.g. '(1, 4, 13)'.")
  require(not nll_epochs or config.eval.nll_samples_during_training > 0,
          f"config.eval.nll_at_epochs={tuple(nll_epochs)!r} needs "
          "config.eval.nll_samples_during_training > 0.")
  require(config.train.progress_every_seconds >= 0,
          f"config.train.progress_every_seconds={config.train.progress_every_seconds!r} "
          "must be >= 0 (0: no progress lines).")
  for key in ("train.learning_rate", "train.adam_eps", "model.init_stddev",
              "model.gaussian_fixed_variance",
              "model.gaussian_min_variance"):
    value = _get(config, key)
    require(value > 0, f"config.{key}={value!r} must be > 0.")
  for key in ("loss.kl_weight", "loss.kl_warmup_epochs", "loss.free_bits"):
    value = _get(config, key)
    require(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
            f"config.{key}={value!r} must be a number >= 0.")
  objective = config.loss.objective
  if objective != "elbo":
    for key, neutral in (("kl_weight", 1.0), ("kl_warmup_epochs", 0.0), ("free_bits", 0.0)):
      require(config.loss[key] == neutral,
              f"config.loss.objective={objective!r} is a bound on log p(x) without a "
              f"separate KL term: config.loss.{key}={config.loss[key]!r} must be {neutral}.")
  num_bounds = config.loss.num_bounds
  require(isinstance(num_bounds, int) and not isinstance(num_bounds, bool) and num_bounds > 0,
          f"config.loss.num_bounds={num_bounds!r} must be a positive integer.")
  require(num_bounds == 1 or objective in ("miwae", "piwae"),
          f"config.loss.num_bounds={num_bounds!r} is M of config.loss.objective='miwae' or "
          f"'piwae'; with {objective!r} it must be 1.")
  require(isinstance(config.loss.ciwae_beta, (int, float))
          and 0 <= config.loss.ciwae_beta <= 1,
          f"config.loss.ciwae_beta={config.loss.ciwae_beta!r} must be in [0, 1].")
  require(config.loss.free_bits == 0 or config.model.stochastic_layers == 2
          or config.loss.kl_estimator == "closed_form",
          f"config.loss.free_bits={config.loss.free_bits!r} applies to each latent "
          "dimension's closed-form KL: it needs config.loss.kl_estimator='closed_form', not "
          f"{config.loss.kl_estimator!r}.")
  for key in ("train.adam_b1", "train.adam_b2"):
    value = _get(config, key)
    require(0 <= value < 1, f"config.{key}={value!r} must be in [0, 1).")
  require(isinstance(config.train.ema_decay, (int, float))
          and 0 <= config.train.ema_decay < 1,
          f"config.train.ema_decay={config.train.ema_decay!r} must be in [0, 1): the "
          "weight of the old average at each step (0.999 is usual; 0 turns the average off).")
  require(0 <= config.model.dropout_rate < 1,
          f"config.model.dropout_rate={config.model.dropout_rate!r} must be in [0, 1).")
  noise_stds = config.figures.denoising_noise_stds
  require(isinstance(noise_stds, (tuple, list)) and all(s >= 0 for s in noise_stds),
          f"config.figures.denoising_noise_stds={noise_stds!r} must be a tuple of "
          "non-negative numbers.")
  require_int_tuple("model.hidden_dims")
  require_int_tuple("model.top_layer.hidden_dims")
  require(config.model.stochastic_layers == 1 or config.model.name == "mlp",
          f"config.model.stochastic_layers={config.model.stochastic_layers!r} needs "
          f"config.model.name='mlp', not {config.model.name!r} (the two-layer model is an "
          "MLP, as in Burda et al. 2015).")
  conv = config.model.conv
  for key in ("encoder_features", "encoder_strides", "decoder_dense_dims",
              "decoder_features", "decoder_strides"):
    require_int_tuple(f"model.conv.{key}")
  for part in ("encoder", "decoder"):
    features, strides = conv[f"{part}_features"], conv[f"{part}_strides"]
    require(not (is_int_tuple(features) and is_int_tuple(strides))
            or len(features) == len(strides),
            f"config.model.conv.{part}_features={tuple(features)!r} and "
            f"config.model.conv.{part}_strides={tuple(strides)!r} must have the same length "
            "(one stride per conv layer).")
  side = conv.decoder_initial_side
  if is_int_tuple(conv.decoder_dense_dims) and isinstance(side, int) and side > 0:
    require(conv.decoder_dense_dims[-1] % (side * side) == 0,
            f"config.model.conv.decoder_dense_dims[-1]={conv.decoder_dense_dims[-1]} must be "
            f"a multiple of config.model.conv.decoder_initial_side^2={side * side} "
            "(it is reshaped to a side x side feature map).")

  data = config.data
  require(isinstance(data.name, str) and data.name,
          "config.data.name must name a TFDS image dataset (e.g. 'mnist', 'cifar10'), "
          "'folder' or 'npz'.")
  require(data.name not in OWN_DATA or data.path,
          f"config.data.name={data.name!r} reads the images at config.data.path: set it, "
          f"e.g. --config.data.path={'DIR' if data.name == 'folder' else 'FILE.npz'}.")
  require(not data.path or data.name in OWN_DATA,
          f"config.data.path={data.path!r} is read only with config.data.name='folder' or "
          f"'npz'; config.data.name={data.name!r} is a TFDS dataset.")
  for key, length in (("data.image_size", 2), ("data.image_shape", 3)):
    value = _get(config, key)
    require(value == () or (is_int_tuple(value) and len(value) == length),
            f"config.{key}={value!r} must be empty or {length} positive integers, e.g. "
            f"--config.{key}='{(32, 32, 3)[:length]!r}'.")
  if data.image_size and is_int_tuple(data.image_shape):
    require(tuple(data.image_shape[:2]) == tuple(data.image_size),
            f"config.data.image_shape={tuple(data.image_shape)!r} disagrees with "
            f"config.data.image_size={tuple(data.image_size)!r}.")
  require(isinstance(data.max_device_mb, (int, float)) and data.max_device_mb >= 0,
          f"config.data.max_device_mb={data.max_device_mb!r} must be a number >= 0.")
  value = data.test_size
  require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
          f"config.data.test_size={value!r} must be a non-negative integer.")
  components = config.model.logistic_mixture_components
  require(isinstance(components, int) and not isinstance(components, bool) and components > 0,
          f"config.model.logistic_mixture_components={components!r} must be a positive "
          "integer.")
  if config.model.likelihood == "logistic_mixture":
    require(data.binarization == "none",
            "config.model.likelihood='logistic_mixture' is a likelihood of 8-bit pixels: set "
            f"config.data.binarization='none', not {data.binarization!r}.")

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
    require(config.data.name not in UNLABELLED_DATASETS,
            f"config.model.conditional=True needs labels, but config.data.name="
            f"{config.data.name!r} has none: use mnist or fashion_mnist, or set "
            "config.model.conditional=False.")
    require(0 <= config.figures.label < config.model.num_classes,
            f"config.figures.label={config.figures.label!r} must be in "
            f"[0, config.model.num_classes={config.model.num_classes}).")

  # What each family cannot take.
  if config.model.family == "vampprior":
    require(config.model.stochastic_layers == 1,
            "config.model.family='vampprior' has one stochastic layer: set "
            "config.model.stochastic_layers=1.")
    require(not config.model.conditional,
            "config.model.family='vampprior' is unconditional (its pseudo-inputs carry no "
            "label): set config.model.conditional=False.")
    require(config.loss.objective != "piwae",
            "config.loss.objective='piwae' trains the inference and the generative networks "
            "on different bounds, but the VampPrior's encoder is both: use 'miwae' or "
            "'iwae'.")
    require(config.model.vampprior.num_pseudo_inputs >= 1,
            f"config.model.vampprior.num_pseudo_inputs="
            f"{config.model.vampprior.num_pseudo_inputs!r} must be a positive integer.")
    require(config.model.vampprior.pseudo_input_stddev >= 0,
            "config.model.vampprior.pseudo_input_stddev must be >= 0.")
  if config.model.family == "iaf":
    require(config.model.stochastic_layers == 1,
            "config.model.family='iaf' has one stochastic layer: set "
            "config.model.stochastic_layers=1.")
    for key in ("steps", "hidden_dim"):
      value = config.model.iaf[key]
      require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
              f"config.model.iaf.{key}={value!r} must be a positive integer.")

  if is_int_tuple(data.image_shape) and len(data.image_shape) == 3:
    errors += data_errors(config, tuple(data.image_shape))

  if errors:
    raise ValueError("Invalid config:\n  " + "\n  ".join(errors))


def data_errors(config, image_shape: tuple[int, int, int], num_train: int | None = None,
                num_classes: int | None = None) -> list[str]:
  """What the config cannot take from data of this shape (and, once loaded, this many
  training images and classes); [] when nothing. `validate` runs it when
  config.data.image_shape is set, the loop once the data is read."""
  errors = []
  height, width, _ = image_shape
  conv = config.model.conv
  if config.model.name == "conv" and conv.decoder_output == "conv":
    reached = conv.decoder_initial_side * math.prod(conv.decoder_strides)
    if not height == width == reached:
      errors.append(
          f"config.model.conv.decoder_output='conv' builds a {reached}x{reached} map "
          f"(decoder_initial_side={conv.decoder_initial_side} times the decoder_strides "
          f"{tuple(conv.decoder_strides)}), but the images are {height}x{width}: choose them "
          f"so that side * prod(strides) = {height}{'' if height == width else ' = width'}, "
          "or use decoder_output='dense' (any size).")
  if num_classes is not None and config.model.conditional:
    if not num_classes:
      errors.append(f"config.model.conditional=True needs labels, but "
                    f"{config.data.name!r} has none: set config.model.conditional=False, "
                    "or give the images labels (class sub-folders, an npz 'labels' array).")
    elif num_classes != config.model.num_classes:
      errors.append(f"config.model.num_classes={config.model.num_classes} but the data has "
                    f"{num_classes} classes: set --config.model.num_classes={num_classes}.")
  if num_train is not None and config.model.family == "vampprior":
    pseudo_inputs = config.model.vampprior.num_pseudo_inputs
    if pseudo_inputs > num_train:
      errors.append(
          f"config.model.vampprior.num_pseudo_inputs={pseudo_inputs} exceeds the "
          f"{num_train} training images: the pseudo-inputs stand for a sample of them; use "
          f"at most {num_train}.")
  return errors


def with_data(config, image_shape: tuple[int, int, int], num_train: int,
              num_classes: int) -> ml_collections.ConfigDict:
  """A copy of `config` with config.data.image_shape the data's, after checking that the
  config can take this data (a ValueError naming the keys otherwise)."""
  image_shape = tuple(int(d) for d in image_shape)
  errors = data_errors(config, image_shape, num_train, num_classes)
  if config.data.image_shape and tuple(config.data.image_shape) != image_shape:
    errors.append(f"config.data.image_shape={tuple(config.data.image_shape)!r} but the data's "
                  f"images are {image_shape!r}: leave the key empty (it is read from the "
                  "data) or fix config.data.image_size.")
  if errors:
    raise ValueError(f"The config does not fit the data {config.data.name!r}:\n  "
                     + "\n  ".join(errors))
  resolved = config.copy_and_resolve_references()  # Locked as `config` is.
  resolved.data.image_shape = image_shape
  return resolved
