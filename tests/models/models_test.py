"""Networks: exact parameter counts, shapes, normalisation modes, API."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default, tiny
from fit_jax import models as models_lib
from fit_jax.models import discriminator as disc_lib
from fit_jax.models import generator_layout, layers, padding
from fit_jax.runtime import run_once_compile


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_parameter_counts_equal_reference():
  config = default.get_config()
  config.model.norm = "batch_stats"  # the reference's mode: no running stats
  m = models_lib.build_models(config.model)
  key = jax.random.PRNGKey(0)
  x = jnp.ones((2, 128, 128, 3))
  z = jnp.ones((2, 16))
  shapes = {
    "G": jax.eval_shape(lambda: m.generator.init(key, x, z, train=True)),
    "D": jax.eval_shape(lambda: m.discriminator.init(key, x, branch="M", train=True)),
    "Q": jax.eval_shape(lambda: m.password_head.init(key, x, x, train=True)),
    "FR": jax.eval_shape(lambda: m.sphereface.init(key, jnp.ones((2, 112, 96, 3)))),
  }
  counts = {k: _count(v["params"]) for k, v in shapes.items()}
  assert counts == {"G": 11_433_795, "D": 11_062_528, "Q": 6_988_672, "FR": 28_084_544}
  # The reference's BN has no running statistics: neither has batch_stats mode.
  assert "batch_stats" not in shapes["G"]


@pytest.fixture(scope="module")
def tiny_models():
  config = tiny.get_config()
  # The reference's mode: train=True applies need no mutable collections.
  config.model.norm = "batch_stats"
  return config, models_lib.build_models(config.model)


def test_shapes_and_ranges(tiny_models):
  config, m = tiny_models
  key = jax.random.PRNGKey(0)
  x = jax.random.uniform(key, (4, 64, 64, 3), minval=-1, maxval=1)
  z = jax.random.bernoulli(key, 0.5, (4, 16)) - 0.5
  # Compiled rather than dispatched op by op.
  vg = _init(m.generator, key, x, z)
  y = jax.jit(lambda v: m.generator.apply(v, x, z, train=True))(vg)
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert float(jnp.abs(y).max()) <= 1.0
  vd = jax.jit(lambda x: m.discriminator.init(key, x, branch="M", train=True))(x)
  assert set(vd["params"]) == {"fine_M", "fine_R", "fine_WR", "coarse"}
  fine, coarse = jax.jit(lambda v, x: m.discriminator.apply(v, x, branch="WR", train=True))(vd, x)
  assert fine.shape == (4, 6, 6, 1) and coarse.shape == (4, 2, 2, 1)
  q = jax.eval_shape(
    lambda: m.password_head.apply(m.password_head.init(key, x, y, train=True), x, y, train=True)
  )
  assert q.shape == (4, 4, 16)
  crops = jnp.zeros((4, 112, 96, 3)) + 0.1
  (cos, phi), feats = jax.eval_shape(
    lambda: m.sphereface.apply(m.sphereface.init(key, crops), crops)
  )
  assert cos.shape == phi.shape == (4, 10) and feats.shape == (4, 512)
  with pytest.raises(ValueError, match="branch"):
    m.discriminator.apply(vd, x, branch="X", train=True)


def test_paper_size_discriminator_maps():
  d = disc_lib.MultiScaleDiscriminator(ndf=4)
  x = jnp.ones((2, 128, 128, 3))
  v = d.init(jax.random.PRNGKey(0), x, branch="M", train=True)
  fine, coarse = d.apply(v, x, branch="M", train=True)
  assert fine.shape == (2, 14, 14, 1) and coarse.shape == (2, 6, 6, 1)


def test_avg_pool_excludes_padding():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  out = disc_lib.avg_pool_exclude_pad(x)
  # Top-left window covers rows/cols 0..1 only: mean of 0, 1, 4, 5.
  assert float(out[0, 0, 0, 0]) == pytest.approx(2.5)
  # Interior window rows 1..3, cols 1..3.
  assert float(out[0, 1, 1, 0]) == pytest.approx(np.mean([5, 6, 7, 9, 10, 11, 13, 14, 15]))


def test_password_channels_folded_exactly():
  # The generator folds the 16 constant password channels into a bias: it
  # must equal the plain 19-channel reflect-padded 7x7 convolution.
  g = models_lib.Generator(ngf=8, num_blocks=1)
  key = jax.random.PRNGKey(2)
  x = jax.random.uniform(key, (2, 32, 32, 3), minval=-1, maxval=1)
  z = jax.random.bernoulli(key, 0.5, (2, 16)) - 0.5
  v = _init(g, key, x, z)
  kernel = v["params"]["conv_in"]
  full = jnp.concatenate([x, jnp.broadcast_to(z[:, None, None], (2, 32, 32, 16))], -1)
  naive = jax.lax.conv_general_dilated(
    padding.reflect_pad(full, 3),
    kernel,
    (1, 1),
    "VALID",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  _, inter = g.apply(v, x, z, train=True, capture_intermediates=True)
  del inter
  folded = (
    jax.lax.conv_general_dilated(
      padding.reflect_pad(x, 3),
      kernel[:, :, :3],
      (1, 1),
      "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    + (z @ kernel[:, :, 3:].sum((0, 1)))[:, None, None]
  )
  np.testing.assert_allclose(folded, naive, atol=1e-5)


@pytest.mark.parametrize(
  "shape,pad,upsample",
  [
    ((2, 5, 7, 3), 1, 1),
    ((2, 9, 6, 4), 3, 1),
    ((2, 4, 6, 3), 1, 2),
    ((1, 3, 5, 2), 3, 2),
    ((1, 2, 2, 1), 1, 2),
  ],
)
def test_reflect_pad_is_upsample_then_pad(shape, pad, upsample):
  """The one-gather reflect pad (with nearest upsampling folded in) equals
  nn.Upsample + nn.ReflectionPad2d composed of plain ops, value and gradient,
  and its gradient is no scatter (the automatic transpose of a gather)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  out = padding.reflect_pad(x, pad, upsample)
  ref = padding.reflect_pad_reference(x, pad, upsample)
  assert out.shape == ref.shape
  np.testing.assert_array_equal(out, ref)
  cotangent = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
  grad = jax.vjp(lambda x: padding.reflect_pad(x, pad, upsample), x)[1](cotangent)[0]
  grad_ref = jax.vjp(lambda x: padding.reflect_pad_reference(x, pad, upsample), x)[1](cotangent)[0]
  np.testing.assert_allclose(grad, grad_ref, rtol=1e-6, atol=1e-6)
  grad_jaxpr = str(
    jax.make_jaxpr(jax.grad(lambda x: jnp.sum(padding.reflect_pad(x, pad, upsample))))(x)
  )
  assert "scatter" not in grad_jaxpr
  # In bf16 the cells that copy one pixel (up to 16 with upsampling) are
  # summed in float32 and rounded once, by the GPU/CPU formulation (the
  # default here) and the TPU one alike.
  cotangent16 = cotangent.astype(jnp.bfloat16)
  grad16 = jax.vjp(lambda x: padding.reflect_pad(x, pad, upsample), x.astype(jnp.bfloat16))[1](
    cotangent16
  )[0]
  exact = jax.vjp(lambda x: padding.reflect_pad_reference(x, pad, upsample), x)[1](
    cotangent16.astype(jnp.float32)
  )[0]
  assert grad16.dtype == jnp.bfloat16
  np.testing.assert_array_equal(grad16, exact.astype(jnp.bfloat16))
  for formulation in (padding._transpose_as_chain, padding._transpose_as_slices):
    np.testing.assert_array_equal(
      formulation(cotangent16, pad, upsample, jnp.bfloat16), exact.astype(jnp.bfloat16)
    )
    np.testing.assert_allclose(
      formulation(cotangent, pad, upsample, jnp.float32), grad_ref, rtol=1e-6, atol=1e-6
    )
  # The export's ops (TFLite has no gather with a run-time batch) agree.
  np.testing.assert_array_equal(padding.reflect_pad(x, pad, upsample, ops="concatenate"), ref)
  with pytest.raises(ValueError, match="reflect padding 4 needs more than"):
    padding.reflect_pad(jnp.zeros((1, 4, 4, 1)), 4)
  with pytest.raises(ValueError, match="reflect pad ops 'scatter' is not one of"):
    padding.reflect_pad(x, pad, upsample, ops="scatter")


_RGB_CONV_VARIANTS = [("space_to_depth", 2), ("space_to_depth", 4)]


@pytest.mark.parametrize("rgb_conv,rgb_block", _RGB_CONV_VARIANTS)
def test_rgb_conv_variants_compute_the_conv(rgb_conv, rgb_block):
  """rgb_conv=space_to_depth (the 7x7 RGB convolutions as convolutions of
  2x2 or 4x4 pixel blocks) has the conv's parameters, outputs and
  gradients, folded too."""
  import dataclasses

  from fit_jax.deploy import inference

  g = models_lib.Generator(
    ngf=8, num_blocks=1, norm="batch", rgb_conv=rgb_conv, rgb_block=rgb_block
  )
  conv = dataclasses.replace(g, rgb_conv="conv")
  key = jax.random.PRNGKey(5)
  x = jax.random.uniform(key, (2, 32, 32, 3), minval=-1, maxval=1)
  z = jax.random.bernoulli(key, 0.5, (2, 16)) - 0.5
  v = _init(g, key, x, z)
  assert jax.tree.map(jnp.shape, jax.eval_shape(_init, conv, key, x, z)) == jax.tree.map(
    jnp.shape, v
  )
  grads, out = _generator_grads(g, v, x, z)
  grads_ref, out_ref = _generator_grads(conv, v, x, z)
  np.testing.assert_allclose(out, out_ref, atol=1e-5)
  largest = max(float(jnp.abs(b).max()) for b in jax.tree.leaves(grads_ref))
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    # Relative to each leaf's scale; biases before a norm have gradients that
    # are 0 up to rounding noise, so their scale has a floor.
    scale = max(float(jnp.abs(b).max()), 1e-2 * largest)
    np.testing.assert_allclose(a, b, atol=2e-4 * scale)
  folded, fv = inference.fold_batch_norm(g, v)
  np.testing.assert_allclose(_infer(folded, fv, x, z), _infer(conv, v, x, z), atol=1e-5)
  with pytest.raises(ValueError, match="rgb_conv 'fft' is not one of"):
    dataclasses.replace(g, rgb_conv="fft").init(key, x, z, train=True)
  with pytest.raises(ValueError, match="rgb_block must be at least 1; got 0"):
    dataclasses.replace(g, rgb_block=0).init(key, x, z, train=True)
  with pytest.raises(ValueError, match="image 30x30 is not a multiple of the"):
    dataclasses.replace(g, rgb_conv="space_to_depth", rgb_block=4).init(
      key, x[:, :30, :30], z, train=True
    )


@pytest.mark.parametrize("rgb_conv,rgb_block", _RGB_CONV_VARIANTS)
def test_rgb_conv_variants_in_bfloat16_are_as_accurate_as_the_conv(rgb_conv, rgb_block):
  """Against the float32 model, bfloat16 with rgb_conv=space_to_depth errs
  no more than bfloat16 with lax.conv, output and every gradient."""
  import dataclasses

  g = models_lib.Generator(ngf=8, num_blocks=1, norm="batch")
  key = jax.random.PRNGKey(5)
  x = jax.random.uniform(key, (2, 32, 32, 3), minval=-1, maxval=1)
  z = jax.random.bernoulli(key, 0.5, (2, 16)) - 0.5
  v = _init(g, key, x, z)
  reference = dataclasses.replace(g, rgb_conv="conv")
  errors = {
    mode: _bfloat16_errors(reference, v, x, z, rgb_conv=mode, rgb_block=rgb_block)
    for mode in (rgb_conv, "conv")
  }
  _assert_as_accurate(errors[rgb_conv], errors["conv"])


def test_phase_2x2_windows_are_the_same_on_every_platform():
  """phase_2x2's depth-to-space of shifted windows: the pad-and-reshape form
  (GPU, CPU) and the stacked slices (TPU) place every phase alike."""
  from fit_jax.models import upsampling

  y = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4, 2, 2, 3))
  shifted = upsampling._phase_windows_shifted(y)
  assert shifted.shape == (2, 8, 6, 3)
  np.testing.assert_array_equal(shifted, upsampling._phase_windows_stacked(y))
  a, b_, i, j = 1, 0, 2, 1  # output pixel (2i + a, 2j + b) is y at (i + a, j + b)
  np.testing.assert_array_equal(shifted[:, 2 * i + a, 2 * j + b_], y[:, i + a, j + b_, a, b_])


@pytest.mark.parametrize("upsample", ["phase_2x2"])
def test_phase_upsampling_in_bfloat16_is_as_accurate_as_the_resize_conv(upsample):
  """Against the float32 model, bfloat16 with the phase upsampling (tap sums
  rounded to bf16 once) errs no more than bfloat16 with the
  resize-convolution, output and every gradient."""

  g = models_lib.Generator(ngf=8, num_blocks=1, norm="batch")
  key = jax.random.PRNGKey(6)
  x = jax.random.uniform(key, (2, 32, 32, 3), minval=-1, maxval=1)
  z = jax.random.bernoulli(key, 0.5, (2, 16)) - 0.5
  v = _init(g, key, x, z)
  errors = {mode: _bfloat16_errors(g, v, x, z, upsample=mode) for mode in (upsample, "resize_conv")}
  _assert_as_accurate(errors[upsample], errors["resize_conv"])


def _assert_as_accurate(errors: list[float], baseline: list[float]) -> None:
  """_bfloat16_errors of a variant against the baseline's: the output's
  within 3e-2 and 1.1x, the gradients' mean relative error within 1.1x and
  each within 1.5x (+0.01). Each leaf's bfloat16 error on a tiny random
  model is noise of ~20 % between two exact formulations (summation order
  moves it across CPUs: a 1.1x bound per leaf failed on an AMD EPYC), so
  the tight bound is on the mean over the 22 leaves."""
  assert errors[0] < 3e-2
  assert errors[0] < baseline[0] * 1.1 + 0.01, (errors[0], baseline[0])
  assert np.mean(errors[1:]) < np.mean(baseline[1:]) * 1.1, (errors, baseline)
  np.testing.assert_array_less(errors[1:], np.array(baseline[1:]) * 1.5 + 0.01)


def _bfloat16_errors(reference, variables, x, z, **fields) -> list[float]:
  """The reference generator with `fields` replaced, in bfloat16, against
  the reference in float32: the output's largest error, then each
  gradient's relative error (the ~0 gradients before norms left out)."""
  import dataclasses

  grads_ref, out_ref = _generator_grads(reference, variables, x, z)
  grads, out = _generator_grads(
    dataclasses.replace(reference, dtype=jnp.bfloat16, **fields), variables, x, z
  )
  return [float(jnp.abs(out - out_ref).max())] + [
    float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref))
    if float(jnp.linalg.norm(b)) > 1e-3
  ]


# Each program below runs once or twice per model form, so all are compiled
# as a fresh training state is (fit_jax.runtime.run_once_compile: XLA:CPU
# skips its code-generation optimisations on the same HLO). Op-by-op
# dispatch was slower still.
_run_once = functools.partial(
  jax.jit, static_argnums=0, compiler_options=run_once_compile.options(jax.devices())
)


@_run_once
def _init(model, key, x, z):
  return model.init(key, x, z, train=True)


@_run_once
def _infer(model, variables, x, z):
  return model.apply(variables, x, z, train=False)


@_run_once
def _generator_grads(model, variables, x, z):
  """The generator's parameter gradients of a training-mode call."""

  def loss(params):
    out, _ = model.apply({**variables, "params": params}, x, z, train=True, mutable=["batch_stats"])
    return jnp.sum(out**2), out

  (_, out), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
  return grads, out


def test_unknown_upsample_is_one_clear_error():
  g = models_lib.Generator(ngf=8, num_blocks=1, upsample="bilinear")
  with pytest.raises(ValueError, match="upsample 'bilinear' is not one of"):
    g.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16)), train=True)


def test_phase_2x2_upsampling_is_the_resize_convolution():
  """upsample='phase_2x2' (one 2x2 convolution of the low-resolution map
  with the four output phases as channels) computes the reference's nearest
  x2 + reflect pad + 3x3 conv with the same parameters, in training
  (gradients too) and folded."""
  import dataclasses

  from fit_jax.deploy import inference

  g = models_lib.Generator(ngf=8, num_blocks=1, norm="batch")
  sub = dataclasses.replace(g, upsample="phase_2x2")
  key = jax.random.PRNGKey(3)
  x = jax.random.uniform(key, (3, 32, 24, 3), minval=-1, maxval=1)
  z = jax.random.bernoulli(key, 0.5, (3, 16)) - 0.5
  v = _init(g, key, x, z)
  assert jax.tree.structure(jax.eval_shape(_init, sub, key, x, z)) == jax.tree.structure(v)

  g_ref, out_ref = _generator_grads(g, v, x, z)
  g_sub, out_sub = _generator_grads(sub, v, x, z)
  np.testing.assert_allclose(out_sub, out_ref, atol=1e-5)
  # Grads reach ~25; the biases before a BatchNorm have a true gradient of
  # 0 and get rounding noise at ~1e-5 of that scale.
  scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(g_ref))
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_sub)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=2e-5 * scale)
  folded, fv = inference.fold_batch_norm(sub, v)
  np.testing.assert_allclose(_infer(folded, fv, x, z), _infer(g, v, x, z), atol=1e-5)


@pytest.mark.parametrize("mode", ["batch", "instance"])
def test_deterministic_modes_do_not_depend_on_batch(mode):
  g = models_lib.Generator(ngf=8, num_blocks=1, norm=mode)
  key = jax.random.PRNGKey(3)
  x = jax.random.uniform(key, (6, 32, 32, 3), minval=-1, maxval=1)
  z = jax.random.bernoulli(key, 0.5, (6, 16)) - 0.5
  v = _init(g, key, x, z)
  if mode == "batch":
    _, updates = g.apply(v, x, z, train=True, mutable=["batch_stats"])
    v = {**v, **updates}
  alone = _infer(g, v, x[:1], z[:1])
  together = _infer(g, v, x, z)
  np.testing.assert_allclose(alone[0], together[0], atol=1e-5)


def test_batch_stats_mode_depends_on_batch_and_groups():
  # The reference mode normalises with the batch's statistics even at test
  # time; groups reproduce the per-GPU statistics of DataParallel.
  key = jax.random.PRNGKey(4)
  x = jax.random.normal(key, (4, 8, 8, 2)) * 3 + 1
  norm = layers.Norm("batch_stats")
  v = norm.init(key, x, train=False)
  whole = norm.apply(v, x, train=False)
  assert not np.allclose(norm.apply(v, x[:2], train=False), whole[:2], atol=1e-3)
  grouped = layers.Norm("batch_stats", group_size=2).apply(v, x, train=False)
  np.testing.assert_allclose(grouped[:2], norm.apply(v, x[:2], train=False), atol=1e-5)
  with pytest.raises(ValueError, match="divisible"):
    layers.Norm("batch_stats", group_size=3).apply(v, x, train=False)


def test_running_stats_follow_torch_momentum():
  key = jax.random.PRNGKey(5)
  x = jax.random.normal(key, (4, 8, 8, 2)) * 2 + 3
  norm = layers.Norm("batch")
  v = norm.init(key, x, train=True)
  _, upd = norm.apply(v, x, train=True, mutable=["batch_stats"])
  mean = np.asarray(x).mean(axis=(0, 1, 2))
  var = np.asarray(x).var(axis=(0, 1, 2), ddof=1)
  np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 + 0.1 * var, rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params(tiny_models):
  config, _ = tiny_models
  cfg = config.copy_and_resolve_references()
  cfg.model.dtype = "bfloat16"
  m = models_lib.build_models(cfg.model)
  key = jax.random.PRNGKey(0)
  x = jax.random.uniform(key, (2, 64, 64, 3), minval=-1, maxval=1)
  z = jnp.full((2, 16), 0.5)
  v = _init(m.generator, key, x, z)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v))
  y16 = _generator_grads(m.generator, v, x, z)[1]
  m32 = models_lib.build_models(config.model)
  y32 = _generator_grads(m32.generator, v, x, z)[1]
  assert y16.dtype == jnp.float32
  # bf16 has 8 mantissa bits: outputs in [-1, 1] agree to a few 1e-2.
  assert float(jnp.abs(y16 - y32).max()) < 0.1
  assert float(jnp.abs(y16 - y32).mean()) < 0.02


def test_bad_dtype_is_one_clear_error(tiny_models):
  config, _ = tiny_models
  cfg = config.copy_and_resolve_references()
  cfg.model.dtype = "float16"
  with pytest.raises(ValueError, match="config.model.dtype"):
    models_lib.build_models(cfg.model)


def test_layout_options_left_auto_or_absent_follow_the_backend(tiny_models):
  # The shipped config leaves them "auto"; configs written before an option
  # existed lack it: both take the backend's entry, and a named value stays.
  config, _ = tiny_models
  names = generator_layout.LAYOUT_OPTIONS
  cfg = config.copy_and_resolve_references()
  with cfg.model.generator.unlocked():
    for name in names:
      del cfg.model.generator[name]
  cpu = generator_layout.BY_PLATFORM["cpu"]
  for model_config in (cfg.model, default.get_config().model):
    assert generator_layout.of(models_lib.build_models(model_config).generator) == cpu
  tpu = models_lib.build_models(cfg.model, platform="tpu").generator
  assert generator_layout.of(tpu) == generator_layout.BY_PLATFORM["tpu"]
  with cfg.model.generator.unlocked():
    cfg.model.generator.rgb_block = 4
    cfg.model.generator.upsample = "phase_2x2"
  g = models_lib.build_models(cfg.model, platform="gpu").generator
  assert (g.rgb_block, g.upsample) == (4, "phase_2x2")
  assert g.rgb_conv == generator_layout.BY_PLATFORM["gpu"]["rgb_conv"]
