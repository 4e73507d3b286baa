"""PyTorch checkpoints of the original code -> fit_jax variables.

The only module that imports torch (lazily: torch is the optional `convert`
extra, never a dependency of training or inference). Reads

  checkpoint_<epoch>_iter<N>.pth.tar  {state_dict_G, state_dict_D,
                                       state_dict_Q, state_dict_FR, ...}
  sphere20a_20171020.pth              the bare sphere20a state_dict

and returns Flax variables {'generator' | 'discriminator' | 'password_head'
| 'sphereface': {'params': ...}} for fit_jax.models.build_models(config.model).

torch conventions handled here and nowhere else: OIHW convolutions -> HWIO,
Linear (out, in) -> (in, out), AngleLinear fc6 already (in, out), PReLU per
channel, BatchNorm weight/bias -> scale/bias (no running statistics in the
reference), sphere20a's fc5 flattening order CHW -> fit_jax's HWC, the four
Linear(512, 16) password heads -> one Dense(512, 64).

CLI:
  python -m fit_jax.convert_torch --checkpoint C.pth.tar \
      [--sphereface S.pth] [--config configs/default.py] --out DIR
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from fit_jax import models as models_lib
from fit_jax.training import train_state


class ConversionError(ValueError):
  """A checkpoint that does not match the expected layout."""


# ------------------------------------------------------------- name maps
# Each map: torch key -> (flax module, path tuple inside params, kind).
# kind: conv (OIHW->HWIO), dense (out,in -> in,out), vec (as is),
# fc5 (CHW-flattened dense), angle (as is, in x out).


def _generator_map(config):
  g = config.model.generator
  names = {"model.1.weight": (("conv_in",), "conv")}
  names["model.2.weight"] = (("norm_in", "scale"), "vec")
  names["model.2.bias"] = (("norm_in", "bias"), "vec")
  for i in range(g.num_downsampling):
    names[f"model.{5 + 4 * i}.weight"] = ((f"down_{i}", "kernel"), "conv")
    names[f"model.{6 + 4 * i}.weight"] = ((f"down_norm_{i}", "scale"), "vec")
    names[f"model.{6 + 4 * i}.bias"] = ((f"down_norm_{i}", "bias"), "vec")
  first_block = 4 + 4 * g.num_downsampling
  for b in range(g.num_blocks):
    prefix = f"model.{first_block + b}.conv_block"
    for j, (conv, bn) in enumerate(((1, 2), (5, 6))):
      names[f"{prefix}.{conv}.weight"] = ((f"block_{b}", f"conv_{j}", "kernel"), "conv")
      names[f"{prefix}.{bn}.weight"] = ((f"block_{b}", f"norm_{j}", "scale"), "vec")
      names[f"{prefix}.{bn}.bias"] = ((f"block_{b}", f"norm_{j}", "bias"), "vec")
  first_up = first_block + g.num_blocks
  for j in range(g.num_downsampling):
    conv, bn = first_up + 5 * j + 2, first_up + 5 * j + 3
    names[f"model.{conv}.weight"] = ((f"up_{j}", "kernel"), "conv")
    names[f"model.{conv}.bias"] = ((f"up_{j}", "bias"), "vec")
    names[f"model.{bn}.weight"] = ((f"up_norm_{j}", "scale"), "vec")
    names[f"model.{bn}.bias"] = ((f"up_norm_{j}", "bias"), "vec")
  last = first_up + 5 * g.num_downsampling + 1
  names[f"model.{last}.weight"] = (("conv_out", "kernel"), "conv")
  names[f"model.{last}.bias"] = (("conv_out", "bias"), "vec")
  return names


def _patchgan_map(prefix, module, num_layers):
  names = {
    f"{prefix}.0.weight": ((module, "conv_0", "kernel"), "conv"),
    f"{prefix}.0.bias": ((module, "conv_0", "bias"), "vec"),
  }
  for i in range(1, num_layers + 1):
    names[f"{prefix}.{3 * i - 1}.weight"] = ((module, f"conv_{i}", "kernel"), "conv")
    names[f"{prefix}.{3 * i}.weight"] = ((module, f"norm_{i}", "scale"), "vec")
    names[f"{prefix}.{3 * i}.bias"] = ((module, f"norm_{i}", "bias"), "vec")
  names[f"{prefix}.{3 * num_layers + 2}.weight"] = ((module, "conv_out", "kernel"), "conv")
  return names


def _discriminator_map(config):
  n = config.model.discriminator.num_layers
  names = _patchgan_map("FE", "coarse", n)
  for branch in models_lib.BRANCHES:
    names.update(_patchgan_map(f"layer1_{branch}", f"fine_{branch}", n))
  return names


def _password_head_map(config):
  names = {
    "FE.model.0.weight": (("conv_0", "kernel"), "conv"),
    "FE.model.0.bias": (("conv_0", "bias"), "vec"),
  }
  layers = [
    ("FE.model", 2, 1),
    ("FE.model", 5, 2),
    ("classifiers.model", 0, 3),
    ("classifiers.model", 3, 4),
  ]
  for prefix, conv, i in layers:
    names[f"{prefix}.{conv}.weight"] = ((f"conv_{i}", "kernel"), "conv")
    names[f"{prefix}.{conv + 1}.weight"] = ((f"norm_{i}", "scale"), "vec")
    names[f"{prefix}.{conv + 1}.bias"] = ((f"norm_{i}", "bias"), "vec")
  for k in range(config.model.password_bits // 4):
    names[f"classifiers.fc_list.fc_{k}.weight"] = (("heads", "kernel", k), "head_w")
    names[f"classifiers.fc_list.fc_{k}.bias"] = (("heads", "bias", k), "head_b")
  return names


def _sphereface_map():
  names = {}
  for stage, units in enumerate((1, 2, 4, 1), start=1):
    for i in range(1, 2 * units + 2):
      names[f"conv{stage}_{i}.weight"] = ((f"conv{stage}_{i}", "kernel"), "conv")
      names[f"conv{stage}_{i}.bias"] = ((f"conv{stage}_{i}", "bias"), "vec")
      names[f"relu{stage}_{i}.weight"] = ((f"prelu{stage}_{i}", "alpha"), "vec")
  names["fc5.weight"] = (("fc5", "kernel"), "fc5")
  names["fc5.bias"] = (("fc5", "bias"), "vec")
  names["fc6.weight"] = (("fc6", "weight"), "angle")
  return names


# ------------------------------------------------------------ conversion


def _torch_shape(kind, flax_shape):
  """The torch shape a flax parameter of `flax_shape` must come from."""
  if kind == "conv":
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if kind == "fc5":
    return (flax_shape[1], flax_shape[0])
  if kind == "head_w":
    return (16, flax_shape[0])
  if kind == "head_b":
    return (16,)
  return tuple(flax_shape)


def _to_flax(kind, array, fc5_chw):
  if kind == "conv":
    return array.transpose(2, 3, 1, 0)
  if kind == "fc5":
    c, h, w = fc5_chw
    out = array.shape[0]
    # torch flattens (C, H, W); fit_jax flattens NHWC as (H, W, C).
    return array.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out)
  return array


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def convert_state_dict(state_dict, names, abstract_params, label, fc5_chw=None):
  """Converts one torch state_dict with strict validation.

  Args:
    state_dict: {torch key: array-like}.
    names: {torch key: (flax path, kind)} of this module.
    abstract_params: the module's params (shapes) for this config.
    label: what to call the module in errors, e.g. 'state_dict_G'.
    fc5_chw: (C, H, W) of sphere20a's last feature map, for fc5.

  Returns:
    the module's params as numpy float32 arrays.

  Raises:
    ConversionError: listing every missing, unexpected and mis-shaped key.
  """
  state = {re.sub(r"^module\.", "", k): v for k, v in state_dict.items()}
  missing = sorted(set(names) - set(state))
  unexpected = sorted(set(state) - set(names))
  misshaped = []
  params: dict = {}
  heads_w, heads_b = {}, {}
  for key, (path, kind) in names.items():
    if key not in state:
      continue
    array = np.asarray(state[key], np.float32)
    # A password head's path ends with its digit index into the packed Dense.
    param_path = path[:-1] if kind in ("head_w", "head_b") else path
    expected = _torch_shape(kind, _get(abstract_params, param_path).shape)
    if tuple(array.shape) != expected:
      misshaped.append(f"{key}: {tuple(array.shape)} != expected {expected}")
      continue
    if kind == "head_w":
      heads_w[path[-1]] = array.T
    elif kind == "head_b":
      heads_b[path[-1]] = array
    else:
      _set(params, path, _to_flax(kind, array, fc5_chw))
  problems = []
  if missing:
    problems.append(f"missing {missing}")
  if unexpected:
    problems.append(f"unexpected {unexpected}")
  if misshaped:
    problems.append(f"mis-shaped {misshaped}")
  if problems:
    raise ConversionError(f"{label}: " + "; ".join(problems))
  if heads_w:
    order = sorted(heads_w)
    _set(params, ("heads", "kernel"), np.concatenate([heads_w[k] for k in order], 1))
    _set(params, ("heads", "bias"), np.concatenate([heads_b[k] for k in order]))
  return params


def _abstract(config):
  models = models_lib.build_models(config.model)
  variables = jax.eval_shape(
    lambda: train_state.init_variables(
      models, jax.random.PRNGKey(0), config.data.image_size, config.model.password_bits
    )
  )
  return {k: v["params"] for k, v in variables.items()}


def _check_config(state_dicts, config):
  """Password length and class count named plainly before any key check."""
  g = state_dicts.get("state_dict_G", {})
  if "model.1.weight" in g:
    bits = int(np.asarray(g["model.1.weight"]).shape[1]) - 3
    if bits != config.model.password_bits:
      raise ConversionError(
        f"the checkpoint's generator takes {bits}-bit passwords but "
        f"config.model.password_bits={config.model.password_bits}"
      )
  fr = state_dicts.get("state_dict_FR", {})
  if "fc6.weight" in fr:
    classes = int(np.asarray(fr["fc6.weight"]).shape[1])
    if classes != config.model.sphereface.num_classes:
      raise ConversionError(
        f"the checkpoint's SphereFace head has {classes} classes but "
        f"config.model.sphereface.num_classes={config.model.sphereface.num_classes}"
      )


def _fc5_chw(config):
  width = config.model.sphereface.width
  return (width * 8, 7, 6)


def load_torch(path: str):
  """torch.load with weights only; a clear error for anything else."""
  try:
    import torch  # noqa: PLC0415  (optional extra)
  except ImportError as e:
    raise ImportError(
      "reading .pth files needs torch: pip install 'fit_jax[convert]' "
      "(or pip install torch==2.13.0)"
    ) from e
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle, zip and format errors all mean the same
    raise ConversionError(
      f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
      f"{str(e).splitlines()[0] if str(e) else ''})"
    ) from None
  if not isinstance(obj, dict):
    raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state_dict")

  def to_numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x

  return {
    k: ({kk: to_numpy(vv) for kk, vv in v.items()} if isinstance(v, dict) else to_numpy(v))
    for k, v in obj.items()
  }


def convert_checkpoint(path: str, config) -> dict:
  """A reference training checkpoint -> {module: {'params': ...}}."""
  obj = load_torch(path)
  keys = ("state_dict_G", "state_dict_D", "state_dict_Q", "state_dict_FR")
  absent = [k for k in keys if k not in obj]
  if absent:
    raise ConversionError(
      f"{path} is not a reference training checkpoint: it lacks {absent} (it has {sorted(obj)[:8]})"
    )
  _check_config(obj, config)
  abstract = _abstract(config)
  params = {
    "generator": convert_state_dict(
      obj["state_dict_G"], _generator_map(config), abstract["generator"], "state_dict_G"
    ),
    "discriminator": convert_state_dict(
      obj["state_dict_D"], _discriminator_map(config), abstract["discriminator"], "state_dict_D"
    ),
    "password_head": convert_state_dict(
      obj["state_dict_Q"], _password_head_map(config), abstract["password_head"], "state_dict_Q"
    ),
    "sphereface": convert_state_dict(
      obj["state_dict_FR"],
      _sphereface_map(),
      abstract["sphereface"],
      "state_dict_FR",
      _fc5_chw(config),
    ),
  }
  return {k: {"params": v} for k, v in params.items()}


def convert_sphereface(path: str, config=None) -> dict:
  """A bare sphere20a state_dict (e.g. sphere20a_20171020.pth) -> variables;
  without a config, sphere20a's own sizes (width 64, classes from fc6)."""
  obj = load_torch(path)
  state = obj.get("state_dict_FR", obj)
  if not all(isinstance(v, np.ndarray) for v in state.values()):
    raise ConversionError(f"{path} is not a bare sphere20a state_dict")
  if config is None:
    if "fc6.weight" not in state:
      raise ConversionError(f"{path} has no fc6.weight: not a sphere20a state_dict")
    net = models_lib.SphereFace20a(num_classes=int(np.asarray(state["fc6.weight"]).shape[1]))
    crop = jnp.zeros((1, *net.crop_size, 3))
    abstract = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), crop))["params"]
    fc5_chw = (net.width * 8, 7, 6)
  else:
    _check_config({"state_dict_FR": state}, config)
    abstract = _abstract(config)["sphereface"]
    fc5_chw = _fc5_chw(config)
  params = convert_state_dict(state, _sphereface_map(), abstract, path, fc5_chw)
  return {"params": params}
