"""The four networks of the face identity transformer and their factory."""

import dataclasses

import jax.numpy as jnp

from fit_jax.models import generator_layout
from fit_jax.models.discriminator import BRANCHES, MultiScaleDiscriminator
from fit_jax.models.generator import Generator
from fit_jax.models.inception_resnet_v1 import FaceNetClassifier
from fit_jax.models.password_head import PasswordHead
from fit_jax.models.sphereface import AngleLinear, SphereFace20a

__all__ = [
  "BRANCHES",
  "Generator",
  "MultiScaleDiscriminator",
  "PasswordHead",
  "SphereFace20a",
  "FaceNetClassifier",
  "AngleLinear",
  "Models",
  "build_models",
]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Models:
  """Module instances (stateless); their variables live in FitState."""

  generator: Generator
  discriminator: MultiScaleDiscriminator
  password_head: PasswordHead
  # The training recognizer (config.model.recognizer). Its slot keeps the
  # reference's name, `sphereface`, in the state and in checkpoints, whichever
  # network fills it.
  sphereface: SphereFace20a | FaceNetClassifier


def build_models(model_config, platform: str | None = None) -> Models:
  """Builds the four modules from `config.model` (see configs/default.py).

  The generator's layout options left "auto" (or absent, as in configs
  written before an option existed) take `platform`'s entry in
  generator_layout (default: JAX's default backend)."""
  if model_config.dtype not in _DTYPES:
    raise ValueError(f"config.model.dtype={model_config.dtype!r} is not one of {sorted(_DTYPES)}")
  dtype = _DTYPES[model_config.dtype]
  norm = dict(norm=model_config.norm, norm_group_size=model_config.norm_group_size)
  g, d, q = model_config.generator, model_config.discriminator, model_config.password_head
  layout = generator_layout.resolve(
    {name: g.get(name) for name in generator_layout.LAYOUT_OPTIONS}, platform
  )
  return Models(
    generator=Generator(
      password_bits=model_config.password_bits,
      ngf=g.ngf,
      num_downsampling=g.num_downsampling,
      num_blocks=g.num_blocks,
      dtype=dtype,
      **layout,
      **norm,
    ),
    discriminator=MultiScaleDiscriminator(ndf=d.ndf, num_layers=d.num_layers, dtype=dtype, **norm),
    password_head=PasswordHead(
      password_bits=model_config.password_bits, ndf=q.ndf, dtype=dtype, **norm
    ),
    sphereface=_recognizer(model_config, dtype),
  )


RECOGNIZERS = ("sphereface", "facenet")


def _recognizer(model_config, dtype):
  name = model_config.get("recognizer", "sphereface")
  fr = model_config.sphereface
  if name == "sphereface":
    return SphereFace20a(num_classes=fr.num_classes, width=fr.width, dtype=dtype)
  if name == "facenet":
    return FaceNetClassifier(num_classes=fr.num_classes, dtype=dtype)
  raise ValueError(f"config.model.recognizer={name!r} is not one of {RECOGNIZERS}")
