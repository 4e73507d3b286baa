"""Password scheme (docs/reference.md §2): sampling, encoding, inverses, user forms.

A password is N bits (MSB first; default 16, any multiple of 4). The
generator sees it encoded as `scale * (bit - 0.5)` ({-0.5, +0.5} as the
original's `use_minus_one: half`; scale 0.5 gives the `one_fourth` config's
{-0.25, +0.25}). The inverse (recovery) password is the bitwise complement,
so its encoding is simply -z. The password head predicts N/4 hex digits,
most significant group first.

Deliberate difference from the original `generate_code`: wrong passwords are
drawn exactly uniformly *per sample* among the codes that differ from the
forbidden ones, instead of redrawing the whole batch on any collision.
"""

import hashlib
import re

import jax
import jax.numpy as jnp
import numpy as np

# Versioned so that a future change of KDF never silently changes which
# password a passphrase means: the version is part of the derivation.
PASSPHRASE_KDF_VERSION = "fit-kdf-v1"
_KDF_SALT = b"fit_jax/passphrase/" + PASSPHRASE_KDF_VERSION.encode()
_KDF_ITERATIONS = 200_000


def check_length(num_bits: int) -> None:
  if num_bits <= 0 or num_bits % 4:
    raise ValueError(f"password length {num_bits} is not a positive multiple of 4")


# ---------------------------------------------------------------- encodings


def encode(bits: jax.Array, scale: float = 1.0) -> jax.Array:
  """Bits {0,1} [..., N] -> generator input scale * (bits - 0.5)."""
  return scale * (jnp.asarray(bits, jnp.float32) - 0.5)


def inverse_bits(bits):
  """The recovery password: the bitwise complement (2^N - 1 - u)."""
  return 1 - bits


def digits(bits) -> jax.Array:
  """Bits [..., N] -> password-head targets [..., N/4] in 0..15, MSB first."""
  bits = jnp.asarray(bits)
  check_length(bits.shape[-1])
  groups = bits.reshape(bits.shape[:-1] + (bits.shape[-1] // 4, 4))
  weights = jnp.array([8, 4, 2, 1], jnp.int32)
  return jnp.sum(groups.astype(jnp.int32) * weights, axis=-1)


def int_to_bits(value: int, num_bits: int) -> np.ndarray:
  """A non-negative integer < 2^N -> its N bits, MSB first (as generate_code)."""
  check_length(num_bits)
  value = int(value)
  if not 0 <= value < 2**num_bits:
    raise ValueError(f"the password is outside [0, 2^{num_bits})")
  return np.array([(value >> (num_bits - 1 - i)) & 1 for i in range(num_bits)], np.uint8)


def bits_to_int(bits) -> int:
  return int("".join(str(int(b)) for b in np.asarray(bits).ravel()), 2)


# ----------------------------------------------------------------- sampling


def sample_bits(key: jax.Array, batch: int, num_bits: int) -> jax.Array:
  """Uniform passwords [B, N] (uint8 bits), as a uniform integer in [0, 2^N)."""
  return jax.random.bernoulli(key, 0.5, (batch, num_bits)).astype(jnp.uint8)


def _bits_to_codes(bits: jax.Array) -> jax.Array:
  """Bits [B, N] (MSB first, N <= 30) -> int32 codes [B]."""
  n = bits.shape[-1]
  weights = jnp.left_shift(1, jnp.arange(n - 1, -1, -1, dtype=jnp.int32))
  return jnp.sum(bits.astype(jnp.int32) * weights, axis=-1)


def _codes_to_bits(codes: jax.Array, num_bits: int) -> jax.Array:
  shifts = jnp.arange(num_bits - 1, -1, -1, dtype=jnp.int32)
  return (jnp.right_shift(codes[:, None], shifts) & 1).astype(jnp.uint8)


def sample_bits_excluding(
  key: jax.Array, forbidden: list[jax.Array], max_rounds: int = 64
) -> jax.Array:
  """Per sample, a uniform password among those not in `forbidden`.

  Each sample is uniform over the allowed codes and independent of the rest
  of the batch. For N <= 28 (the reference's 16 included) it is drawn
  directly, with no loop: u uniform in [0, 2^N - k) for the sample's k
  distinct forbidden codes, then stepped past each forbidden code in
  increasing order, a bijection onto the allowed codes. A data-dependent
  loop would make the device wait for the host inside the training step.
  Longer passwords are redrawn per colliding sample (rejection), which a
  round needs with probability below len(forbidden)/2^N, so `max_rounds`
  is never reached in practice.

  Args:
    key: PRNG key.
    forbidden: arrays [B, N] of codes (bits) each sample must avoid.
    max_rounds: bound of the rejection loop (N > 28 only).

  Returns:
    [B, N] uint8 bits.
  """
  batch, num_bits = forbidden[0].shape
  if num_bits > 28:
    return _sample_bits_excluding_by_rejection(key, forbidden, max_rounds)
  codes = jnp.sort(jnp.stack([_bits_to_codes(f) for f in forbidden], axis=-1), axis=-1)
  first = jnp.ones((batch, 1), bool)
  distinct = jnp.concatenate([first, codes[:, 1:] != codes[:, :-1]], axis=-1)
  allowed = 2**num_bits - jnp.sum(distinct, axis=-1, dtype=jnp.int32)
  u = jax.random.randint(key, (batch,), 0, allowed, dtype=jnp.int32)
  for j in range(codes.shape[-1]):
    u = u + jnp.logical_and(distinct[:, j], u >= codes[:, j]).astype(jnp.int32)
  return _codes_to_bits(u, num_bits)


def _sample_bits_excluding_by_rejection(key, forbidden, max_rounds):
  batch, num_bits = forbidden[0].shape

  def collides(bits):
    hits = [jnp.all(bits == f.astype(jnp.uint8), axis=-1) for f in forbidden]
    return jnp.any(jnp.stack(hits), axis=0)

  def cond(carry):
    i, _, bits = carry
    return jnp.logical_and(i < max_rounds, jnp.any(collides(bits)))

  def body(carry):
    i, key, bits = carry
    key, sub = jax.random.split(key)
    fresh = sample_bits(sub, batch, num_bits)
    bits = jnp.where(collides(bits)[:, None], fresh, bits)
    return i + 1, key, bits

  key, sub = jax.random.split(key)
  init = (jnp.int32(0), key, sample_bits(sub, batch, num_bits))
  return jax.lax.while_loop(cond, body, init)[2]


def sample_training_passwords(key: jax.Array, batch: int, num_bits: int) -> dict[str, jax.Array]:
  """The five password sets of one iteration (bits [B, N] each).

  Returns a dict with
    anon: z, the anonymisation password;
    anon2: a second anonymisation password, != anon;
    recover: the complement of anon (the right recovery password);
    wrong: a wrong recovery password, != recover;
    wrong2: a second wrong recovery password, != recover and != wrong.
  """
  check_length(num_bits)
  k1, k2, k3, k4 = jax.random.split(key, 4)
  anon = sample_bits(k1, batch, num_bits)
  recover = inverse_bits(anon)
  wrong = sample_bits_excluding(k3, [recover])
  return {
    "anon": anon,
    "anon2": sample_bits_excluding(k2, [anon]),
    "recover": recover,
    "wrong": wrong,
    "wrong2": sample_bits_excluding(k4, [recover, wrong]),
  }


# --------------------------------------------------------------- user forms


def parse(text: str, num_bits: int) -> np.ndarray:
  """A user's password -> N bits (uint8, MSB first).

  Forms:
    decimal integer, e.g. `4660` (in [0, 2^N));
    hexadecimal with 0x, e.g. `0x1234` (at most N/4 digits);
    `phrase:<anything>` or any other text: a passphrase, mapped to N bits by
      PBKDF2-HMAC-SHA256 (salt `fit_jax/passphrase/fit-kdf-v1`, 200,000
      iterations), the first N bits of the derived key. Leading and trailing
      whitespace of a passphrase is kept.

  Raises:
    ValueError: one line naming what is wrong with the text.
  """
  check_length(num_bits)
  if not isinstance(text, str):
    raise ValueError(f"password must be text, got {type(text).__name__}")
  if text.startswith("phrase:"):
    return passphrase_bits(text[len("phrase:") :], num_bits)
  stripped = text.strip()
  if re.fullmatch(r"0[xX][0-9a-fA-F_]+", stripped):
    digits_ = stripped[2:].replace("_", "")
    if len(digits_) > num_bits // 4:
      raise ValueError(
        f"the hex password has {len(digits_)} digits; "
        f"a {num_bits}-bit password has at most {num_bits // 4}"
      )
    return int_to_bits(int(digits_, 16), num_bits)
  if re.fullmatch(r"[0-9]+", stripped):
    value = int(stripped)
    if value >= 2**num_bits:
      raise ValueError(
        f"the integer password is outside [0, 2^{num_bits}) (the largest is {2**num_bits - 1})"
      )
    return int_to_bits(value, num_bits)
  if re.fullmatch(r"0[xX].*|-[0-9]+", stripped):
    # Never repeat the secret: name the rule it breaks instead.
    raise ValueError(
      "malformed password: it starts like a number (0x or -) but is not "
      "a valid hex or non-negative integer"
    )
  if not text:
    raise ValueError("empty password")
  return passphrase_bits(text, num_bits)


def passphrase_bits(phrase: str, num_bits: int) -> np.ndarray:
  """The documented, versioned KDF of `parse` (PASSPHRASE_KDF_VERSION)."""
  check_length(num_bits)
  if not phrase:
    raise ValueError("empty passphrase")
  key = hashlib.pbkdf2_hmac(
    "sha256", phrase.encode("utf-8"), _KDF_SALT, _KDF_ITERATIONS, dklen=(num_bits + 7) // 8
  )
  bits = np.unpackbits(np.frombuffer(key, np.uint8))[:num_bits]
  return bits.astype(np.uint8)
