"""Seeds 001/002: the convolutional VAE on grayscale MNIST.

Encoder: conv 64 k4 with strides 2, 2, 1 ('SAME'), leaky ReLU (slope 0.3), dropout 0.2
after each conv; dense mean and log-variance heads (the seeds' log-std head `0.5 * dense`
is the same parametrization); latent 8. Decoder: dense 24 and 49 (leaky ReLU), reshape to
7x7x1, conv-transpose 64 k4 with strides 2, 1, 1 (ReLU; dropout after the first two),
dense 784 with a sigmoid mean. Dropout is on in training only, from its own key.

The seeds' loss is the summed squared error + KL: a Gaussian likelihood with fixed
variance 0.5, whose negative log-likelihood is exactly that squared error plus the
constant (784/2) log(pi) = 448.73 nats, which our -ELBO includes.
Adam 5e-4, batch 64, 30000 steps (~35 epochs of the 55000 training images).

    python -m vae_jax.main --config=configs/conv.py --workdir=runs/conv
    python -m vae_jax.main --config=configs/conv.py:short --workdir=runs/conv_short

`:short` trains 3000 steps (~3.5 epochs) for a quick look.
"""

from vae_jax import config_schema


def get_config(arg=None):
  options = config_schema.parse_config_arg(arg, "configs/conv.py", short=False)
  config = config_schema.default_config()
  config.data.name = "mnist"
  config.data.binarization = "none"
  config.data.validation_size = 5000

  config.model.name = "conv"
  config.model.latent_dim = 8
  config.model.activation = "leaky_relu"
  config.model.negative_slope = 0.3
  config.model.kernel_init = "glorot_uniform"  # TF1's tf.layers default.
  config.model.dropout_rate = 0.2  # The seeds' keep_prob 0.8.
  # config.model.conv.* defaults (vae_jax/config_schema.py) are the seeds' layers above.

  config.model.likelihood = "gaussian"
  config.model.gaussian_mean = "sigmoid"
  config.model.gaussian_variance = "fixed"
  config.model.gaussian_fixed_variance = 0.5

  config.loss.objective = "elbo"
  config.loss.num_samples = 1

  config.train.batch_size = 64
  config.train.learning_rate = 5e-4
  config.train.num_steps = 3000 if options.short else 30000
  # Inside lax.scan XLA's CPU convolutions measured 20x slower (0.2 against 4 steps/s,
  # python -m vae_jax.benchmark --configs=conv --steps_per_dispatch=10): one step per call.
  config.train.steps_per_dispatch = 1
  config.figures.every_epochs = 1 if options.short else 5
  # The decoder's 28x28x64 maps take ~1 MB per importance sample: 10 examples x 200
  # samples per NLL chunk keep it near 2 GB (the defaults, 100 x 1000, would need 100 GB).
  config.eval.nll_batch_size = 10
  config.eval.importance_chunk_size = 200
  return config
