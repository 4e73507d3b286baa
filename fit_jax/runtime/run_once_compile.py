"""Compiler options for a program that runs once: building a fresh state.

A fresh state's program is almost all threefry random-number code for the
parameter initializers (1,406 fusions for the tiny test model) and has no
convolutions. XLA:CPU spends most of its compile time optimising those
fusions with LLVM, for a program that then runs once. At backend
optimisation level 0, measured on 2 cores (docs/performance.md):

  config    compile + run, default    compile + run, level 0
  tiny      19.0 s + 0.03 s           6.2 s + 0.06 s
  demo      17.7 s + 0.04 s           6.8 s + 0.15 s
  default   16.1 s + 0.55 s           8.4 s + 2.7 s

The draws are the same; only the last bit of a rounding can differ (largest
difference 1.2e-7). Training steps keep the default level: there the
slower code costs more than the compile saves. Only XLA:CPU was measured,
so other backends keep their defaults.
"""

import jax

CPU_OPTIONS = {"xla_backend_optimization_level": 0}


def options(devices) -> dict:
  """jax.jit `compiler_options` for a run-once program on `devices`."""
  platforms = {d.platform for d in devices}
  return dict(CPU_OPTIONS) if platforms == {"cpu"} else {}


def jit(fun, devices, **jit_kwargs):
  """jax.jit(fun) compiled with `options(devices)`."""
  return jax.jit(fun, compiler_options=options(devices), **jit_kwargs)
