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

import datetime
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from PIL import Image

from fit_jax import (
  alignment,
  atomic,
  losses,
  passwords,
  pixels,
  preemption,
  pretrained,
)
from fit_jax import models as models_lib
from fit_jax import train_state as ts
from fit_jax.models import generator_layout

Batch = dict[str, jax.Array]  # image [B,H,W,3], label [B], landmarks [B,5,2]


# ----------------------------------------------------------------- helpers


def _apply(module, params, stats, *args, mutable: bool, **kwargs):
  """Applies a module; returns (output, new batch stats)."""
  variables = {"params": params}
  if stats:
    variables["batch_stats"] = stats
  if mutable and stats:
    out, updates = module.apply(variables, *args, mutable=["batch_stats"], **kwargs)
    return out, updates["batch_stats"]
  return module.apply(variables, *args, **kwargs), stats


def _angle_call(state_step, offset, config):
  """The reference's AngleLoss call counter for a call inside this step."""
  return state_step * config.loss.angle_calls_per_step + offset


def _negative(loss, config):
  return losses.bounded_negative(loss, config.loss.negative_angle_bound)


def _fuse(parts: list[jax.Array]) -> jax.Array:
  """One batch of several calls' equal batches, interleaved image by image.

  Row `b * len(parts) + i` is image b of part i, so each device's slice of
  the fused batch holds its own images of every part: the fused batch stays
  sharded like the parts, with no data movement (concatenating the parts
  would put part 0 on the first devices, and XLA then gathered every image
  onto every device). layers.Norm's stat groups use the same layout.
  """
  return jnp.stack(parts, axis=1).reshape((-1,) + parts[0].shape[1:])


def _split(array: jax.Array, parts: int) -> list[jax.Array]:
  """A fused call's output back into its parts (the inverse of _fuse)."""
  grouped = array.reshape((-1, parts) + array.shape[1:])
  return [grouped[:, i] for i in range(parts)]


def _global_norm(tree):
  return optax.tree.norm(tree)


def step_keys(key: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
  key = jax.random.fold_in(key, step)
  k_pw, k_pool = jax.random.split(key)
  return {"passwords": k_pw, "pools": k_pool}


# ----------------------------------------------------------- generator step


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
  pw_bits = passwords.sample_training_passwords(
    keys["passwords"], b, config.model.password_bits
  )
  enc = {k: passwords.encode(v, config.model.password_scale) for k, v in pw_bits.items()}
  disc_params = state.disc.params
  disc_stats = state.disc.batch_stats

  def loss_fn(params):
    g_stats = state.gen.batch_stats["generator"]
    q_stats = state.gen.batch_stats["password_head"]

    fuse = config.train.fuse_calls

    def gen(images, password, groups=1):
      nonlocal g_stats
      out, g_stats = _apply(
        models.generator, params["generator"], g_stats, images, password,
        train=True, mutable=True, stat_groups=groups,
      )
      return out

    if fuse:
      # Two calls instead of five: A and A2 share the input x, and R, W, W2
      # share the input A. Stat groups keep each pass's statistics apart.
      anon, anon2 = _split(gen(
        _fuse([x, x]), _fuse([enc["anon"], enc["anon2"]]), groups=2), 2)
      recon, wrong, wrong2 = _split(gen(
        _fuse([anon, anon, anon]),
        _fuse([enc["recover"], enc["wrong"], enc["wrong2"]]), groups=3), 3)
    else:
      # The reference's order: A, R, A2, W, W2 (matters for running stats).
      anon = gen(x, enc["anon"])
      recon = gen(anon, enc["recover"])
      anon2 = gen(x, enc["anon2"])
      wrong = gen(anon, enc["wrong"])
      wrong2 = gen(anon, enc["wrong2"])

    # D and FR are frozen here but in train mode (batch statistics), as the
    # original's set_requires_grad(False); their stat updates are dropped.
    def disc(method, *args, **kwargs):
      out, _ = _apply(
        models.discriminator, disc_params["discriminator"],
        disc_stats["discriminator"], *args, train=True, mutable=True,
        method=method, **kwargs,
      )
      return out

    fakes = {"M": anon, "R": recon, "WR": wrong}
    if fuse:
      coarse = dict(zip(models_lib.BRANCHES, _split(disc(
        "coarse", _fuse(list(fakes.values())), stat_groups=3), 3)))
    else:
      coarse = {br: disc("coarse", fakes[br]) for br in models_lib.BRANCHES}
    gan = {
      br: losses.lsgan((disc("fine", fakes[br], br), coarse[br]), 1.0)
      for br in models_lib.BRANCHES
    }
    gan_loss = lc.lambda_gan * (
      lc.lambda_gan_m * gan["M"] + lc.lambda_gan_recon * gan["R"]
      + lc.lambda_gan_wr * gan["WR"]
    ) / 3.0

    def q(first, second, groups=1):
      nonlocal q_stats
      out, q_stats = _apply(
        models.password_head, params["password_head"], q_stats, first, second,
        train=True, mutable=True, stat_groups=groups,
      )
      return out

    pairs = [(x, anon), (anon, recon), (anon, wrong)]
    if fuse:
      logits = _split(q(
        _fuse([p[0] for p in pairs]), _fuse([p[1] for p in pairs]), groups=3), 3)
    else:
      logits = [q(*p) for p in pairs]
    q_pairs = {
      "anon": (logits[0], passwords.digits(pw_bits["anon"])),
      "recon": (logits[1], passwords.digits(pw_bits["recover"])),
      "wrong": (logits[2], passwords.digits(pw_bits["wrong"])),
    }
    q_ce = {k: losses.password_cross_entropy(*v) for k, v in q_pairs.items()}
    q_loss = lc.lambda_dis * sum(q_ce.values())

    # The recognizer (SphereFace, or FaceNet with its BatchNorm folded) has no
    # batch statistics, so the five recognitions are one call on the
    # fused crops: the same maths, one larger kernel.
    crops = alignment.recognizer_crops(
      _fuse([anon, recon, wrong, anon2, wrong2]),
      jnp.repeat(batch["landmarks"], 5, axis=0), config.data.landmark_frame,
      config.model.recognizer,
    )
    (cos, phi), feats = models.sphereface.apply(
      {"params": disc_params["sphereface"]}, crops
    )
    cos, phi, feats = (_split(t, 5) for t in (cos, phi, feats))
    fr = {
      name: losses.angle_softmax(
        cos[i], phi[i], labels, _angle_call(state.step, 5 + i, config)
      )
      for i, name in enumerate(("anon", "recon", "wrong"))
    }
    fr_loss = lc.lambda_fr * (
      -lc.lambda_fr_m * _negative(fr["anon"], config) + fr["recon"]
      - lc.lambda_fr_wr * _negative(fr["wrong"], config)
    ) / (lc.lambda_fr_m + 1.0 + lc.lambda_fr_wr)
    f_anon, f_recon, f_wrong, f_anon2, f_wrong2 = feats
    del f_recon
    feat = {
      "anon": losses.feature_dissimilarity(f_anon, f_anon2),
      "wrong": losses.feature_dissimilarity(f_wrong, f_wrong2),
      "anon_wrong": losses.feature_dissimilarity(f_anon, f_wrong),
    }
    feat_loss = (
      lc.lambda_feat * feat["anon"] + lc.lambda_wr_feat * feat["wrong"]
      + lc.lambda_false_recon_diff * feat["anon_wrong"]
    )
    l1 = {
      "anon": losses.l1(anon, x),
      "wrong": losses.l1(wrong, x),
      "recon": losses.l1(recon, x),
    }
    l1_loss = (
      lc.lambda_l1 * l1["anon"] + lc.lambda_rand_recon_l1 * l1["wrong"]
      + lc.lambda_g_recon * l1["recon"]
    )
    loss = gan_loss + q_loss + fr_loss + feat_loss + l1_loss
    metrics = {"g/loss": loss, "g/gan": gan_loss, "g/password": q_loss,
               "g/fr": fr_loss, "g/feat": feat_loss, "g/l1": l1_loss}
    metrics.update({f"g/gan_{k}": v for k, v in gan.items()})
    metrics.update({f"g/password_ce_{k}": v for k, v in q_ce.items()})
    metrics.update(
      {f"g/password_acc_{k}": losses.password_accuracy(*v) for k, v in q_pairs.items()}
    )
    metrics.update({f"g/fr_{k}": v for k, v in fr.items()})
    metrics.update({f"g/feat_{k}": v for k, v in feat.items()})
    metrics.update({f"g/l1_{k}": v for k, v in l1.items()})
    images = {"anon": anon, "anon2": anon2, "recon": recon, "wrong": wrong, "wrong2": wrong2}
    new_stats = {"generator": g_stats, "password_head": q_stats}
    return loss, (metrics, images, new_stats)

  grads, (metrics, images, new_stats) = jax.grad(loss_fn, has_aux=True)(state.gen.params)
  metrics["g/grad_norm"] = _global_norm(grads)
  gen = state.gen.apply_gradients(grads, new_stats)
  metrics["g/param_norm"] = _global_norm(gen.params)
  images = jax.lax.stop_gradient(images)
  return state.replace(gen=gen), images, metrics


# ------------------------------------------------------- discriminator step


def pool_draws(key: jax.Array, n: int, size: int) -> tuple[jax.Array, jax.Array]:
  """Per queried image: (swap with probability 1/2, a uniform stored slot)."""

  def draw(k):
    k_swap, k_idx = jax.random.split(k)
    return jax.random.uniform(k_swap) > 0.5, jax.random.randint(k_idx, (), 0, size)

  return jax.vmap(draw)(jax.random.split(key, n))


def query_pool(pool, images: jax.Array, key: jax.Array, num_out: int):
  """CycleGAN ImagePool.query, then num_out of the results kept in order.

  Per image, in batch order: while the pool holds fewer than its size, the
  image is stored and returned; once full, with probability 1/2 a random
  stored image is returned and replaced by the new one, otherwise the new
  image is returned. Then `num_out` of the returned images are chosen
  without replacement, keeping their order (the original's subsampling of
  the 2B queried M and WR images to B).

  The sequential rule is computed for all images at once (no loop, which on
  a GPU would run one tiny iteration per image): an image that swaps
  returns the last earlier image written to its slot, else the slot's
  content before the query; each slot ends holding the last image written
  to it. tests/train_test.py checks this against the image-by-image rule.

  Args:
    pool: {'images': [S, H, W, 3], 'count': int32}.
    images: [N, H, W, 3].
    key: PRNG key.
    num_out: images to return (N or fewer).

  Returns:
    (new pool, [num_out, H, W, 3]).
  """
  size = pool["images"].shape[0]
  k_draws, k_pick = jax.random.split(key)
  n = images.shape[0]
  if size > 0:
    stored, count = pool["images"], pool["count"]
    queried = images.astype(stored.dtype)
    swap, idx = pool_draws(k_draws, n, size)
    order = jnp.arange(n)
    filling = count + order < size
    slot = jnp.where(filling, count + order, idx)
    written = jnp.logical_or(filling, swap)
    # same[i, j]: image j (earlier or not) writes the slot image i reads.
    same = written[None, :] & (slot[None, :] == slot[:, None])
    earlier = same & (order[None, :] < order[:, None])
    last = jnp.max(jnp.where(earlier, order[None, :], -1), axis=1)
    before = jnp.where((last >= 0)[:, None, None, None],
                       queried[jnp.maximum(last, 0)], stored[slot])
    returned = jnp.where((filling | ~swap)[:, None, None, None], queried, before)
    # Only each slot's last writer lands; the rest go to distinct indices out
    # of bounds and are dropped, so every index is unique and the (donated)
    # pool is updated in place, n images at most.
    later = same & (order[None, :] > order[:, None])
    lands = written & ~jnp.any(later, axis=1)
    stored = stored.at[jnp.where(lands, slot, size + order)].set(
      queried, mode="drop", unique_indices=True)
    pool = {"images": stored,
            "count": jnp.minimum(count + n, size).astype(pool["count"].dtype)}
  else:
    returned = images
  if num_out < n:
    picked = jnp.sort(jax.random.permutation(k_pick, n)[:num_out])
    returned = returned[picked]
  return pool, returned.astype(images.dtype)


def discriminator_step(
  state: ts.FitState, batch: Batch, generated: dict[str, jax.Array],
  key: jax.Array, *, models: models_lib.Models, config,
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
  keys = jax.random.split(step_keys(key, state.step)["pools"], 3)
  pools = dict(state.pools)
  pools["M"], fake_m = query_pool(
    pools["M"], jnp.concatenate([generated["anon"], generated["anon2"]]), keys[0], b
  )
  pools["R"], fake_r = query_pool(pools["R"], generated["recon"], keys[1], b)
  pools["WR"], fake_wr = query_pool(
    pools["WR"], jnp.concatenate([generated["wrong"], generated["wrong2"]]), keys[2], b
  )
  if batch_sharding is not None:
    fake_m, fake_r, fake_wr = jax.lax.with_sharding_constraint(
      (fake_m, fake_r, fake_wr), batch_sharding)
  crops = alignment.recognizer_crops(
    _fuse([generated["anon"], generated["recon"], generated["wrong"], x]),
    jnp.repeat(batch["landmarks"], 4, axis=0), config.data.landmark_frame,
    config.model.recognizer,
  )

  def loss_fn(params):
    stats = state.disc.batch_stats["discriminator"]
    (cos, phi), _ = models.sphereface.apply({"params": params["sphereface"]}, crops)
    cos, phi = (_split(t, 4) for t in (cos, phi))
    fr = {
      name: losses.angle_softmax(
        cos[i], phi[i], labels, _angle_call(state.step, 1 + i, config)
      )
      for i, name in enumerate(("anon", "recon", "wrong", "real"))
    }
    fr_loss = lc.lambda_fr * 0.5 * (
      fr["real"]
      + (lc.lambda_fr_m * fr["anon"] - _negative(fr["recon"], config)
         + lc.lambda_fr_wr * fr["wrong"]) / (1.0 + lc.lambda_fr_m + lc.lambda_fr_wr)
    )

    def call(method, *args, **kwargs):
      nonlocal stats
      out, stats = _apply(
        models.discriminator, params["discriminator"], stats, *args,
        train=True, mutable=True, method=method, **kwargs,
      )
      return out

    fakes = {"M": fake_m, "R": fake_r, "WR": fake_wr}
    # The reals go through all three branches; their coarse map is the same
    # shared network on the same batch each time, so it is computed once and
    # counted three times (identical value and gradient).
    if config.train.fuse_calls:
      # One coarse call for the three fake branches and the reals, and one
      # fine call per branch for its fakes and the reals; stat groups keep
      # every original call's batch statistics apart.
      *coarse_fake, coarse_real = _split(call(
        "coarse", _fuse([*fakes.values(), x]), stat_groups=4), 4)
      coarse_fake = dict(zip(models_lib.BRANCHES, coarse_fake))
      fine_fake, fine_real = {}, {}
      for branch in models_lib.BRANCHES:
        fine_fake[branch], fine_real[branch] = _split(call(
          "fine", _fuse([fakes[branch], x]), branch, stat_groups=2), 2)
    else:
      coarse_fake = {br: call("coarse", fakes[br]) for br in models_lib.BRANCHES}
      fine_fake = {br: call("fine", fakes[br], br) for br in models_lib.BRANCHES}
      coarse_real = call("coarse", x)
      fine_real = {br: call("fine", x, br) for br in models_lib.BRANCHES}
    fake = {
      br: losses.lsgan((fine_fake[br], coarse_fake[br]), 0.0)
      for br in models_lib.BRANCHES
    }
    real_coarse = losses.lsgan((coarse_real,), 1.0)
    real = {
      br: losses.lsgan((fine_real[br],), 1.0) + real_coarse
      for br in models_lib.BRANCHES
    }
    gan_loss = lc.lambda_gan * 0.5 * (sum(fake.values()) / 3.0 + sum(real.values()) / 3.0)
    loss = fr_loss + gan_loss
    metrics = {"d/loss": loss, "d/fr": fr_loss, "d/gan": gan_loss}
    metrics.update({f"d/fr_{k}": v for k, v in fr.items()})
    metrics.update({f"d/gan_fake_{k}": v for k, v in fake.items()})
    metrics.update({f"d/gan_real_{k}": v for k, v in real.items()})
    new_stats = {"discriminator": stats, "sphereface": state.disc.batch_stats["sphereface"]}
    return loss, (metrics, new_stats)

  grads, (metrics, new_stats) = jax.grad(loss_fn, has_aux=True)(state.disc.params)
  metrics["d/grad_norm"] = _global_norm(grads)
  disc = state.disc.apply_gradients(grads, new_stats)
  metrics["d/param_norm"] = _global_norm(disc.params)
  metrics["d/fr_lambda"] = losses.angle_lambda(_angle_call(state.step, 4, config))
  return state.replace(step=state.step + 1, disc=disc, pools=pools), metrics


# ------------------------------------------------------------- compilation


def check_batch(batch, config, num_devices: int) -> None:
  """Validates a host batch before tracing; one clear line per problem."""
  size = config.data.image_size
  required = {"image": None, "label": None, "landmarks": None}
  missing = [k for k in required if k not in batch]
  if missing:
    raise ValueError(f"batch is missing {missing}; it needs image, label, landmarks")
  image, label, lm = batch["image"], batch["label"], batch["landmarks"]
  b = image.shape[0]
  if image.ndim != 4 or tuple(image.shape[1:]) != (size, size, 3):
    raise ValueError(
      f"batch['image'] has shape {tuple(image.shape)}; expected [B, {size}, {size}, 3]"
    )
  if image.dtype != np.float32:
    raise ValueError(f"batch['image'] has dtype {image.dtype}; expected float32 in [-1, 1]")
  if tuple(label.shape) != (b,) or not np.issubdtype(label.dtype, np.integer):
    raise ValueError(f"batch['label'] must be int [{b}]; got {label.dtype} {tuple(label.shape)}")
  if tuple(lm.shape) != (b, 5, 2):
    raise ValueError(f"batch['landmarks'] has shape {tuple(lm.shape)}; expected [{b}, 5, 2]")
  if b % num_devices:
    raise ValueError(
      f"batch size {b} is not divisible by the {num_devices} devices"
    )
  if isinstance(image, np.ndarray):
    lo, hi = float(image.min()), float(image.max())
    if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
      raise ValueError(f"batch['image'] values span [{lo:.3g}, {hi:.3g}]; expected [-1, 1]")
    classes = config.model.sphereface.num_classes
    if label.min() < 0 or label.max() >= classes:
      raise ValueError(
        f"batch['label'] spans [{label.min()}, {label.max()}]; the A-Softmax head has {classes} classes"
      )


def _leaf_shapes(tree) -> dict[str, tuple]:
  """{'gen.params.generator.conv_in.kernel': shape} for any pytree of arrays
  or of orbax array metadata (whose paths use dict keys, not attributes)."""
  shapes = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    names = (getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
    shapes[".".join(str(n) for n in names)] = tuple(getattr(leaf, "shape", ()))
  return shapes


class CheckpointMismatchError(ValueError):
  """A workdir's checkpoint was written for another training state."""


def _restore(manager, template, workdir: str):
  """The newest checkpoint into the template's structure, shapes and shardings,
  or one clear error when it was written for another state (another config,
  or an older fit_jax whose state differed): orbax's own is a page long."""
  step = manager.latest_step()
  where = os.path.join(workdir, "checkpoints", str(step))
  advice = "resume with the config that wrote it, or start a new --workdir"
  try:
    stored = ocp.StandardCheckpointer().metadata(os.path.join(where, "default"))
    stored = _leaf_shapes(getattr(stored, "item_metadata", stored))
  except (OSError, ValueError):  # unreadable metadata: the restore below tells
    stored = {}
  wanted = _leaf_shapes(template)
  for name, shape in wanted.items():
    if name in stored and stored[name] != shape:
      raise CheckpointMismatchError(f"{where}: {name} has shape {stored[name]} in the checkpoint, "
                       f"{shape} in this config; {advice}")
  if stored:
    for side, names in (("lacks", sorted(set(wanted) - set(stored))),
                        ("has no place here for", sorted(set(stored) - set(wanted)))):
      if names:
        more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
        raise CheckpointMismatchError(f"{where}: the checkpoint {side} {names[0]}{more}: it was written "
                         f"for another training state; {advice}")
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(template))
  except ValueError as e:
    raise CheckpointMismatchError(f"{where}: the checkpoint does not fit this config's training state "
                     f"({str(e).splitlines()[0]}); {advice}") from e


class TrainSteps:
  """The two update steps jitted once, with shardings and state donation.

  Call `steps.generator(state, batch, key)` then
  `steps.discriminator(state, batch, generated, key)`, or `steps(state,
  batch, key)` for a whole iteration. Batches are validated on the host
  (shapes always; values when they are numpy arrays) before any tracing.
  """

  def __init__(self, models, config, mesh, state):
    self.config = config
    self.mesh = mesh
    state_sh = ts.state_sharding(state, mesh)
    data_sh = ts.batch_sharding(mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self.data_sharding = data_sh
    self.generator = jax.jit(
      functools.partial(generator_step, models=models, config=config),
      in_shardings=(state_sh, data_sh, replicated),
      out_shardings=(state_sh, data_sh, replicated),
      donate_argnums=0,
    )
    self.discriminator = jax.jit(
      functools.partial(discriminator_step, models=models, config=config,
                        batch_sharding=data_sh),
      in_shardings=(state_sh, data_sh, data_sh, replicated),
      out_shardings=(state_sh, replicated),
      donate_argnums=0,
    )

  def put_batch(self, batch) -> Batch:
    """Validates a host batch and places it on the mesh.

    Single process: `batch` is the global batch. Multi-host: it is this
    process's contiguous slice, and the global array is assembled with
    jax.make_array_from_process_local_data.
    """
    processes = jax.process_count()
    local_devices = self.mesh.size // processes
    check_batch(batch, self.config, local_devices)
    keys = ("image", "label", "landmarks")
    if processes == 1:
      return {k: jax.device_put(np.asarray(batch[k]), self.data_sharding) for k in keys}
    return {
      k: jax.make_array_from_process_local_data(self.data_sharding, np.asarray(batch[k]))
      for k in keys
    }

  def __call__(self, state, batch, key) -> tuple[Any, dict[str, jax.Array]]:
    if any(isinstance(v, np.ndarray) for v in batch.values()):
      batch = self.put_batch(batch)
    else:
      check_batch(batch, self.config, self.mesh.size)
    state, generated, g_metrics = self.generator(state, batch, key)
    state, d_metrics = self.discriminator(state, batch, generated, key)
    return state, {**g_metrics, **d_metrics}


# -------------------------------------------------------------------- loop


GRID_COLUMNS = ("original", "anonymized", "2nd password", "wrong recovery", "recovery")


def sample_grid(images: dict[str, np.ndarray], original: np.ndarray) -> np.ndarray:
  """A labelled uint8 grid [12 + n*H, 5*W, 3]: one row per image, columns
  GRID_COLUMNS (original, anonymized, anonymized with a second password,
  recovered with a wrong password, recovered), under a strip naming them."""
  from PIL import ImageDraw  # noqa: PLC0415

  order = [original, images["anon"], images["anon2"], images["wrong"], images["recon"]]
  rows = np.concatenate([np.concatenate(list(col), axis=0) for col in order], axis=1)
  grid = pixels.to_uint8(rows)
  width = original.shape[2]
  strip = Image.new("RGB", (grid.shape[1], 12), (255, 255, 255))
  draw = ImageDraw.Draw(strip)
  for i, name in enumerate(GRID_COLUMNS):
    # PIL's built-in bitmap font: ~6 px a character, so narrow columns
    # get a shortened name rather than text over their neighbour.
    label = name if len(name) * 6 <= width else name[: max(1, width // 6 - 1)] + "."
    draw.text((i * width + 2, 1), label, fill=(0, 0, 0))
  return np.concatenate([np.asarray(strip), grid], axis=0)


_GROUPS = {"g": "generator group (G and the password head)",
           "d": "discriminator group (D and the recognizer)"}


def _check_finite(metrics: dict[str, float], first: int, last: int) -> None:
  """Stops on a non-finite loss term, gradient norm or parameter norm of
  the logging window of steps [first, last], naming the optimizer group
  (the big_vision/MaxText guard: the window's means carry any NaN)."""
  bad = sorted(k for k, v in metrics.items() if not np.isfinite(v))
  if not bad:
    return
  steps = f"step {last}" if first == last else f"steps {first}-{last}"
  groups = sorted({_GROUPS.get(k.split("/")[0], "metrics") for k in bad})
  raise FloatingPointError(
    f"non-finite values in {steps}, {' and '.join(groups)}: {', '.join(bad)} "
    f"(checkpoints up to step {first - 1} were checked finite)")


def _agree(flag: bool) -> bool:
  """Process 0's flag on every process (a decision all must take together)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # noqa: PLC0415

  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def _gather(tree):
  """Host numpy copies of (possibly multi-process) sharded arrays."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # noqa: PLC0415

  return multihost_utils.process_allgather(tree, tiled=True)


def write_skipped(workdir: str, skipped: dict[str, str]) -> None:
  """workdir/skipped_records.txt: each record skipped so far (on_bad_record
  = 'skip') and why, one per line, so none is dropped silently."""
  lines = "".join(f"{path}\t{reason}\n" for path, reason in sorted(skipped.items()))
  atomic.write_text(os.path.join(workdir, "skipped_records.txt"), lines)


def _keep_metrics_up_to(workdir: str, step: int) -> None:
  """Drops metrics.jsonl records past the restored step: the resumed run
  logs those steps again, and each step keeps one line."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
  if len(kept) != len(lines):
    atomic.write_text(path, "".join(kept))


def _record_run(workdir: str, config, models, mesh, first: int, num_steps: int) -> None:
  """Appends what this start of training runs to workdir/runs.jsonl: a run
  resumed under another config, JAX or machine stays traceable, and the
  generator layout resolved for this backend (the config says "auto") is
  named."""
  layout = generator_layout.of(models.generator)
  logging.info("generator layout on %s: %s", jax.default_backend(), layout)
  record = {
    "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "start_step": first,
    "num_steps": num_steps,
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "device_kind": jax.devices()[0].device_kind,
    "num_devices": mesh.size,
    "num_processes": jax.process_count(),
    "generator_layout": layout,
    "config": json.loads(config.to_json_best_effort()),
  }
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "runs.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\n")


class _LoggingWriter:
  """Scalars to the log only (config.train.tensorboard=False): for machines
  without TensorFlow, which clu's TensorBoard writer needs. metrics.jsonl
  and the PNG sample grids are written either way."""

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    logging.info("step %d: %s", step, ", ".join(f"{k}={v:.5g}" for k, v in sorted(scalars.items())))

  def write_images(self, step: int, images) -> None:
    del step, images

  def flush(self) -> None:
    pass


def _metric_writer(config, workdir: str):
  if not config.train.get("tensorboard", True):
    return _LoggingWriter()
  from clu import metric_writers  # noqa: PLC0415  (TensorFlow)

  return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)


def train_and_evaluate(config, workdir: str, preempt: preemption.Preemption | None = None
                       ) -> ts.FitState:
  """Trains from scratch or resumes from the newest checkpoint in workdir.

  Writes TensorBoard scalars (averaged over each logging window) and sample
  grids (PNG files under workdir/samples too) and orbax checkpoints, and
  appends one line per start to workdir/runs.jsonl (_record_run). Process 0
  alone writes logs, grids and records; every process saves checkpoints.

  A run stops early, with its last step logged, sampled and checkpointed,
  at config.train.time_budget_s or at a preemption notice (SIGTERM; see
  fit_jax.preemption: `preempt.stopped_at` then says where).
  """
  # Imported here: the update steps above run where the input pipeline's
  # folder sources cannot (a lent accelerator's image).
  from fit_jax import batch_loader, input_pipeline  # noqa: PLC0415

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
  manager = ocp.CheckpointManager(
    os.path.join(workdir, "checkpoints"),
    options=ocp.CheckpointManagerOptions(
      max_to_keep=config.train.keep_checkpoints, create=True
    ),
  )
  # Pretrained/converted weights only initialise a run; a resume restores all.
  resuming = manager.latest_step() is not None
  overrides = None if resuming else pretrained.initial_overrides(config)
  state = ts.create_train_state(config, models, init_key, mesh, overrides)
  if resuming:
    state = _restore(manager, state, workdir)
    logging.warning("resuming from step %d (%s)", int(state.step),
                    os.path.join(workdir, "checkpoints"))
    if jax.process_index() == 0:
      _keep_metrics_up_to(workdir, int(state.step))
  steps = TrainSteps(models, config, mesh, state)
  num_steps = config.train.num_steps
  if num_steps <= 0:
    if not data.num_examples:
      raise ValueError("config.train.num_steps must be set for an unbounded source")
    num_steps = config.train.num_epochs * (data.num_examples // config.train.batch_size)
  if jax.process_index() == 0:
    _record_run(workdir, config, models, mesh, int(state.step), num_steps)
  shard = (jax.process_index(), jax.process_count())
  writer = _metric_writer(config, workdir)
  if jax.process_index() == 0:
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  first = int(state.step)
  batches = batch_loader.TrainBatches(
    data, first, num_steps, config.train.batch_size, shard, config.data.num_workers
  )
  preempt = preempt or preemption.Preemption()
  if first >= num_steps:
    logging.warning("nothing to train: %s is already at step %d of %d", workdir, first, num_steps)
  logging.info("process %d of %d reads rows [%d, %d) of each global batch of %d",
               shard[0], shard[1], shard[0] * config.train.batch_size // shard[1],
               (shard[0] + 1) * config.train.batch_size // shard[1], config.train.batch_size)
  with preempt:
    state = _loop(config, workdir, state, steps, data, batches, writer, manager, preempt,
                  step_key, started, first, num_steps)
  manager.wait_until_finished()
  writer.flush()
  if preempt.stopped_at is not None:
    logging.warning("preempted: stopped after step %d with its checkpoint saved; run the "
                    "same command to resume", preempt.stopped_at)
  return state


def _loop(config, workdir, state, steps, data, batches, writer, manager, preempt, step_key,
          started, first, num_steps):
  """The training loop of train_and_evaluate; returns the last state."""
  budget = config.train.get("time_budget_s", 0) or 0
  shard = (jax.process_index(), jax.process_count())
  window: list[dict[str, jax.Array]] = []
  start = time.time()
  for step, batch in batches:
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
    out_of_time = budget > 0 and (jax.process_count() == 1 or log_step) and _agree(
      time.time() - started >= budget)
    preempted = preempt.reached(done, manager)
    last = done == num_steps or out_of_time or preempted
    if log_step or last:
      host = jax.device_get(window)
      means = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
      _check_finite(means, done - len(window) + 1, done)
      skipped = getattr(data, "skipped", {})
      means["data/skipped_records"] = float(len(skipped))
      if skipped and jax.process_index() == 0:
        write_skipped(workdir, skipped)
      elapsed = time.time() - start
      means["steps_per_s"] = (done - first) / max(elapsed, 1e-9)
      means["eta_s"] = (num_steps - done) / max(means["steps_per_s"], 1e-9)
      writer.write_scalars(done, means)
      if jax.process_index() == 0:
        # A plain-text record too (exact float32 values, one JSON per line).
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
          f.write(json.dumps({"step": done, **{k: v for k, v in means.items()
                                               if k not in ("steps_per_s", "eta_s")}}) + "\n")
      window = []
    if done % config.train.eval_every == 0 or last:
      n = config.train.num_samples
      sample = data.batch(0, config.train.batch_size, "eval", shard)
      device_batch = steps.put_batch(sample)
      # Evaluate a copy: the generator step donates its state argument.
      _, generated, _ = steps.generator(jax.tree.map(jnp.copy, state), device_batch, step_key)
      generated, originals = _gather((generated, sample["image"]))
      if jax.process_index() == 0:
        grid = sample_grid({k: np.asarray(v)[:n] for k, v in generated.items()},
                           np.asarray(originals)[:n])
        writer.write_images(done, {"samples": grid[None]})
        path = os.path.join(workdir, "samples", f"step_{done:07d}.png")
        atomic.write_atomically(path, lambda p: Image.fromarray(grid).save(p, "PNG"))
    if done % config.train.checkpoint_every == 0 or last:
      manager.save(done, args=ocp.args.StandardSave(state), force=preempted)
    if out_of_time:
      logging.warning("stopping at step %d of %d: config.train.time_budget_s=%g s reached",
                      done, num_steps, budget)
    if last:
      break
  return state
