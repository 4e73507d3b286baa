"""What fit_jax says about JAX's persistent compilation cache settings.

Kept apart from fit_jax.main, whose absl flags clash with other entry
points' when both are imported (as in one test process).
"""


def kernel_cache_warning(xla_caches: str | None, backend: str) -> str | None:
  """What to tell a GPU user whose persistent cache turns on XLA's kernel
  cache file (JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES=all, or naming it):
  JAX leaves it off by default, and with it every training run of this
  model on two H200s died with CUDA_ERROR_ILLEGAL_INSTRUCTION
  (openxla/xla#35951). None when nothing is wrong."""
  names = {name.strip() for name in (xla_caches or "").split(",")}
  if backend != "gpu" or not names & {"all", "xla_gpu_kernel_cache_file"}:
    return None
  return (
    f"JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES={xla_caches!r} turns on XLA's kernel cache "
    "file, whose reuse of kernels across programs crashed this model's training on "
    "H200s (CUDA_ERROR_ILLEGAL_INSTRUCTION; openxla/xla#35951); unset it or keep "
    "JAX's default, xla_gpu_per_fusion_autotune_cache_dir"
  )
