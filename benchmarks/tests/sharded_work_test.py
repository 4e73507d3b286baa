"""The training steps shard their work: counted with the lab's FLOP counter
on the compiled programs of 8 (fake CPU) devices."""

import jax
import pytest

from benchmarks import flop_count, hlo
from configs import tiny
from fit_jax import models as models_lib
from fit_jax.runtime import run_once_compile
from fit_jax.training import batches, train, train_state


def _setup(config):
  models = models_lib.build_models(config.model)
  mesh = train_state.make_mesh(jax.devices())
  state = train_state.create_train_state(config, models, jax.random.PRNGKey(0), mesh)
  return mesh, state, train.TrainSteps(models, config, mesh, state)


@pytest.mark.parametrize(
  "fuse,norm_group_size,upsample", [(True, 4, "resize_conv"), (False, 0, "phase_2x2")]
)
def test_no_device_computes_another_devices_images(fuse, norm_group_size, upsample):
  """Data parallelism without replicated work: on 8 devices each device's
  compiled program does 1/8 of the model's FLOPs, in both steps. (Before,
  fused calls, the alignment gather and the pool images made every device
  run the generator, SphereFace and D on the whole batch: 2.9x the work.)
  Norm groups of 4 with 2 images per device straddle devices. Both
  upsampling forms that backends use (phase_2x2's edge padding once had a
  gradient that padded the batch axis: a collective-permute)."""
  config = tiny.get_config()
  config.train.fuse_calls = fuse
  config.model.norm_group_size = norm_group_size
  config.model.generator.upsample = upsample
  mesh, state, steps = _setup(config)
  batch = steps.put_batch(batches.random_batch(config, 16))
  key = jax.random.PRNGKey(0)
  generated = jax.eval_shape(steps.generator, state, batch, key)[1]
  for step, args in (
    (steps.generator, (state, batch, key)),
    (steps.discriminator, (state, batch, generated, key)),
  ):
    model = sum(flop_count.jaxpr_flops(step, *args).values())
    # Compiled, never run: the HLO passes that partition the work run as
    # always; only XLA:CPU's code generation skips its optimisations.
    compiled = step.lower(*args).compile(run_once_compile.CPU_OPTIONS).as_text()
    assert flop_count.hlo_module_flops(compiled) * mesh.size == pytest.approx(model, rel=0.05)
    if step is steps.generator:
      # No images or activations travel either: only gradients and BN
      # statistics are summed. (The D step gathers images into its
      # replicated pools.)
      opcodes = {i.opcode for i in hlo.parse_hlo_module(compiled)[0]}
      moves = {"all-gather", "all-to-all", "collective-permute", "reduce-scatter"}
      assert "all-reduce" in opcodes and not opcodes & moves
