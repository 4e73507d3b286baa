"""The discriminators' image pools (CycleGAN's history buffer), on the device.

One pool per branch (M, R, WR) of `size` images and a count, carried in the
train state as arrays, so the query below runs inside the jitted
discriminator step (the reference keeps them on the CPU with per-image
Python loops; docs/reference.md §3).
"""

import jax
import jax.numpy as jnp


def pool_draws(key: jax.Array, n: int, size: int) -> tuple[jax.Array, jax.Array]:
  """Per queried image: (swap with probability 1/2, a uniform stored slot)."""

  def draw(k):
    k_swap, k_idx = jax.random.split(k)
    return jax.random.uniform(k_swap) > 0.5, jax.random.randint(k_idx, (), 0, size)

  return jax.vmap(draw)(jax.random.split(key, n))


def query_pool(pool, images: jax.Array, key: jax.Array, num_out: int):
  """CycleGAN ImagePool.query, then num_out of the results kept in order.

  Per image, in batch order: while the pool holds fewer than its size, the
  image is stored and returned; once full, with probability 1/2 a random
  stored image is returned and replaced by the new one, otherwise the new
  image is returned. Then `num_out` of the returned images are chosen
  without replacement, keeping their order (the original's subsampling of
  the 2B queried M and WR images to B).

  The sequential rule is computed for all images at once (no loop, which on
  a GPU would run one tiny iteration per image): an image that swaps
  returns the last earlier image written to its slot, else the slot's
  content before the query; each slot ends holding the last image written
  to it. tests/training/train_test.py checks this against the image-by-image rule.

  Args:
    pool: {'images': [S, H, W, 3], 'count': int32}.
    images: [N, H, W, 3].
    key: PRNG key.
    num_out: images to return (N or fewer).

  Returns:
    (new pool, [num_out, H, W, 3]).
  """
  size = pool["images"].shape[0]
  k_draws, k_pick = jax.random.split(key)
  n = images.shape[0]
  if size > 0:
    stored, count = pool["images"], pool["count"]
    queried = images.astype(stored.dtype)
    swap, idx = pool_draws(k_draws, n, size)
    order = jnp.arange(n)
    filling = count + order < size
    slot = jnp.where(filling, count + order, idx)
    written = jnp.logical_or(filling, swap)
    # same[i, j]: image j (earlier or not) writes the slot image i reads.
    same = written[None, :] & (slot[None, :] == slot[:, None])
    earlier = same & (order[None, :] < order[:, None])
    last = jnp.max(jnp.where(earlier, order[None, :], -1), axis=1)
    before = jnp.where(
      (last >= 0)[:, None, None, None], queried[jnp.maximum(last, 0)], stored[slot]
    )
    returned = jnp.where((filling | ~swap)[:, None, None, None], queried, before)
    # Only each slot's last writer lands; the rest go to distinct indices out
    # of bounds and are dropped, so every index is unique and the (donated)
    # pool is updated in place, n images at most.
    later = same & (order[None, :] > order[:, None])
    lands = written & ~jnp.any(later, axis=1)
    stored = stored.at[jnp.where(lands, slot, size + order)].set(
      queried, mode="drop", unique_indices=True
    )
    pool = {"images": stored, "count": jnp.minimum(count + n, size).astype(pool["count"].dtype)}
  else:
    returned = images
  if num_out < n:
    picked = jnp.sort(jax.random.permutation(k_pick, n)[:num_out])
    returned = returned[picked]
  return pool, returned.astype(images.dtype)


def query_branches(state_pools: dict, generated: dict, key: jax.Array, batch_size: int):
  """(new pools, the fakes D sees per branch): M queried with (A, A2) and WR
  with (W, W2), each keeping batch_size of the 2B; R with the B recoveries."""
  keys = jax.random.split(key, 3)
  queried = dict(state_pools)
  queried["M"], fake_m = query_pool(
    queried["M"], jnp.concatenate([generated["anon"], generated["anon2"]]), keys[0], batch_size
  )
  queried["R"], fake_r = query_pool(queried["R"], generated["recon"], keys[1], batch_size)
  queried["WR"], fake_wr = query_pool(
    queried["WR"], jnp.concatenate([generated["wrong"], generated["wrong2"]]), keys[2], batch_size
  )
  return queried, {"M": fake_m, "R": fake_r, "WR": fake_wr}
