"""flop_count against an independent oracle: a convolution of ones with ones
sums, per output, exactly the kernel taps that read real input elements
(padding and dilation holes read zeros), so 2 * sum(conv(1, 1)) is its FLOPs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import flop_count
from fit_jax import models as models_lib


def _conv(strides, padding, lhs_dilation, rhs_dilation, groups):
  def conv(x, w):
    return jax.lax.conv_general_dilated(
      x,
      w,
      strides,
      padding,
      lhs_dilation,
      rhs_dilation,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups,
    )

  return conv


def _oracle(conv, x, w) -> float:
  return 2.0 * float(jnp.sum(conv(jnp.ones_like(x), jnp.ones_like(w))))


def _random_cases(count: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  for _ in range(count):
    groups = int(rng.choice([1, 2]))
    pair = lambda low, high: tuple(int(v) for v in rng.integers(low, high, 2))  # noqa: E731
    kernel, padding = pair(1, 5), [pair(-1, 3), pair(-1, 3)]
    conv = _conv(pair(1, 3), padding, pair(1, 3), pair(1, 3), groups)
    x = jnp.ones((2, 9, 7, 4 * groups))
    w = jnp.ones(kernel + (4, 2 * groups))
    yield conv, x, w


def test_convolutions_of_any_geometry_match_the_oracle_and_cpu_hlo():
  checked = 0
  for conv, x, w in _random_cases(16):
    oracle = _oracle(conv, x, w)
    if oracle == 0:
      continue
    assert sum(flop_count.jaxpr_flops(conv, x, w).values()) == oracle
    assert flop_count.hlo_module_flops(jax.jit(conv).lower(x, w).compile().as_text()) == oracle
    # Input and weight gradients, however JAX phrases them (flipped kernels,
    # lhs dilation for strides, the batch as the contraction), cost the
    # forward count each.
    grad = jax.grad(lambda x, w: jnp.sum(conv(x, w)), argnums=(0, 1))
    counts = flop_count.jaxpr_flops(grad, x, w)
    assert sum(v for k, v in counts.items() if "transpose" in k) == 2 * oracle
    hlo = jax.jit(grad).lower(x, w).compile().as_text()
    assert flop_count.hlo_module_flops(hlo) == 2 * oracle
    checked += 1
  assert checked >= 10


def test_dots_scans_and_conds():
  a, b = jnp.ones((3, 5, 7)), jnp.ones((3, 7, 2))
  batched = lambda a, b: jnp.einsum("bij,bjk->bik", a, b)  # noqa: E731
  assert sum(flop_count.jaxpr_flops(batched, a, b).values()) == 2 * 3 * 5 * 7 * 2
  hlo = jax.jit(batched).lower(a, b).compile().as_text()
  assert flop_count.hlo_module_flops(hlo) == 2 * 3 * 5 * 7 * 2

  def scanned(m):
    return jax.lax.scan(lambda c, _: (c @ m, None), m, length=4)[0]

  m = jnp.ones((8, 8))
  assert sum(flop_count.jaxpr_flops(scanned, m).values()) == 4 * 2 * 8**3

  def branchy(m, p):
    return jax.lax.cond(p, lambda m: m @ m @ m, lambda m: m @ m, m)

  assert sum(flop_count.jaxpr_flops(branchy, m, True).values()) == 2 * 2 * 8**3


def test_name_stacks_mark_networks_and_backward():
  generator = models_lib.Generator(ngf=4, num_blocks=1)
  x, z = jnp.ones((2, 32, 32, 3)), jnp.ones((2, 16))
  variables = generator.init(jax.random.PRNGKey(0), x, z, train=True)

  def loss(params, x, z):
    out, _ = generator.apply(
      {**variables, "params": params}, x, z, train=True, mutable=["batch_stats"]
    )
    return jnp.sum(out)

  forward = flop_count.jaxpr_flops(loss, variables["params"], x, z)
  both = flop_count.jaxpr_flops(jax.grad(loss, argnums=(0, 1, 2)), variables["params"], x, z)
  assert all(k.startswith("Generator") for k in forward)
  backward = sum(v for k, v in both.items() if k.startswith("transpose("))
  # Every layer's input and weight gradients: exactly twice the forward,
  # stride-2 downsampling and reflect-padded maps included.
  assert backward == 2 * sum(forward.values())
  compiled = jax.jit(loss).lower(variables["params"], x, z).compile()
  assert flop_count.hlo_module_flops(compiled.as_text()) == sum(forward.values())


def test_paper_generator_forward_matches_its_layer_arithmetic():
  generator = models_lib.Generator()
  x, z = jnp.ones((1, 128, 128, 3)), jnp.ones((1, 16))
  variables = jax.eval_shape(lambda: generator.init(jax.random.PRNGKey(0), x, z, train=True))
  counts = flop_count.jaxpr_flops(lambda v: generator.apply(v, x, z, train=False), variables)
  macs = (
    128 * 128 * 49 * 3 * 64  # 7x7 input conv (password bits folded into a bias)
    + 64 * 64 * 9 * 64 * 128
    + 32 * 32 * 9 * 128 * 256  # two stride-2 convs
    + 18 * 32 * 32 * 9 * 256 * 256  # 9 residual blocks
    + 64 * 64 * 9 * 256 * 128
    + 128 * 128 * 9 * 128 * 64  # two resize-convs
    + 128 * 128 * 49 * 64 * 3
  )  # 7x7 output conv
  # Zero-padded stride-2 taps at the border are not work: within 1 %.
  assert sum(counts.values()) == pytest.approx(2 * macs, rel=0.01)


_STRIDED = _conv((2, 2), [(1, 1), (1, 1)], (1, 1), (1, 1), 1)

# How XLA's GPU backend writes a stride-2 3x3 convolution of a [4,16,16,8]
# input with a [3,3,8,32] kernel and its gradients as cuDNN calls (each keeps
# the forward window and dim_labels), a cuBLAS GEMM and a Triton GEMM fusion.
_GPU_HLO = """HloModule jit_step, entry_computation_layout={()->f32[]}

%triton_gemm (p0: bf16[64,128], p1: bf16[128,32]) -> bf16[64,32] {
  %p0 = bf16[64,128]{1,0} parameter(0)
  %p1 = bf16[128,32]{1,0} parameter(1)
  ROOT %dot.7 = bf16[64,32]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main.1 (x: bf16[4,16,16,8], w: bf16[32,3,3,8], g: bf16[4,8,8,32], a: bf16[64,128], b: bf16[128,32]) -> f32[] {
  %x = bf16[4,16,16,8]{3,2,1,0} parameter(0)
  %w = bf16[32,3,3,8]{3,2,1,0} parameter(1)
  %g = bf16[4,8,8,32]{3,2,1,0} parameter(2)
  %a = bf16[64,128]{1,0} parameter(3)
  %b = bf16[128,32]{1,0} parameter(4)
  %cudnn-conv.1 = (bf16[4,8,8,32]{3,2,1,0}, u8[0]{0}) custom-call(bf16[4,16,16,8]{3,2,1,0} %x, bf16[32,3,3,8]{3,2,1,0} %w), window={size=3x3 stride=2x2 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"
  %cudnn-conv-bw-input.2 = (bf16[4,16,16,8]{3,2,1,0}, u8[0]{0}) custom-call(bf16[4,8,8,32]{3,2,1,0} %g, bf16[32,3,3,8]{3,2,1,0} %w), window={size=3x3 stride=2x2 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardInput"
  %cudnn-conv-bw-filter.3 = (bf16[32,3,3,8]{3,2,1,0}, u8[0]{0}) custom-call(bf16[4,16,16,8]{3,2,1,0} %x, bf16[4,8,8,32]{3,2,1,0} %g), window={size=3x3 stride=2x2 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter"
  %cublas-gemm.4 = (bf16[64,32]{1,0}, s8[4194304]{0}) custom-call(bf16[64,128]{1,0} %a, bf16[128,32]{1,0} %b), custom_call_target="__cublas$lt$matmul", backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  %gemm_fusion.5 = bf16[64,32]{1,0} fusion(%a, %b), kind=kCustom, calls=%triton_gemm, backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}
  ROOT %r = f32[] constant(0)
}
"""


def test_cudnn_and_cublas_custom_calls():
  conv_flops = _oracle(_STRIDED, jnp.ones((4, 16, 16, 8)), jnp.ones((3, 3, 8, 32)))
  gemm_flops = 2.0 * 64 * 128 * 32
  assert flop_count.hlo_flops(_GPU_HLO) == {
    "cudnn-conv.1": conv_flops,
    "cudnn-conv-bw-input.2": conv_flops,
    "cudnn-conv-bw-filter.3": conv_flops,
    "cublas-gemm.4": gemm_flops,
    "gemm_fusion.5": gemm_flops,
    "dot.7": gemm_flops,
  }
  # The fusion's body is not counted twice in the module.
  assert flop_count.hlo_module_flops(_GPU_HLO) == 3 * conv_flops + 2 * gemm_flops
  # Operands printed as shapes alone (as XLA's logs print an instruction).
  bare = (
    "  %c = (bf16[32,3,3,8]{3,2,1,0}, u8[0]{0}) custom-call(bf16[4,16,16,8]{3,2,1,0}, "
    "bf16[4,8,8,32]{3,2,1,0}), window={size=3x3 stride=2x2 pad=1_1x1_1}, "
    'dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter"'
  )
  assert flop_count.hlo_flops(bare) == {"c": conv_flops}


def test_peaks():
  assert flop_count.peak_flops("NVIDIA H200", "bfloat16") == 989e12
  assert flop_count.peak_flops("NVIDIA H100 80GB HBM3", "float32") == 494e12
  assert flop_count.peak_flops("TPU v4", "bfloat16") == 275e12
  assert flop_count.peak_flops("TPU v4", "float32") is None
  assert flop_count.peak_flops("cpu", "bfloat16") is None


def test_phase_2x2_upsampling_saves_its_taps():
  """The phase_2x2 up layers do 4 taps per output phase where the
  resize-convolution does 9: the count says exactly that."""
  import dataclasses

  g = models_lib.Generator(ngf=8, num_blocks=1, norm="batch")
  phase = dataclasses.replace(g, upsample="phase_2x2")
  key = jax.random.PRNGKey(3)
  x = jax.random.uniform(key, (3, 32, 24, 3), minval=-1, maxval=1)
  z = jax.random.bernoulli(key, 0.5, (3, 16)) - 0.5
  v = g.init(key, x, z, train=True)

  def flops(model):  # multiply-adds with real inputs
    return sum(
      flop_count.jaxpr_flops(lambda v, x, z: model.apply(v, x, z, train=False), v, x, z).values()
    )

  # The two upsampling layers (8x6x32 -> 16x12x16 -> 32x24x8, batch 3).
  resize = 2 * 3 * 9 * (16 * 12 * 32 * 16 + 32 * 24 * 16 * 8)
  # 2x2 taps for each of 4 phases at (h + 1) x (w + 1) low-resolution pixels.
  phase_2x2 = 2 * 3 * 16 * (9 * 7 * 32 * 16 + 17 * 13 * 16 * 8)
  # phase_2x2 creates the layers' parameters by calling them once on a 3x3
  # input (one output pixel; unused, so XLA drops it).
  dummy_calls = 2 * 9 * (32 * 16 + 16 * 8)
  np.testing.assert_allclose(flops(g) - flops(phase) + dummy_calls, resize - phase_2x2, rtol=1e-9)
