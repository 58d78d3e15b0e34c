"""Results do not depend on the number of devices: 1 and 8 (fake CPU) devices agree.

One subprocess with 8 devices (XLA_FLAGS must be set before JAX is imported) runs every
check, each comparing a 1-device mesh with the 8-device one, to rtol/atol 1e-5:
the training loss, metrics and gradients of one step, and the parameters after it; the
same for a vectorized group of 2 runs; the -ELBO evaluator; and the per-example
importance-sampled NLL of a split that does not fill its last batch.
"""

import textwrap

import pytest

from tests.helpers import MNIST_SHAPE, run_script

_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from tests.helpers import MNIST_SHAPE, tiny_config
    from tests.train_test import _fixed_batch
    from vae_jax import evaluators, losses, models, parallel, steps
    assert jax.device_count() == 8, jax.devices()

    def close(a, b, what):
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=what)
      print("equal on 1 and 8 devices:", what)

    config = tiny_config()
    config.data.binarization = "dynamic"  # Its per-example key must not depend on devices.
    with_dropout = tiny_config()
    with_dropout.data.binarization, with_dropout.model.dropout_rate = "dynamic", 0.1
    model = models.get_model(config.model, MNIST_SHAPE)
    batch = _fixed_batch(batch_size=16)
    meshes = {n: parallel.make_mesh(jax.devices()[:n]) for n in (1, 8)}
    weights = losses.loss_weights(config)
    results = {}
    for n, mesh in meshes.items():
      state = steps.create_train_state(model, config, jax.random.key(0))
      # With dropout, whose per-example key must not depend on the devices either. (Not
      # in the steps below: Adam's first update, g / (|g| + eps), magnifies the 1e-9
      # differences of gradients that dropout makes almost zero.)
      grads = jax.jit(jax.shard_map(
          lambda p, b, r: steps.make_grads_fn(models.get_model(with_dropout.model, MNIST_SHAPE),
                                              with_dropout)(p, b, r, weights), mesh=mesh,
          in_specs=(P(), P(parallel.BATCH_AXIS), P()), out_specs=(P(), P())))(
              state.params, batch, jax.random.key(7))
      program = steps.make_train_program(model, [config], mesh, steps_per_epoch=1)
      indices = jnp.arange(16, dtype=jnp.int32)[None]
      new_state, metrics = program(parallel.replicate(state, mesh), batch, indices,
                                   jax.random.key(7), 1)
      results[n] = (grads, metrics, new_state.params)
    close(results[1][0], results[8][0], "gradients and metrics of one step")
    close(results[1][1:], results[8][1:], "metrics and parameters after one step")

    # A vectorized group of two runs (another seed and KL weight for the second).
    other = tiny_config()
    other.data.binarization = "dynamic"
    other.seed, other.loss.kl_weight = 1, 0.5
    group = {}
    for n, mesh in meshes.items():
      states = [steps.create_train_state(model, c, jax.random.key(c.seed))
                for c in (config, other)]
      program = steps.make_train_program(model, [config, other], mesh, steps_per_epoch=1)
      indices = jnp.stack([jnp.arange(16, dtype=jnp.int32)[None]] * 2)
      group[n] = program(parallel.replicate(steps.stack_states(states), mesh), batch, indices,
                         jax.random.split(jax.random.key(7), 2), 1)
    close(group[1], group[8], "a vectorized group's parameters and metrics")

    # Evaluation of 21 examples: batches of 8 (the last padded), 1 example per device.
    config.eval.batch_size = config.eval.nll_batch_size = 8
    config.eval.importance_chunk_size = 40
    params = steps.create_train_state(model, config, jax.random.key(0)).params
    images = np.random.default_rng(0).integers(0, 256, (21, 28, 28, 1)).astype(np.uint8)
    dataset = {"image": jnp.asarray(images), "label": jnp.zeros(21, "int32")}
    elbo, nll = {}, {}
    for n, mesh in meshes.items():
      args = (parallel.replicate(params, mesh), parallel.replicate(dataset, mesh),
              jax.random.key(5))
      evaluator = evaluators.Evaluators(model, config, mesh)
      elbo[n] = evaluator.neg_elbo(*args, config)
      nll[n] = evaluator.nll(*args, config, 100)
    close(elbo[1], elbo[8], "-ELBO evaluation")
    assert nll[1]["per_example_nll"].shape == (21,)
    close(nll[1]["per_example_nll"], nll[8]["per_example_nll"], "per-example NLL")
""")


@pytest.mark.slow
def test_training_and_evaluation_give_the_same_numbers_on_1_and_8_devices():
  stdout = run_script(_SCRIPT, devices=8)
  for what in ("gradients and metrics of one step", "metrics and parameters after one step",
               "a vectorized group's parameters and metrics", "-ELBO evaluation",
               "per-example NLL"):
    assert f"equal on 1 and 8 devices: {what}" in stdout, what
