"""Update steps: group isolation, learning, sharding invariance, no retrace."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from fit_jax import models as models_lib
from fit_jax.training import batches, pools, train, train_state

pytestmark = pytest.mark.slow


def _setup(config, devices=None):
  models = models_lib.build_models(config.model)
  mesh = train_state.make_mesh(devices)
  state = train_state.create_train_state(config, models, jax.random.PRNGKey(0), mesh)
  return models, mesh, state, train.TrainSteps(models, config, mesh, state)


@pytest.fixture(scope="module")
def tiny_run():
  config = tiny.get_config()
  return config, _setup(config, jax.devices()[:1])


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _assert_same_iteration(results, rtol, metric_atol):
  """Two (metrics, generator params) results of one iteration agree.

  Biases right before a BatchNorm have an exactly-zero true gradient; Adam
  turns their rounding noise into +-lr steps, hence params atol = 2 lr. The
  same noise enters the gradient norms (up to ~3e-5 of them when the BN sums
  run in another order), hence their 10x looser rtol.
  """
  (metrics_a, params_a), (metrics_b, params_b) = results
  for name in metrics_a:
    loose = 10 if name.endswith("grad_norm") else 1
    np.testing.assert_allclose(
      metrics_b[name], metrics_a[name], rtol=rtol * loose, atol=metric_atol, err_msg=name
    )
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_allclose(b, a, rtol=rtol, atol=2e-4)


def _changed(before, after):
  return jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), before, after))


def test_each_step_changes_only_its_group(tiny_run):
  config, (models, mesh, state, steps) = tiny_run
  batch = steps.put_batch(batches.random_batch(config, 8))
  key = jax.random.PRNGKey(1)
  state = jax.tree.map(jnp.copy, state)  # the fixture's state stays usable
  gen0, disc0 = _host(state.gen.params), _host(state.disc.params)
  state, generated, g_metrics = steps.generator(state, batch, key)
  assert all(_changed(gen0["generator"], _host(state.gen.params["generator"])))
  assert any(_changed(gen0["password_head"], _host(state.gen.params["password_head"])))
  assert not any(_changed(disc0, _host(state.disc.params)))
  assert int(state.step) == 0
  assert set(generated) == {"anon", "anon2", "recon", "wrong", "wrong2"}
  gen1 = _host(state.gen.params)
  state, d_metrics = steps.discriminator(state, batch, generated, key)
  assert not any(_changed(gen1, _host(state.gen.params)))
  assert any(_changed(disc0["discriminator"], _host(state.disc.params["discriminator"])))
  assert any(_changed(disc0["sphereface"], _host(state.disc.params["sphereface"])))
  assert int(state.step) == 1
  metrics = _host({**g_metrics, **d_metrics})
  assert all(np.isfinite(v) for v in metrics.values())
  for name in [
    "g/l1_recon",
    "g/password_acc_wrong",
    "g/fr_anon",
    "g/feat_anon",
    "d/gan_fake_WR",
    "d/fr_real",
    "g/grad_norm",
    "d/param_norm",
  ]:
    assert name in metrics


def test_no_retracing_across_steps(tiny_run):
  config, (models, mesh, state, steps) = tiny_run
  state = jax.tree.map(jnp.copy, state)
  key = jax.random.PRNGKey(1)
  for i in range(3):
    state, _ = steps(state, batches.random_batch(config, 8, seed=i), key)
  assert steps.generator._cache_size() == 1
  assert steps.discriminator._cache_size() == 1


def test_both_steps_donate_the_state(tiny_run):
  # Donation lets XLA update parameters and optimizer moments in place
  # instead of holding two copies of the state.
  config, (models, mesh, state, steps) = tiny_run
  state = jax.tree.map(jnp.copy, state)
  batch = steps.put_batch(batches.random_batch(config, 8))
  key = jax.random.PRNGKey(1)
  before = jax.tree.leaves(state)
  state, generated, _ = steps.generator(state, batch, key)
  assert all(leaf.is_deleted() for leaf in before)
  before = jax.tree.leaves(state)
  state, _ = steps.discriminator(state, batch, generated, key)
  assert all(leaf.is_deleted() for leaf in before)


def test_an_iteration_returns_before_the_device_finishes(tiny_run):
  # No host synchronisation in the dispatch path (a host numpy batch, as the
  # training loop passes): when the call returns, no metric is computed yet.
  # (On accelerators the loop also runs it under a device-to-host guard.)
  config, (models, mesh, state, steps) = tiny_run
  state = jax.tree.map(jnp.copy, state)
  key = jax.random.PRNGKey(1)
  state, metrics = steps(state, batches.random_batch(config, 8), key)
  jax.block_until_ready(metrics)  # compiled and warm
  for i in range(2):
    state, metrics = steps(state, batches.random_batch(config, 8, seed=i), key)
    assert not any(m.is_ready() for m in metrics.values())
    jax.block_until_ready(metrics)


def test_each_step_descends_its_own_loss(tiny_run):
  """On a fixed batch and key, repeated generator steps lower g/loss and
  repeated discriminator steps (on fixed fakes) lower d/loss: each update
  minimises its own objective. (Measured over 10 steps: g/loss -6 %, d/loss
  -19 %, every step lower than the one before.) The adversarial game itself
  has no such monotone quantity: over 40 full iterations l1_recon sat on
  plateaus whose length moved with float summation order."""
  config, (models, mesh, state, steps) = tiny_run
  batch = steps.put_batch(batches.random_batch(config, 8))
  key = jax.random.PRNGKey(1)
  g_state, d_state = jax.tree.map(jnp.copy, state), jax.tree.map(jnp.copy, state)
  g_loss, d_loss, fakes = [], [], None
  for _ in range(10):
    g_state, generated, metrics = steps.generator(g_state, batch, key)
    g_loss.append(float(metrics["g/loss"]))
    fakes = generated if fakes is None else fakes
  for _ in range(10):
    d_state, metrics = steps.discriminator(d_state, batch, fakes, key)
    d_loss.append(float(metrics["d/loss"]))
  for name, losses, fall in (("g/loss", g_loss, 0.97), ("d/loss", d_loss, 0.9)):
    assert np.isfinite(losses).all(), (name, losses)
    assert losses[-1] < fall * losses[0], (name, losses)
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 8, (name, losses)


def test_eight_devices_match_one():
  config = tiny.get_config()
  assert jax.device_count() == 8
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    _, mesh, state, steps = _setup(config, devices)
    key = jax.random.PRNGKey(3)
    # One iteration: later ones amplify float rounding through Adam's
    # normalisation of near-zero gradients, which is not a sharding effect.
    state, metrics = steps(state, batches.random_batch(config, 8), key)
    results.append((_host(metrics), _host(state.gen.params)))
  _assert_same_iteration(results, rtol=1e-4, metric_atol=1e-5)


def test_pool_semantics():
  size = 3
  pool = {"images": jnp.zeros((size, 2, 2, 3)), "count": jnp.int32(0)}
  images = jnp.arange(1.0, 6.0)[:, None, None, None] * jnp.ones((5, 2, 2, 3))
  pool, out = pools.query_pool(pool, images[:2], jax.random.PRNGKey(0), 2)
  # Not full: stored and returned unchanged.
  np.testing.assert_array_equal(out[:, 0, 0, 0], [1.0, 2.0])
  assert int(pool["count"]) == 2
  seen_old = False
  for seed in range(20):
    p, out = pools.query_pool(pool, images[2:], jax.random.PRNGKey(seed), 3)
    values = np.asarray(out[:, 0, 0, 0])
    stored = np.asarray(p["images"][:, 0, 0, 0])
    assert int(p["count"]) == 3
    # Image 3 fills the last slot and is returned as is.
    assert values[0] == 3.0
    # Every returned image is either the new one or one that was stored.
    for new, got in zip([3.0, 4.0, 5.0], values):
      assert got == new or got in (1.0, 2.0, 3.0, 4.0)
    seen_old |= any(v < n for v, n in zip(values[1:], [4.0, 5.0]))
    assert sorted(set(stored)) == sorted(set(stored) & {1.0, 2.0, 3.0, 4.0, 5.0})
  assert seen_old  # with p=1/2 per image, 20 seeds swap at least once
  # Subsampling keeps order and count.
  _, out = pools.query_pool(
    {"images": jnp.zeros((0, 2, 2, 3)), "count": jnp.int32(0)}, images, jax.random.PRNGKey(1), 3
  )
  values = np.asarray(out[:, 0, 0, 0])
  assert len(values) == 3 and list(values) == sorted(values)


def _pool_one_by_one(stored, count, images, swap, idx):
  """The CycleGAN ImagePool rule, image by image, on numpy arrays."""
  stored, returned = stored.copy(), []
  for image, s, i in zip(images, swap, idx):
    if count < len(stored):
      stored[count] = image
      count += 1
      returned.append(image)
    elif s:
      returned.append(stored[i].copy())
      stored[i] = image
    else:
      returned.append(image)
  return stored, count, np.stack(returned)


def test_vectorized_pool_is_the_image_by_image_rule():
  # Jitted once per shape (as in the step), then every fill level of pools
  # smaller than, as large as and larger than the queried batch.
  query = jax.jit(pools.query_pool, static_argnums=3)
  draws = jax.jit(pools.pool_draws, static_argnums=(1, 2))
  rng = np.random.default_rng(0)
  for size, n in [(1, 1), (1, 5), (3, 3), (4, 9), (6, 2), (6, 13)]:
    for count in range(size + 1):
      for trial in range(3):
        stored = rng.normal(size=(size, 2, 2, 3)).astype(np.float32)
        images = rng.normal(size=(n, 2, 2, 3)).astype(np.float32)
        key = jax.random.PRNGKey(100 * size + 10 * count + trial)
        pool, out = query(
          {"images": jnp.asarray(stored), "count": jnp.int32(count)}, jnp.asarray(images), key, n
        )
        swap, idx = draws(jax.random.split(key)[0], n, size)
        want_stored, want_count, want_out = _pool_one_by_one(
          stored, count, images, np.asarray(swap), np.asarray(idx)
        )
        np.testing.assert_array_equal(pool["images"], want_stored)
        np.testing.assert_array_equal(out, want_out)
        assert int(pool["count"]) == want_count


def test_update_steps_have_no_device_loops_on_gpu():
  # A while loop on a GPU runs one tiny iteration at a time and copies its
  # predicate to the host each time; both steps lowered for CUDA have none.
  config = tiny.get_config()
  models, _, state, _ = _setup(config, jax.devices()[:1])
  batch = {k: jnp.asarray(v) for k, v in batches.random_batch(config, 8).items()}
  key = jax.random.PRNGKey(0)
  g = jax.jit(functools.partial(train.generator_step, models=models, config=config))
  _, generated, _ = jax.eval_shape(g, state, batch, key)
  generated = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), generated)
  d = jax.jit(functools.partial(train.discriminator_step, models=models, config=config))
  for fn, args in ((g, (state, batch, key)), (d, (state, batch, generated, key))):
    text = fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert "stablehlo.while" not in text


@pytest.mark.parametrize(
  "change, message",
  [
    (lambda b: b.update(image=b["image"][:, :32]), "expected \\[B, 64, 64, 3\\]"),
    (lambda b: b.update(image=b["image"].astype(np.float64)), "dtype"),
    (lambda b: b.update(image=b["image"] * 255), "expected \\[-1, 1\\]"),
    (lambda b: b.update(label=b["label"] + 100), "classes"),
    (lambda b: b.update(landmarks=b["landmarks"][:, :4]), "landmarks"),
    (lambda b: [b.update({k: v[:6]}) for k, v in list(b.items())], "divisible by the 8 devices"),
  ],
)
def test_bad_batches_get_one_clear_error(change, message):
  config = tiny.get_config()
  batch = batches.random_batch(config, 8)
  change(batch)
  with pytest.raises(ValueError, match=message):
    batches.check_batch(batch, config, num_devices=8)


def test_wrong_password_length_is_clear():
  g = models_lib.Generator(ngf=4, num_blocks=1)
  x = jnp.zeros((2, 32, 32, 3))
  with pytest.raises(ValueError, match="password must be \\[B, 16\\]"):
    g.init(jax.random.PRNGKey(0), x, jnp.zeros((2, 12)), train=True)


def test_fused_calls_compute_the_same_iteration():
  # Batching G/Q/D calls with separate stat groups must not change the maths.
  results = []
  for fuse in (False, True):
    config = tiny.get_config()
    config.train.fuse_calls = fuse
    _, _, state, steps = _setup(config, jax.devices()[:1])
    state, metrics = steps(state, batches.random_batch(config, 8), jax.random.PRNGKey(4))
    results.append((_host(metrics), _host(state.gen.params)))
  _assert_same_iteration(results, rtol=1e-5, metric_atol=1e-6)


def test_bfloat16_iteration_close_to_float32():
  """bf16 compute (f32 params) against f32 on one iteration: every loss term
  within 5 % (or 0.02 absolute) and the updated generator within 2 lr."""
  results = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny.get_config()
    config.model.dtype = dtype
    _, _, state, steps = _setup(config, jax.devices()[:1])
    state, metrics = steps(state, batches.random_batch(config, 8), jax.random.PRNGKey(4))
    results[dtype] = (_host(metrics), _host(state.gen.params))
  f32, bf16 = results["float32"], results["bfloat16"]
  for name in (
    "g/loss",
    "g/gan",
    "g/password",
    "g/fr",
    "g/feat",
    "g/l1",
    "d/loss",
    "d/gan",
    "d/fr",
  ):
    np.testing.assert_allclose(bf16[0][name], f32[0][name], rtol=0.05, atol=0.02, err_msg=name)
  for a, b in zip(jax.tree.leaves(f32[1]), jax.tree.leaves(bf16[1])):
    assert a.dtype == b.dtype == np.float32  # params stay f32
    np.testing.assert_allclose(b, a, atol=2.5e-4)
