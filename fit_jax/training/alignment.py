"""Differentiable face alignment for the recognizers (docs/reference.md §6).

Replaces the original's per-sample numpy `cp2tform` + `affine_grid` +
`grid_sample` with one batched closed-form similarity fit and a bilinear
gather warp, both in JAX. This module is the single place that knows the
crop size, the channel order (BGR) and the scaling SphereFace expects.

Deliberate difference: cp2tform also tries a reflective similarity and
keeps it when its residual is smaller; on real and jittered face landmarks
in these coordinates the non-reflective fit always wins (docs/reference.md §6), so
only the 4-DoF least-squares similarity is fitted here.
"""

import jax
import jax.numpy as jnp

CROP_HEIGHT, CROP_WIDTH = 112, 96

# SphereFace's 96x112 template (x, y): left eye, right eye, nose, mouth corners.
TEMPLATE = jnp.array(
  [
    [30.2946, 51.6963],
    [65.5318, 51.5014],
    [48.0252, 71.7366],
    [33.5493, 92.3655],
    [62.7299, 92.2041],
  ],
  jnp.float32,
)


# FaceNet's 160x160 crop (x, y): where the five landmarks fall in the crops its
# CASIA-WebFace model was trained on (MTCNN box widened by 32 px, resized to
# 160); the mean over 100 LFW-subset faces with their MTCNN boxes.
FACENET_TEMPLATE = jnp.array(
  [[52.96, 65.64], [106.18, 65.45], [78.28, 91.28], [55.86, 111.82], [103.24, 111.85]], jnp.float32
)
FACENET_SIZE = 160


def similarity_theta(
  landmarks: jax.Array,
  source_size: float = 250.0,
  template: jax.Array = TEMPLATE,
  crop_size: tuple[int, int] = (CROP_HEIGHT, CROP_WIDTH),
) -> jax.Array:
  """Least-squares similarity from the crop template to the landmarks.

  Args:
    landmarks: [B, 5, 2] (x, y) pixels in the source frame (250x250 for
      CASIA-WebFace and LFW, whatever size the image is resized to later).
    source_size: side of the landmark frame; normalised as the original,
      s / (size / 2) - 1 (a sub-pixel off align_corners, kept for fidelity).
    template: [5, 2] (x, y) target points in crop pixels (SphereFace's by
      default; FaceNet's in recognizer_crops).
    crop_size: (height, width) of the crop the template lives in.

  Returns:
    theta [B, 2, 3] mapping normalised crop coordinates to normalised source
    coordinates (affine_grid's convention).
  """
  src = landmarks.astype(jnp.float32) / (source_size / 2.0) - 1.0
  crop_height, crop_width = crop_size
  tpl = jnp.asarray(template, jnp.float32) / jnp.array([crop_width / 2.0, crop_height / 2.0]) - 1.0
  # cp2tform fits the similarity from the landmarks *to* the template by
  # least squares and returns its inverse (least squares is not symmetric,
  # so fitting template -> landmarks directly differs by ~1e-2).
  src_mean = src.mean(axis=1)  # [B, 2]
  tpl_mean = tpl.mean(axis=0)  # [2]
  x, y = (src - src_mean[:, None])[..., 0], (src - src_mean[:, None])[..., 1]
  u, v = (tpl - tpl_mean)[:, 0], (tpl - tpl_mean)[:, 1]
  # u = a x - b y + tu,  v = b x + a y + tv, in centred coordinates.
  denom = jnp.sum(x * x + y * y, axis=-1)
  a = jnp.sum(x * u + y * v, axis=-1) / denom
  b = jnp.sum(x * v - y * u, axis=-1) / denom
  # Inverse of [[a, -b], [b, a]] is [[a, b], [-b, a]] / (a^2 + b^2).
  norm = a * a + b * b
  ia, ib = a / norm, b / norm
  tx = src_mean[:, 0] - (ia * tpl_mean[0] + ib * tpl_mean[1])
  ty = src_mean[:, 1] - (-ib * tpl_mean[0] + ia * tpl_mean[1])
  row0 = jnp.stack([ia, ib, tx], axis=-1)
  row1 = jnp.stack([-ib, ia, ty], axis=-1)
  return jnp.stack([row0, row1], axis=1)


def crop_grid(
  theta: jax.Array, crop_size: tuple[int, int] = (CROP_HEIGHT, CROP_WIDTH)
) -> jax.Array:
  """affine_grid(theta, (B, 3, H, W), align_corners=True): [B, H, W, 2]."""
  ys = jnp.linspace(-1.0, 1.0, crop_size[0])
  xs = jnp.linspace(-1.0, 1.0, crop_size[1])
  gx, gy = jnp.meshgrid(xs, ys)
  base = jnp.stack([gx, gy, jnp.ones_like(gx)], axis=-1)  # [H, W, 3]
  return jnp.einsum("hwk,bjk->bhwj", base, theta.astype(jnp.float32))


def bilinear_sample(images: jax.Array, grid: jax.Array) -> jax.Array:
  """grid_sample(bilinear, zeros padding, align_corners=True) on NHWC.

  Args:
    images: [B, H, W, C].
    grid: [B, h, w, 2] normalised (x, y) in [-1, 1] (outside gives zeros).

  Returns:
    [B, h, w, C]; differentiable in `images` (and in `grid`).
  """
  _, height, width, _ = images.shape
  px = (grid[..., 0] + 1.0) * 0.5 * (width - 1)
  py = (grid[..., 1] + 1.0) * 0.5 * (height - 1)
  x0, y0 = jnp.floor(px), jnp.floor(py)
  wx1, wy1 = px - x0, py - y0
  # A per-image gather (vmap gives it batching dims), not images[iota, y, x]:
  # XLA partitions the former along a sharded batch, while an explicit
  # batch index makes it gather the whole batch onto every device.
  gather = jax.vmap(lambda image, y, x: image[y, x])
  out = 0.0
  for dy, wy in ((0, 1.0 - wy1), (1, wy1)):
    for dx, wx in ((0, 1.0 - wx1), (1, wx1)):
      xi, yi = x0 + dx, y0 + dy
      inside = (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)
      xc = jnp.clip(xi, 0, width - 1).astype(jnp.int32)
      yc = jnp.clip(yi, 0, height - 1).astype(jnp.int32)
      tap = gather(images, yc, xc)
      out = out + tap * jnp.where(inside, wx * wy, 0.0)[..., None].astype(images.dtype)
  return out


def warp_to_crop(images: jax.Array, theta: jax.Array) -> jax.Array:
  """The SphereFace input: aligned [B, 112, 96, 3] BGR crops of RGB images.

  Values stay in the generator's [-1, 1] range as in the original (which
  differs negligibly from clcarwin's (x - 127.5) / 128).
  """
  crops = bilinear_sample(images, crop_grid(theta))
  return crops[..., ::-1]


def recognizer_crops(
  images: jax.Array, landmarks: jax.Array, source_size: float, recognizer: str
) -> jax.Array:
  """The aligned input of a training recognizer from [-1, 1] RGB images.

  sphereface: the reference's 112x96 BGR crop in [-1, 1]. facenet: the
  160x160 RGB crop with FaceNet's fixed standardisation (p - 127.5) / 128 of
  the 0..255 pixel p, i.e. x * 127.5 / 128 of the [-1, 1] value x.
  """
  if recognizer == "sphereface":
    return warp_to_crop(images, similarity_theta(landmarks, source_size))
  if recognizer == "facenet":
    size = (FACENET_SIZE, FACENET_SIZE)
    theta = similarity_theta(landmarks, source_size, FACENET_TEMPLATE, size)
    return bilinear_sample(images, crop_grid(theta, size)) * (127.5 / 128.0)
  raise ValueError(f"unknown recognizer {recognizer!r}")
