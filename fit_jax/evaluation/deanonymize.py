"""Deanonymizers for the classical baselines (paper §5.1, Table 2, Fig. 4).

  python -m fit_jax.deanonymize --config configs/deanonymize.py:blur --workdir DIR

The paper judges each baseline by how well its anonymization can be undone:
a network trained to map baseline(x) back to x. As the paper, the network is
fit_jax's own generator (password input held at zero), trained with the
reconstruction (L1) and photo-realism (two-scale LSGAN, the `R` branch of
fit_jax's discriminator) losses only. The baseline runs on the host on each
batch ([0, 1] images, `fit_jax.evaluation.baselines`), so any baseline works unchanged.

The result is written as converted variables `DIR/deanonymizer`
({'generator': {params, batch_stats}}), which `inference.load_generator`
and `python -m fit_jax.evaluate --deanonymizers` read; metrics go to
`DIR/metrics.jsonl`. Not resumable: these are short auxiliary runs.
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from fit_jax import models as models_lib
from fit_jax.data import batch_loader, input_pipeline
from fit_jax.evaluation import baselines
from fit_jax.runtime import atomic, run_once_compile
from fit_jax.training import fused_calls, losses


def make_optimizer(config):
  return optax.adam(config.optim.g.learning_rate, b1=config.optim.b1, b2=config.optim.b2)


def init(config, models, key, tx):
  size = config.data.image_size
  images = jnp.zeros((2, size, size, 3), jnp.float32)
  kg, kd = jax.random.split(key)
  variables = {
    "generator": models.generator.init(
      kg, images, jnp.zeros((2, config.model.password_bits)), train=True
    ),
    "discriminator": models.discriminator.init(kd, images, branch="R", train=True),
  }
  params = {k: v["params"] for k, v in variables.items()}
  stats = {k: v.get("batch_stats", {}) for k, v in variables.items()}
  return {
    "params": params,
    "batch_stats": stats,
    "opt_g": tx.init(params["generator"]),
    "opt_d": tx.init(params["discriminator"]),
  }


def train_step(state, anonymized, original, *, models, tx, config):
  """One G step then one D step on the fresh output; inputs in [-1, 1]."""
  zeros = jnp.zeros((anonymized.shape[0], config.model.password_bits), jnp.float32)
  params, stats = state["params"], state["batch_stats"]

  def g_loss(g_params):
    out, g_stats = fused_calls.apply(
      models.generator, g_params, stats["generator"], anonymized, zeros, train=True, mutable=True
    )
    scores, _ = fused_calls.apply(
      models.discriminator,
      params["discriminator"],
      stats["discriminator"],
      out,
      "R",
      train=True,
      mutable=True,
    )
    recon = losses.l1(out, original)
    gan = losses.lsgan(scores, 1.0)
    return config.loss.lambda_recon * recon + gan, (out, g_stats, {"g/l1": recon, "g/gan": gan})

  g_grads, (out, g_stats, metrics) = jax.grad(g_loss, has_aux=True)(params["generator"])
  updates, opt_g = tx.update(g_grads, state["opt_g"], params["generator"])
  g_params = optax.apply_updates(params["generator"], updates)
  out = jax.lax.stop_gradient(out)

  def d_loss(d_params):
    real, d_stats = fused_calls.apply(
      models.discriminator,
      d_params,
      stats["discriminator"],
      original,
      "R",
      train=True,
      mutable=True,
    )
    fake, d_stats = fused_calls.apply(
      models.discriminator, d_params, d_stats, out, "R", train=True, mutable=True
    )
    return 0.5 * (losses.lsgan(real, 1.0) + losses.lsgan(fake, 0.0)), d_stats

  (d_value, d_stats), d_grads = jax.value_and_grad(d_loss, has_aux=True)(params["discriminator"])
  updates, opt_d = tx.update(d_grads, state["opt_d"], params["discriminator"])
  d_params = optax.apply_updates(params["discriminator"], updates)
  metrics["d/gan"] = d_value
  new_state = {
    "params": {"generator": g_params, "discriminator": d_params},
    "batch_stats": {"generator": g_stats, "discriminator": d_stats},
    "opt_g": opt_g,
    "opt_d": opt_d,
  }
  return new_state, metrics


class _Anonymized:
  """A source whose batches also hold the baseline's anonymization
  ("anonymized", [-1, 1]), so batch_loader's workers build both."""

  def __init__(self, source, config):
    self.source = source
    self.baseline = config.deanonymize.baseline
    self.scale = config.data.image_size / config.data.landmark_frame

  def batch(self, step: int, batch_size: int, shard=(0, 1)) -> dict[str, np.ndarray]:
    batch = self.source.batch(step, batch_size, shard=shard)
    original = (batch["image"] + 1.0) / 2.0
    anonymized = baselines.apply(
      self.baseline, original, batch["landmarks"] * self.scale, seed=step
    )
    return {**batch, "anonymized": (anonymized * 2.0 - 1.0).astype(np.float32)}


def train(config, workdir: str) -> str:
  """Trains the deanonymizer of config.deanonymize.baseline; returns its path."""
  baseline = config.deanonymize.baseline
  if baseline not in baselines.NAMES:
    raise ValueError(f"config.deanonymize.baseline={baseline!r}: choose from {baselines.NAMES}")
  out_dir = os.path.join(workdir, "deanonymizer")
  if os.path.exists(out_dir):
    raise FileExistsError(f"{out_dir} exists; choose a new --workdir")
  os.makedirs(workdir, exist_ok=True)
  models = models_lib.build_models(config.model)
  source = input_pipeline.build_source(config)
  tx = make_optimizer(config)
  # One compiled program, not op-by-op dispatch of every initializer.
  state = run_once_compile.jit(lambda k: init(config, models, k, tx), jax.devices())(
    jax.random.key(config.seed)
  )
  step_fn = jax.jit(
    functools.partial(train_step, models=models, tx=tx, config=config), donate_argnums=0
  )
  log = []
  start = time.time()
  batches = batch_loader.TrainBatches(
    _Anonymized(source, config),
    0,
    config.train.num_steps,
    config.train.batch_size,
    num_workers=config.data.num_workers,
  )
  for step, batch in batches:
    state, metrics = step_fn(state, jnp.asarray(batch["anonymized"]), jnp.asarray(batch["image"]))
    if (step + 1) % config.train.log_every == 0 or step + 1 == config.train.num_steps:
      record = {
        "step": step + 1,
        **{k: float(v) for k, v in metrics.items()},
        "steps_per_s": (step + 1) / (time.time() - start),
      }
      log.append(json.dumps(record))
      logging.info("deanonymize %s %s", baseline, record)
  atomic.write_text(os.path.join(workdir, "metrics.jsonl"), "\n".join(log) + "\n")
  from fit_jax.conversion import pretrained  # noqa: PLC0415

  variables = jax.device_get(
    {
      "generator": {
        "params": state["params"]["generator"],
        "batch_stats": state["batch_stats"]["generator"],
      }
    }
  )
  pretrained.save_variables(out_dir, variables)
  return out_dir
