"""fit_jax: the face identity transformer in JAX/Flax."""

from fit_jax import xla_cpu_flags as _xla_cpu_flags

# Before any JAX backend starts: XLA:CPU without YNNPACK (see the module).
_xla_cpu_flags.apply()
