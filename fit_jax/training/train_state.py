"""The immutable training state, its construction and its shardings.

Grouped by optimizer as the original: the generator group (G and the
password head Q, `optimizer_G`) and the discriminator group (D and
SphereFace at 0.1x learning rate, `optimizer_D`). The CycleGAN image pools,
Python lists of CPU tensors in the original, are fixed-size arrays here.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fit_jax import models as models_lib
from fit_jax.runtime import run_once_compile

GEN_MODULES = ("generator", "password_head")
DISC_MODULES = ("discriminator", "sphereface")


class NetState(struct.PyTreeNode):
  """Params, BatchNorm statistics and optimizer state of one optimizer group."""

  params: Any  # {'generator': ..., 'password_head': ...} or D/FR.
  batch_stats: Any  # same keys; empty dicts unless config.model.norm='batch'.
  opt_state: optax.OptState
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  def apply_gradients(self, grads, batch_stats) -> "NetState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(
      params=optax.apply_updates(self.params, updates), batch_stats=batch_stats, opt_state=opt_state
    )


class FitState(struct.PyTreeNode):
  """Everything that changes during training.

  step: completed iterations (generator_step then discriminator_step);
    advanced by discriminator_step, the last step of an iteration.
  pools: {'M' | 'R' | 'WR': {'images': [S, H, W, 3], 'count': int32}}.
  """

  step: jax.Array
  gen: NetState
  disc: NetState
  pools: Any


def _adam(learning_rate: float, config) -> optax.GradientTransformation:
  return optax.adam(learning_rate, b1=config.optim.b1, b2=config.optim.b2)


def make_optimizers(config):
  """Per-module learning rates via multi_transform (labels = top-level keys)."""

  def by_module(params):
    return {name: name for name in params}

  gen_tx = optax.multi_transform(
    {
      "generator": _adam(config.optim.g.learning_rate, config),
      "password_head": _adam(config.optim.g.password_head_learning_rate, config),
    },
    by_module,
  )
  disc_tx = optax.multi_transform(
    {
      "discriminator": _adam(config.optim.d.learning_rate, config),
      "sphereface": _adam(config.optim.d.sphereface_learning_rate, config),
    },
    by_module,
  )
  return gen_tx, disc_tx


def init_variables(models: models_lib.Models, key: jax.Array, image_size: int, password_bits: int):
  """Fresh variables of the four networks, {module: {'params', ...}}."""
  kg, kd, kq, kf = jax.random.split(key, 4)
  images = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
  password = jnp.zeros((2, password_bits), jnp.float32)
  crops = jnp.zeros((2, *models.sphereface.crop_size, 3), jnp.float32)
  return {
    "generator": models.generator.init(kg, images, password, train=True),
    "discriminator": models.discriminator.init(kd, images, branch="M", train=True),
    "password_head": models.password_head.init(kq, images, images, train=True),
    "sphereface": models.sphereface.init(kf, crops),
  }


def _group(variables, names, tx):
  params = {n: variables[n]["params"] for n in names}
  stats = {n: variables[n].get("batch_stats", {}) for n in names}
  return NetState(params=params, batch_stats=stats, opt_state=tx.init(params), tx=tx)


def state_from_variables(variables, config, optimizers=None) -> FitState:
  """A step-0 FitState from variables (fresh, converted or restored).

  `optimizers` (gen_tx, disc_tx) are static parts of the state's tree
  structure: states built with the same pair have the same treedef.
  """
  gen_tx, disc_tx = optimizers or make_optimizers(config)
  size = config.data.image_size
  pools = {
    b: {
      "images": jnp.zeros((config.loss.pool_size, size, size, 3), jnp.float32),
      "count": jnp.zeros((), jnp.int32),
    }
    for b in models_lib.BRANCHES
  }
  return FitState(
    step=jnp.zeros((), jnp.int32),
    gen=_group(variables, GEN_MODULES, gen_tx),
    disc=_group(variables, DISC_MODULES, disc_tx),
    pools=pools,
  )


def fresh_state(config, models: models_lib.Models):
  """fresh(key, overrides): the state of a new run, `overrides` merged in;
  the function create_train_state compiles."""
  optimizers = make_optimizers(config)

  def fresh(key, overrides):
    variables = init_variables(models, key, config.data.image_size, config.model.password_bits)
    # Merged inside the compiled program: the fresh draws of what is
    # overridden are dead code that XLA removes before compiling it (a
    # pretrained FaceNet's random init took 18 s to compile on CPU).
    return state_from_variables(_merged(variables, overrides), config, optimizers)

  return fresh


def create_train_state(
  config, models: models_lib.Models, key: jax.Array, mesh: Mesh, overrides: dict | None = None
) -> FitState:
  """Initialises the state directly into its (replicated) sharding.

  Args:
    config: the experiment config.
    models: from fit_jax.models.build_models(config.model).
    key: PRNG key for the fresh init.
    mesh: the 1-D `data` mesh.
    overrides: optional {module: variables} replacing fresh ones (e.g. a
      converted SphereFace); shapes must match the fresh ones.
  """
  fresh = fresh_state(config, models)
  overrides = overrides or {}
  sharding = state_sharding(jax.eval_shape(fresh, key, overrides), mesh)
  return run_once_compile.jit(fresh, list(mesh.devices.flat), out_shardings=sharding)(
    key, overrides
  )


def abstract_train_state(config, models: models_lib.Models, mesh: Mesh) -> FitState:
  """The state's shapes, dtypes and shardings, computing nothing: what a
  resumed run restores its checkpoint into (a fresh state would be drawn,
  compiled for and then overwritten)."""
  key = jax.eval_shape(lambda: jax.random.PRNGKey(0))  # as the default PRNG makes it
  abstract = jax.eval_shape(fresh_state(config, models), key, {})
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    abstract,
    state_sharding(abstract, mesh),
  )


def _merged(variables: dict, overrides: dict) -> dict:
  """variables with each module of `overrides` replaced, entry by entry."""
  variables = dict(variables)
  for name, new in overrides.items():
    fresh = variables[name]
    # A partial override (e.g. a pretrained FaceNet backbone without the
    # A-Softmax head) keeps the fresh top-level entries it does not name.
    unknown = sorted(set(new["params"]) - set(fresh["params"]))
    if unknown:
      raise ValueError(f"variables for {name!r} have entries {unknown} the model lacks")
    merged = {**fresh["params"], **new["params"]}
    _check_same_shapes(fresh["params"], merged, name)
    variables[name] = {"params": merged}
    # Reference checkpoints have no running statistics: a norm=batch model
    # keeps its fresh ones (mean 0, var 1) until training updates them.
    new_stats = new.get("batch_stats") or fresh.get("batch_stats")
    if new_stats:
      variables[name]["batch_stats"] = new_stats
  return variables


def _check_same_shapes(expected, got, name):
  want = jax.tree.map(lambda x: (x.shape, str(x.dtype)), expected)
  have = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), got)
  if jax.tree.structure(want) != jax.tree.structure(have) or want != have:
    raise ValueError(
      f"variables for {name!r} do not match the config's model: "
      f"expected {jax.tree.structure(want)}, got {jax.tree.structure(have)}"
    )


def make_mesh(devices=None) -> Mesh:
  """The 1-D data-parallel mesh over all devices (auto axis type)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh(
    (len(devices),), ("data",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,)
  )


def state_sharding(state, mesh: Mesh):
  """State replicated on every device (data parallelism)."""
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(lambda _: replicated, state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the `data` axis."""
  return NamedSharding(mesh, PartitionSpec("data"))
