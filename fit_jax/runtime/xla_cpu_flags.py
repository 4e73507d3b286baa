"""Keeps XLA:CPU from handing convolutions to YNNPACK, before JAX starts.

jaxlib 0.10 and 0.11 hand CPU convolutions (and dots, reductions and
elementwise fusions) to YNNPACK by default. For this model's convolutions
that is far slower than XLA's own kernels. Measured on 2 cores
(docs/performance.md), float32:
  * paper-size generator inference at batch 16: 2.3 img/s with YNNPACK
    convolutions, 7.6 without;
  * a demo-config training iteration at batch 8: 5.3-5.9 img/s with them,
    10.0-10.4 without.
With every YNNPACK fusion off, training ran at 8.4-10.0 img/s, so only the
convolutions leave it.

`apply()` therefore appends
`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` to
XLA_FLAGS (with jaxlib 0.11, `-individual_convolution,-reduce`: see VALUES). It leaves XLA_FLAGS alone when:
  * the user's XLA_FLAGS already set that flag (theirs wins);
  * FIT_JAX_KEEP_YNNPACK=1;
  * jaxlib is outside the versions measured. An unknown flag in XLA_FLAGS
    aborts the process, and a later XLA may have fixed the slowdown.

XLA reads XLA_FLAGS when JAX creates its first backend: every fit_jax
command calls `apply()` first thing, and so should a program or notebook
that uses the library on a CPU. Called after JAX started, it warns.
GPU and TPU programs are unaffected: the option applies only to XLA:CPU.
"""

import importlib.metadata
import os
import sys
import warnings

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# Removes from jaxlib's default fusion types only the one measured slow.
VALUE = "-individual_convolution"
# Per jaxlib version that takes the flag: 0.10.2 (pinned; measured) and
# 0.11.2 (the GPU image's; checked to route convolutions to YNNPACK without
# it, to XLA with it). jaxlib 0.11.2's YNNPACK reductions also compute
# wrongly on CPU: a training step with a 5,748-class A-Softmax head gave a
# loss of 80.607 (0.10.2, and 0.11.2 op by op: 80.527) and NaN generator
# gradients; without them it gives 80.527 and finite gradients.
VALUES = {(0, 10): VALUE, (0, 11): VALUE + ",-reduce"}
MEASURED_JAXLIB = tuple(VALUES)
OPT_OUT = "FIT_JAX_KEEP_YNNPACK"


def _jaxlib_minor() -> tuple[int, int] | None:
  try:
    major, minor = importlib.metadata.version("jaxlib").split(".")[:2]
    return int(major), int(minor)
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return None


def _backends_started() -> bool:
  bridge = sys.modules.get("jax._src.xla_bridge")
  started = getattr(bridge, "backends_are_initialized", None)
  return bool(started and started())


def apply(environ=os.environ, jaxlib_minor: tuple[int, int] | None = None) -> bool:
  """Adds the flag to environ["XLA_FLAGS"] if it should; returns whether it did."""
  if environ.get(OPT_OUT) == "1":
    return False
  flags = environ.get("XLA_FLAGS", "")
  if FLAG + "=" in flags:
    return False
  minor = jaxlib_minor or _jaxlib_minor()
  if minor not in VALUES:
    return False
  environ["XLA_FLAGS"] = f"{flags} {FLAG}={VALUES[minor]}".strip()
  if environ is os.environ and _backends_started():
    warnings.warn(
      "xla_cpu_flags.apply() ran after JAX started its backends, so XLA:CPU keeps YNNPACK's "
      "convolutions (several times slower for this model on CPU): call it first, "
      f"or set XLA_FLAGS={FLAG}={VALUES[minor]} yourself",
      stacklevel=3,
    )
  return True
