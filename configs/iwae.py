"""Burda et al. 2015 (IWAE) on dynamically binarized MNIST, one or two stochastic layers.

One layer: 784-200-200-50 tanh encoder, mirrored decoder with Bernoulli logits. Two
layers: 784-200-200-100 (z1) and 100-100-50 (z2) in q, mirrored in p, p(z2) = N(0, I).
Dynamically binarized MNIST with all 60000 training images (no validation split, as the
paper); Adam (0.9, 0.999, eps 1e-4), batch 20; the paper's
schedule: 3^i epochs at learning rate 0.001 * 10^(-i/7) for i = 0..7 (3280 epochs); the
test NLL with k = 5000 importance samples at the end.

Choose the variant by arg, comma-separated:
  objective=vae|iwae   the ELBO averaged over k samples, or the IWAE bound with k samples
  k=N                  samples per example in training (default 1)
  layers=1|2           stochastic layers
  stages=N             the schedule's first N stages (1..8; 8, the paper's, by default),
                       with the test NLL (k = 1000) at the end of each stage before the
                       last; stages=6 is 1 + 3 + 9 + 27 + 81 + 243 = 364 epochs
  short                the first 3 stages (13 epochs) without the stage-end NLLs, a CPU
                       budget of about a quarter of an hour for IWAE k = 50

The stage count is the one source of the run's length (train.num_epochs = 0), so
--config.train.schedule_stages=N also trains N stages.

    python -m vae_jax.main --config=configs/iwae.py:objective=iwae,k=50 --workdir=runs/iwae_k50
    python -m vae_jax.main --config=configs/iwae.py:objective=vae,k=1,short --workdir=runs/vae_short
    python -m vae_jax.main --config=configs/iwae.py:objective=vae,k=1,stages=6 --workdir=runs/s6
    python -m vae_jax.main --config=configs/iwae.py:layers=2,objective=iwae,k=50 --workdir=runs/iwae2
"""

from vae_jax import config_schema

_FULL_STAGES, _SHORT_STAGES = 8, 3


def _parse(arg):
  # layers and stages stay text, checked against their spellings as before ("stages=08"
  # is refused as it was); k is an int.
  options = config_schema.parse_config_arg(arg, "configs/iwae.py", objective="vae", k=1,
                                           layers="1", stages=None, short=False)
  if options.objective not in ("vae", "iwae"):
    raise ValueError(f"configs/iwae.py: objective={options.objective!r} is not one of "
                     "'vae', 'iwae'.")
  if options.layers not in ("1", "2"):
    raise ValueError(f"configs/iwae.py: layers={options.layers!r} is not one of 1, 2.")
  if options.stages is not None:
    if options.short:
      raise ValueError("configs/iwae.py: short is stages=3; give one of them.")
    if options.stages not in tuple(str(n) for n in range(1, _FULL_STAGES + 1)):
      raise ValueError(f"configs/iwae.py: stages={options.stages!r} is not one of "
                       f"1..{_FULL_STAGES}.")
  return options


def get_config(arg=None):
  options = _parse(arg)
  config = config_schema.default_config()
  config.data.name = "mnist"
  config.data.binarization = "dynamic"
  config.data.validation_size = 0

  config.model.name = "mlp"
  config.model.hidden_dims = (200, 200)
  config.model.latent_dim = 50
  config.model.activation = "tanh"
  if options.layers == "2":
    config.model.stochastic_layers = 2
    config.model.latent_dim = 100  # z1; z2 has 50 units behind 100-100 hidden layers.
    config.model.top_layer.hidden_dims = (100, 100)
    config.model.top_layer.latent_dim = 50
  config.model.likelihood = "bernoulli"

  config.loss.objective = "elbo" if options.objective == "vae" else "iwae"
  config.loss.num_samples = options.k

  config.train.batch_size = 20
  config.train.learning_rate = 1e-3
  config.train.learning_rate_schedule = "iwae"
  if options.short:
    stages = _SHORT_STAGES
  else:
    stages = int(options.stages or _FULL_STAGES)
    # The test NLL at each stage end but the last (the end of training gives k = 5000).
    config.eval.nll_at_epochs = tuple(config_schema.schedule_epochs(stage)
                                      for stage in range(1, stages))
  config.train.schedule_stages = stages
  config.train.num_epochs = 0  # The schedule's length: schedule_stages is the one source.
  config.train.adam_eps = 1e-4
  config.train.log_every_steps = 1000

  config.eval.num_importance_samples = 5000
  config.figures.every_epochs = 0 if options.short else 100
  return config
