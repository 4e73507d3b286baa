"""The warning fit_jax.main gives about XLA's kernel cache file on GPUs."""

from fit_jax.runtime import compilation_cache


def test_kernel_cache_file_on_gpu_is_warned_about():
  for setting in ("all", "xla_gpu_per_fusion_autotune_cache_dir,xla_gpu_kernel_cache_file"):
    warning = compilation_cache.kernel_cache_warning(setting, "gpu")
    assert warning is not None
    assert "JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES" in warning and setting in warning


def test_default_caches_and_other_backends_pass_silently():
  assert (
    compilation_cache.kernel_cache_warning("xla_gpu_per_fusion_autotune_cache_dir", "gpu") is None
  )
  assert compilation_cache.kernel_cache_warning("", "gpu") is None
  assert compilation_cache.kernel_cache_warning(None, "gpu") is None
  assert compilation_cache.kernel_cache_warning("all", "cpu") is None
  assert compilation_cache.kernel_cache_warning("all", "tpu") is None
