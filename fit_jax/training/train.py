"""The two update steps of one training iteration (docs/reference.md §7, §8).

Order, and how it relates to the original: the original runs G forward five
times, then the D step on those (detached) images, then the G step, whose
loss uses the *freshly updated* D and FR on the same images. Here
`generator_step` runs the five generator passes once, under value_and_grad,
and returns them (stop_gradient) for `discriminator_step`. So G is updated
against D_t rather than D_{t+1}: the same alternating game shifted by half a
step, and no generator forward is computed twice.

Both steps fold the same step number into the base key, so both see the
same randomness; `discriminator_step` advances `state.step`.
"""

import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from fit_jax import models as models_lib
from fit_jax.training import (
  alignment,
  batches,
  checkpoints,
  fused_calls,
  initial_weights,
  losses,
  multihost,
  objectives,
  passwords,
  pools,
  preemption,
  run_records,
)
from fit_jax.training import train_state as ts

Batch = dict[str, jax.Array]  # image [B,H,W,3], label [B], landmarks [B,5,2]


def _angle_call(state_step, offset, config):
  """The reference's AngleLoss call counter for a call inside this step."""
  return state_step * config.loss.angle_calls_per_step + offset


def step_keys(key: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
  key = jax.random.fold_in(key, step)
  k_pw, k_pool = jax.random.split(key)
  return {"passwords": k_pw, "pools": k_pool}


def generator_step(
  state: ts.FitState, batch: Batch, key: jax.Array, *, models: models_lib.Models, config
) -> tuple[ts.FitState, dict[str, jax.Array], dict[str, jax.Array]]:
  """Updates G and Q; returns (state, generated images, metrics).

  The generated images dict holds `anon` (A = G(x, z)), `anon2`
  (A2 = G(x, z2)), `recon` (R = G(A, -z)), `wrong` (W = G(A, w)) and
  `wrong2` (W2 = G(A, w2)), all under stop_gradient.
  """
  lc = config.loss
  x = batch["image"]
  labels = batch["label"]
  b = x.shape[0]
  keys = step_keys(key, state.step)
  pw_bits = passwords.sample_training_passwords(keys["passwords"], b, config.model.password_bits)
  enc = {k: passwords.encode(v, config.model.password_scale) for k, v in pw_bits.items()}
  disc_params = state.disc.params
  disc_stats = state.disc.batch_stats

  def loss_fn(params):
    gen = fused_calls.Calls(
      models.generator, params["generator"], state.gen.batch_stats["generator"]
    )
    q = fused_calls.Calls(
      models.password_head, params["password_head"], state.gen.batch_stats["password_head"]
    )
    # D and FR are frozen here but in train mode (batch statistics), as the
    # original's set_requires_grad(False); their stat updates are dropped.
    disc = fused_calls.Calls(
      models.discriminator, disc_params["discriminator"], disc_stats["discriminator"], carry=False
    )
    if config.train.fuse_calls:
      # Two calls instead of five: A and A2 share the input x, and R, W, W2
      # share the input A. Stat groups keep each pass's statistics apart.
      anon, anon2 = fused_calls.together(gen, [(x, enc["anon"]), (x, enc["anon2"])])
      recon, wrong, wrong2 = fused_calls.together(
        gen, [(anon, enc["recover"]), (anon, enc["wrong"]), (anon, enc["wrong2"])]
      )
    else:
      # The reference's order: A, R, A2, W, W2 (matters for running stats).
      anon = gen(x, enc["anon"])
      recon = gen(anon, enc["recover"])
      anon2 = gen(x, enc["anon2"])
      wrong = gen(anon, enc["wrong"])
      wrong2 = gen(anon, enc["wrong2"])

    fakes = {"M": anon, "R": recon, "WR": wrong}
    if config.train.fuse_calls:
      coarse = dict(
        zip(
          models_lib.BRANCHES,
          fused_calls.together(disc, [(fakes[br],) for br in models_lib.BRANCHES], method="coarse"),
        )
      )
    else:
      coarse = {br: disc(fakes[br], method="coarse") for br in models_lib.BRANCHES}
    gan = {
      br: losses.lsgan((disc(fakes[br], br, method="fine"), coarse[br]), 1.0)
      for br in models_lib.BRANCHES
    }

    pairs = [(x, anon), (anon, recon), (anon, wrong)]
    if config.train.fuse_calls:
      logits = fused_calls.together(q, pairs)
    else:
      logits = [q(*p) for p in pairs]
    q_pairs = {
      name: (logit, passwords.digits(pw_bits[bits]))
      for name, bits, logit in zip(("anon", "recon", "wrong"), ("anon", "recover", "wrong"), logits)
    }
    q_ce = {k: losses.password_cross_entropy(*v) for k, v in q_pairs.items()}

    # The recognizer (SphereFace, or FaceNet with its BatchNorm folded) has no
    # batch statistics, so the five recognitions are one call on the
    # fused crops: the same maths, one larger kernel.
    crops = alignment.recognizer_crops(
      fused_calls.fuse([anon, recon, wrong, anon2, wrong2]),
      jnp.repeat(batch["landmarks"], 5, axis=0),
      config.data.landmark_frame,
      config.model.recognizer,
    )
    (cos, phi), feats = models.sphereface.apply({"params": disc_params["sphereface"]}, crops)
    cos, phi, feats = (fused_calls.split(t, 5) for t in (cos, phi, feats))
    fr = {
      name: losses.angle_softmax(cos[i], phi[i], labels, _angle_call(state.step, 5 + i, config))
      for i, name in enumerate(("anon", "recon", "wrong"))
    }
    f_anon, f_recon, f_wrong, f_anon2, f_wrong2 = feats
    del f_recon
    feat = {
      "anon": losses.feature_dissimilarity(f_anon, f_anon2),
      "wrong": losses.feature_dissimilarity(f_wrong, f_wrong2),
      "anon_wrong": losses.feature_dissimilarity(f_anon, f_wrong),
    }
    l1 = {"anon": losses.l1(anon, x), "wrong": losses.l1(wrong, x), "recon": losses.l1(recon, x)}
    loss, metrics = objectives.generator(lc, gan=gan, password_ce=q_ce, fr=fr, features=feat, l1=l1)
    metrics.update(
      {f"g/password_acc_{k}": losses.password_accuracy(*v) for k, v in q_pairs.items()}
    )
    images = {"anon": anon, "anon2": anon2, "recon": recon, "wrong": wrong, "wrong2": wrong2}
    new_stats = {"generator": gen.stats, "password_head": q.stats}
    return loss, (metrics, images, new_stats)

  grads, (metrics, images, new_stats) = jax.grad(loss_fn, has_aux=True)(state.gen.params)
  metrics["g/grad_norm"] = optax.tree.norm(grads)
  gen = state.gen.apply_gradients(grads, new_stats)
  metrics["g/param_norm"] = optax.tree.norm(gen.params)
  images = jax.lax.stop_gradient(images)
  return state.replace(gen=gen), images, metrics


def sample_step(
  state: ts.FitState, batch: Batch, key: jax.Array, *, models: models_lib.Models, config
) -> dict[str, jax.Array]:
  """A sample grid's images, as inference computes them: A, A2, W and R of
  `batch` under this step's passwords, with train=False (running statistics
  where the model keeps them). One forward pass each; the state is read only."""
  keys = step_keys(key, state.step)
  bits = passwords.sample_training_passwords(
    keys["passwords"], batch["image"].shape[0], config.model.password_bits
  )
  enc = {k: passwords.encode(v, config.model.password_scale) for k, v in bits.items()}
  variables = {"params": state.gen.params["generator"]}
  if state.gen.batch_stats["generator"]:
    variables["batch_stats"] = state.gen.batch_stats["generator"]

  def generate(images, password):
    return models.generator.apply(variables, images, password, train=False)

  anon = generate(batch["image"], enc["anon"])
  return {
    "anon": anon,
    "anon2": generate(batch["image"], enc["anon2"]),
    "wrong": generate(anon, enc["wrong"]),
    "recon": generate(anon, enc["recover"]),
  }


def discriminator_step(
  state: ts.FitState,
  batch: Batch,
  generated: dict[str, jax.Array],
  key: jax.Array,
  *,
  models: models_lib.Models,
  config,
  batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[ts.FitState, dict[str, jax.Array]]:
  """Updates D and SphereFace on the generator step's images; step += 1.

  `batch_sharding` (TrainSteps passes the batch's) is imposed on the images
  the (replicated) pools return: without it XLA runs the discriminator on
  every device's copy of the whole batch of pool images.
  """
  lc = config.loss
  x = batch["image"]
  labels = batch["label"]
  b = x.shape[0]
  queried, fakes = pools.query_branches(
    state.pools, generated, step_keys(key, state.step)["pools"], b
  )
  if batch_sharding is not None:
    fakes = jax.lax.with_sharding_constraint(fakes, batch_sharding)
  crops = alignment.recognizer_crops(
    fused_calls.fuse([generated["anon"], generated["recon"], generated["wrong"], x]),
    jnp.repeat(batch["landmarks"], 4, axis=0),
    config.data.landmark_frame,
    config.model.recognizer,
  )

  def loss_fn(params):
    (cos, phi), _ = models.sphereface.apply({"params": params["sphereface"]}, crops)
    cos, phi = (fused_calls.split(t, 4) for t in (cos, phi))
    fr = {
      name: losses.angle_softmax(cos[i], phi[i], labels, _angle_call(state.step, 1 + i, config))
      for i, name in enumerate(("anon", "recon", "wrong", "real"))
    }
    call = fused_calls.Calls(
      models.discriminator, params["discriminator"], state.disc.batch_stats["discriminator"]
    )
    # The reals go through all three branches; their coarse map is the same
    # shared network on the same batch each time, so it is computed once and
    # counted three times (identical value and gradient).
    if config.train.fuse_calls:
      # One coarse call for the three fake branches and the reals, and one
      # fine call per branch for its fakes and the reals; stat groups keep
      # every original call's batch statistics apart.
      *coarse_fake, coarse_real = fused_calls.together(
        call, [(fakes[br],) for br in models_lib.BRANCHES] + [(x,)], method="coarse"
      )
      coarse_fake = dict(zip(models_lib.BRANCHES, coarse_fake))
      fine_fake, fine_real = {}, {}
      for br in models_lib.BRANCHES:
        fine_fake[br], fine_real[br] = fused_calls.together(
          call, [(fakes[br],), (x,)], branch=br, method="fine"
        )
    else:
      coarse_fake = {br: call(fakes[br], method="coarse") for br in models_lib.BRANCHES}
      fine_fake = {br: call(fakes[br], br, method="fine") for br in models_lib.BRANCHES}
      coarse_real = call(x, method="coarse")
      fine_real = {br: call(x, br, method="fine") for br in models_lib.BRANCHES}
    fake = {br: losses.lsgan((fine_fake[br], coarse_fake[br]), 0.0) for br in models_lib.BRANCHES}
    real_coarse = losses.lsgan((coarse_real,), 1.0)
    real = {br: losses.lsgan((fine_real[br],), 1.0) + real_coarse for br in models_lib.BRANCHES}
    loss, metrics = objectives.discriminator(lc, fr=fr, fake=fake, real=real)
    new_stats = {"discriminator": call.stats, "sphereface": state.disc.batch_stats["sphereface"]}
    return loss, (metrics, new_stats)

  grads, (metrics, new_stats) = jax.grad(loss_fn, has_aux=True)(state.disc.params)
  metrics["d/grad_norm"] = optax.tree.norm(grads)
  disc = state.disc.apply_gradients(grads, new_stats)
  metrics["d/param_norm"] = optax.tree.norm(disc.params)
  metrics["d/fr_lambda"] = losses.angle_lambda(_angle_call(state.step, 4, config))
  return state.replace(step=state.step + 1, disc=disc, pools=queried), metrics


class TrainSteps:
  """The two update steps jitted once, with shardings and state donation.

  Call `steps.generator(state, batch, key)` then
  `steps.discriminator(state, batch, generated, key)`, or `steps(state,
  batch, key)` for a whole iteration; `steps.sample(state, batch, key)`
  gives a sample grid's images. Batches are validated on the host
  (shapes always; values when they are numpy arrays) before any tracing.
  """

  def __init__(self, models, config, mesh, state):
    self.config = config
    self.mesh = mesh
    state_sh = ts.state_sharding(state, mesh)
    data_sh = ts.batch_sharding(mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self.data_sharding = data_sh

    def jit(step, in_shardings, out_shardings, donate=True, **kwargs):
      return jax.jit(
        functools.partial(step, models=models, config=config, **kwargs),
        in_shardings=in_shardings,
        out_shardings=out_shardings,
        donate_argnums=0 if donate else (),
      )

    self.generator = jit(
      generator_step, (state_sh, data_sh, replicated), (state_sh, data_sh, replicated)
    )
    self.sample = jit(sample_step, (state_sh, data_sh, replicated), data_sh, donate=False)
    self.discriminator = jit(
      discriminator_step,
      (state_sh, data_sh, data_sh, replicated),
      (state_sh, replicated),
      batch_sharding=data_sh,
    )

  def put_batch(self, batch) -> Batch:
    """Validates a host batch and places it on the mesh (batches.place)."""
    return batches.place(batch, self.config, self.mesh, self.data_sharding)

  def __call__(self, state, batch, key) -> tuple[Any, dict[str, jax.Array]]:
    if any(isinstance(v, np.ndarray) for v in batch.values()):
      batch = self.put_batch(batch)
    else:
      batches.check_batch(batch, self.config, self.mesh.size)
    state, generated, g_metrics = self.generator(state, batch, key)
    state, d_metrics = self.discriminator(state, batch, generated, key)
    return state, {**g_metrics, **d_metrics}


def train_and_evaluate(
  config, workdir: str, preempt: preemption.Preemption | None = None
) -> ts.FitState:
  """Trains from scratch or resumes from the newest checkpoint in workdir.

  Writes TensorBoard scalars (averaged over each logging window) and sample
  grids (PNG files under workdir/samples too) and orbax checkpoints, and
  appends one line per start to workdir/runs.jsonl (run_records.record_run). Process 0
  alone writes logs, grids and records; every process saves checkpoints.

  A run stops early, with its last step logged, sampled and checkpointed,
  at config.train.time_budget_s or at a preemption notice (SIGTERM; see
  fit_jax.training.preemption: `preempt.stopped_at` then says where).
  """
  # Imported here: the update steps above run where the input pipeline's
  # folder sources cannot (a lent accelerator's image).
  from fit_jax.data import batch_loader, input_pipeline  # noqa: PLC0415

  started = time.time()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  data = input_pipeline.build_source(config)
  models = models_lib.build_models(config.model)
  mesh = ts.make_mesh()
  if config.train.batch_size % mesh.size:
    raise ValueError(
      f"config.train.batch_size={config.train.batch_size} is not divisible by "
      f"the {mesh.size} devices"
    )
  key = jax.random.PRNGKey(config.seed)
  init_key, step_key = jax.random.split(key)
  manager = checkpoints.manager(workdir, config.train.keep_checkpoints)
  # Pretrained/converted weights only initialise a run; a resume restores all.
  resuming = manager.latest_step() is not None
  if resuming:
    state = checkpoints.restore(manager, ts.abstract_train_state(config, models, mesh), workdir)
    logging.warning(
      "resuming from step %d (%s)", int(state.step), os.path.join(workdir, "checkpoints")
    )
    if jax.process_index() == 0:
      run_records.keep_metrics_up_to(workdir, int(state.step))
  else:
    state = ts.create_train_state(
      config, models, init_key, mesh, initial_weights.initial_overrides(config)
    )
  steps = TrainSteps(models, config, mesh, state)
  num_steps = batch_loader.num_steps(config, data)
  if jax.process_index() == 0:
    run_records.record_run(workdir, config, models, mesh, int(state.step), num_steps)
  shard = (jax.process_index(), jax.process_count())
  writer = run_records.metric_writer(config, workdir)
  if jax.process_index() == 0:
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  first = int(state.step)
  train_batches = batch_loader.TrainBatches(
    data, first, num_steps, config.train.batch_size, shard, config.data.num_workers
  )
  preempt = preempt or preemption.Preemption()
  if first >= num_steps:
    logging.warning("nothing to train: %s is already at step %d of %d", workdir, first, num_steps)
  with preempt:
    budget = config.train.get("time_budget_s", 0) or 0
    window: list[dict[str, jax.Array]] = []
    start = time.time()
    for step, batch in train_batches:
      # The host must not wait for the device between logging steps: any
      # implicit device-to-host copy in the dispatch path is an error.
      with jax.transfer_guard_device_to_host("disallow"):
        state, metrics = steps(state, batch, step_key)
      window.append(metrics)
      done = step + 1
      log_step = done % config.train.log_every == 0
      # The budget counts from train_and_evaluate's start (compiles included);
      # the step that crosses it is the last, with its log, grid and
      # checkpoint. Several processes decide at logging steps, together.
      out_of_time = (
        budget > 0
        and (jax.process_count() == 1 or log_step)
        and multihost.agree(time.time() - started >= budget)
      )
      preempted = preempt.reached(done, manager)
      last = done == num_steps or out_of_time or preempted
      if log_step or last:
        run_records.log_window(
          writer, workdir, data, jax.device_get(window), done, first, num_steps, time.time() - start
        )
        window = []
      if done % config.train.eval_every == 0 or last:
        sample = data.batch(0, config.train.batch_size, "eval", shard)
        generated = steps.sample(state, steps.put_batch(sample), step_key)
        generated, originals = multihost.gather((generated, sample["image"]))
        if jax.process_index() == 0:
          run_records.write_grid(
            writer, workdir, done, generated, originals, config.train.num_samples
          )
      if done % config.train.checkpoint_every == 0 or last:
        checkpoints.save(manager, done, state, force=preempted)
      if out_of_time:
        logging.warning(
          "stopping at step %d of %d: config.train.time_budget_s=%g s reached",
          done,
          num_steps,
          budget,
        )
      if last:
        break
  manager.wait_until_finished()
  writer.flush()
  if preempt.stopped_at is not None:
    logging.warning(
      "preempted: stopped after step %d with its checkpoint saved; run the same command to resume",
      preempt.stopped_at,
    )
  return state
