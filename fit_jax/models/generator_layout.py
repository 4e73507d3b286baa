"""How the Generator computes, chosen per backend.

The Generator's layout options (LAYOUT_OPTIONS) change how it computes, never
what: every value gives the same function of the same parameters (tested in
tests/models/models_test.py and generator_layout_test.py to float32
rounding), so one checkpoint runs under any of them. Which is fastest
depends on the backend: the same program is bound by convolution FLOPs on a
CPU, by memory passes and cuDNN's kernel shapes on a GPU, by relayouts on a
TPU. An option set to "auto" (the shipped config's value; None for the
integer ones) takes the entry of the backend the model is built for, below;
an option a config names is kept as it is.

Each entry records what decided it. Change an entry only with a measurement
on that backend (docs/performance.md), in both training and inference.
"""

from collections.abc import Mapping

import jax

from fit_jax.models import padding, rgb_layers, upsampling

AUTO = "auto"

LAYOUT_OPTIONS = ("upsample", "reflect_pad_ops", "rgb_conv", "rgb_block", "folded_trunk_padding")

TRUNK_PADDING_MODES = ("per_conv", "border")

BY_PLATFORM = {
  # XLA:CPU, 2 cores, float32, alternating rounds (docs/performance.md):
  # phase_2x2 ran faster than resize_conv in every round, paper-size folded
  # inference and demo-config training alike (9 % fewer FLOPs, on a backend
  # bound by them); 4x4 RGB blocks gained nothing on top; border lost.
  "cpu": dict(
    upsample="phase_2x2",
    reflect_pad_ops="gather",
    rgb_conv="conv",
    rgb_block=2,
    folded_trunk_padding="per_conv",
  ),
  # H200, bf16, jax 0.11.2 (benchmarks/gpu_layouts.sh and its verdict, one
  # run): RGB layers on 4x4 pixel blocks with phase_2x2 up layers beat
  # resize_conv, conv, per_conv in training (0.0960 against 0.1084 s per
  # iteration at batch 48) and in folded inference (19,687 against 13,087
  # img/s at batch 256); border added to that (20,044 img/s).
  "gpu": dict(
    upsample="phase_2x2",
    reflect_pad_ops="gather",
    rgb_conv="space_to_depth",
    rgb_block=4,
    folded_trunk_padding="border",
  ),
  # TPU v5e by the compiler's own cost estimates (no TPU measured):
  # phase_2x2 costs more than resize_conv in both steps (relayout copies),
  # border more in inference.
  "tpu": dict(
    upsample="resize_conv",
    reflect_pad_ops="gather",
    rgb_conv="conv",
    rgb_block=2,
    folded_trunk_padding="per_conv",
  ),
}


def platform_family(platform: str) -> str:
  """'cpu', 'gpu' or 'tpu' for a JAX platform name ('cuda' and 'rocm' are
  GPUs)."""
  family = {"cuda": "gpu", "rocm": "gpu"}.get(platform.lower(), platform.lower())
  if family not in BY_PLATFORM:
    raise ValueError(f"platform {platform!r} is not one of {sorted(BY_PLATFORM)} (or cuda, rocm)")
  return family


def is_auto(value) -> bool:
  return value is None or value == AUTO


def resolve(options: Mapping, platform: str | None = None) -> dict:
  """Every layout option, its "auto" (or None, or missing) values replaced by
  the entry of `platform` (a JAX platform name; default: JAX's default
  backend).

  Raises:
    ValueError: an unknown option name or platform, one line.
  """
  unknown = sorted(set(options) - set(LAYOUT_OPTIONS))
  if unknown:
    raise ValueError(f"unknown generator layout options {unknown}; known: {list(LAYOUT_OPTIONS)}")
  best = BY_PLATFORM[platform_family(platform or jax.default_backend())]
  return {
    name: best[name] if is_auto(options.get(name)) else options[name] for name in LAYOUT_OPTIONS
  }


def of(generator) -> dict:
  """The layout a built Generator computes in (for benchmark records)."""
  return {name: getattr(generator, name) for name in LAYOUT_OPTIONS}


def check(layout: Mapping) -> None:
  """Raises ValueError, one line, for a layout value no form implements."""
  choices = {
    "upsample": upsampling.UPSAMPLE_MODES,
    "reflect_pad_ops": padding.REFLECT_PAD_OPS,
    "rgb_conv": rgb_layers.RGB_CONV_MODES,
    "folded_trunk_padding": TRUNK_PADDING_MODES,
  }
  for name, known in choices.items():
    if layout[name] not in known:
      raise ValueError(f"{name} {layout[name]!r} is not one of {known}")
  if layout["rgb_block"] < 1:
    raise ValueError(f"rgb_block must be at least 1; got {layout['rgb_block']}")
