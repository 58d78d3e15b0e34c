"""A convolutional VAE on CIFAR-10 (32x32 RGB), with the discretized logistic mixture
likelihood of 8-bit pixels, reported in bits per dimension.

Encoder: conv 64, 128, 256 (k4, stride 2, 'SAME', ReLU) to 4x4x256, dense mean and
log-variance of a 128-dimensional latent. Decoder: dense to 4x4x256, conv-transpose 256,
128, 64 (k4, stride 2, ReLU) to 32x32x64, then a conv to each pixel's mixture of 10
discretized logistics (PixelCNN++'s, channels coupled; 100 outputs per pixel). Adam 2e-4,
batch 64, 45000 training images (5000 held out for validation), 100 epochs.

    python -m vae_jax.main --config=configs/cifar10.py --workdir=runs/cifar10
    python -m vae_jax.main --config=configs/cifar10.py:short --workdir=runs/cifar10_short

`:short` trains 5 epochs. The test NLL uses k = 1000 importance samples (a decoder pass
costs about 1 GFLOP here, so k = 5000 on the 10,000 test images is 5e16 FLOP); see
docs/your_data.md for the literature's bits/dim and what was measured.
"""

from vae_jax import config_schema


def get_config(arg=None):
  options = config_schema.parse_config_arg(arg, "configs/cifar10.py", short=False)
  config = config_schema.default_config()
  config.data.name = "cifar10"
  config.data.binarization = "none"
  config.data.validation_size = 5000

  config.model.name = "conv"
  config.model.latent_dim = 128
  config.model.activation = "relu"
  config.model.conv.kernel_size = 4
  config.model.conv.encoder_features = (64, 128, 256)
  config.model.conv.encoder_strides = (2, 2, 2)
  config.model.conv.decoder_dense_dims = (4 * 4 * 256,)
  config.model.conv.decoder_initial_side = 4
  config.model.conv.decoder_features = (256, 128, 64)
  config.model.conv.decoder_strides = (2, 2, 2)
  config.model.conv.decoder_conv_activation = "relu"
  config.model.conv.decoder_output = "conv"
  config.model.likelihood = "logistic_mixture"
  config.model.logistic_mixture_components = 10

  config.loss.objective = "elbo"
  config.loss.num_samples = 1

  config.train.batch_size = 64
  config.train.learning_rate = 2e-4
  config.train.num_epochs = 5 if options.short else 100
  config.train.steps_per_dispatch = 1  # As configs/conv.py: convolutions inside a scan.
  config.figures.every_epochs = 1 if options.short else 10
  config.eval.num_importance_samples = 1000
  config.eval.nll_batch_size = 10
  config.eval.importance_chunk_size = 100
  return config
