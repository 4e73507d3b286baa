"""Pure loss functions of the face identity transformer (docs/reference.md §5, §7).

Every function takes arrays and returns a float32 scalar; weights are applied
by the update steps in `train.py`, from `config.loss`.
"""

import jax
import jax.numpy as jnp
import optax


def lsgan(outputs: tuple[jax.Array, ...], target: float) -> jax.Array:
  """GANLoss('lsgan') summed over the discriminator scales.

  Args:
    outputs: patch maps, one per scale (fine, coarse).
    target: 1.0 for real, 0.0 for fake.

  Returns:
    sum over scales of mean((map - target)^2), as the original (not averaged).
  """
  return sum(jnp.mean(jnp.square(o.astype(jnp.float32) - target)) for o in outputs)


def angle_lambda(call_index: jax.Array) -> jax.Array:
  """A-Softmax annealing λ = max(5, 1500 / (1 + 0.1 it)) at loss call `it`.

  The original's AngleLoss increments `it` on every call (7 per iteration)
  before computing λ; `train.py` turns the step into these call indices.
  """
  it = jnp.asarray(call_index, jnp.float32)
  return jnp.maximum(5.0, 1500.0 / (1.0 + 0.1 * it))


def angle_softmax(
  cos: jax.Array, phi: jax.Array, labels: jax.Array, call_index: jax.Array
) -> jax.Array:
  """AngleLoss(gamma=0): the A-Softmax cross-entropy, mean over the batch.

  Args:
    cos, phi: [B, C] AngleLinear outputs (already scaled by |x|).
    labels: [B] int identity labels.
    call_index: the loss-call counter `it` that sets λ (angle_lambda).

  Returns:
    scalar loss.
  """
  lam = angle_lambda(call_index)
  one_hot = jax.nn.one_hot(labels, cos.shape[-1], dtype=jnp.float32)
  # Only the target logit changes: cos - cos / (1 + λ) + φ / (1 + λ).
  logits = cos + one_hot * (phi - cos) / (1.0 + lam)
  return jnp.mean(optax.softmax_cross_entropy(logits, one_hot))


def bounded_negative(loss: jax.Array, bound: float | None) -> jax.Array:
  """The loss to *maximise* in an adversarial `-AS` term, optionally capped.

  The original maximises A-Softmax on some inputs with no clamp, which is
  unbounded. With `bound` set, the term is min(loss, bound): past it no
  gradient pushes further. None keeps the original's unbounded term.
  """
  return loss if bound is None else jnp.minimum(loss, bound)


def feature_dissimilarity(a: jax.Array, b: jax.Array) -> jax.Array:
  """CosineEmbeddingLoss(target=-1, margin=0): mean_i max(0, cos(a_i, b_i)).

  Penalises only positive cosine similarity of the two feature batches; the
  epsilon matches torch's (1e-12 added to each squared norm).
  """
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  dot = jnp.sum(a * b, axis=-1)
  norms = jnp.sqrt((jnp.sum(a * a, axis=-1) + 1e-12) * (jnp.sum(b * b, axis=-1) + 1e-12))
  return jnp.mean(jnp.maximum(0.0, dot / norms))


def password_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Cross-entropy of each digit head, mean over the batch, summed over heads.

  Args:
    logits: [B, N/4, 16].
    targets: [B, N/4] int digits.
  """
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return jnp.sum(jnp.mean(ce, axis=0))


def password_accuracy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Fraction of digits predicted right, over the batch and the heads."""
  return jnp.mean((jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32))


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean absolute difference over every pixel and channel (no face mask)."""
  return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))
