"""Password scheme: golden vectors, round trips, uniformity, user forms."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fit_jax.training import passwords


def test_golden_bits_digits_and_inverse(golden):
  bits = np.stack([passwords.int_to_bits(u, 16) for u in golden["pw_int"]])
  np.testing.assert_array_equal(bits, golden["pw_bits"])
  np.testing.assert_array_equal(passwords.digits(bits), golden["pw_digits"])
  inv = passwords.inverse_bits(bits)
  np.testing.assert_array_equal(inv, golden["pw_inv_bits"])
  np.testing.assert_array_equal(passwords.digits(inv), golden["pw_inv_digits"])
  np.testing.assert_allclose(passwords.encode(bits), golden["pw_encoded_half"], rtol=1e-6)
  # The inverse password's encoding is exactly the negation.
  np.testing.assert_array_equal(passwords.encode(inv), -passwords.encode(bits))
  np.testing.assert_allclose(passwords.encode(bits, 0.5), golden["pw_encoded_half"] / 2)


@pytest.mark.parametrize("n", [4, 16, 64, 128])
def test_int_round_trip_any_length(n):
  for value in [0, 1, 2**n - 1, (2**n) // 3]:
    bits = passwords.int_to_bits(value, n)
    assert bits.shape == (n,)
    assert passwords.bits_to_int(bits) == value
  assert passwords.digits(passwords.int_to_bits(2**n - 1, n)).tolist() == [15] * (n // 4)


def test_bad_lengths_and_values():
  with pytest.raises(ValueError, match="multiple of 4"):
    passwords.int_to_bits(3, 6)
  with pytest.raises(ValueError, match="outside"):
    passwords.int_to_bits(2**16, 16)


def test_training_passwords_distinctness_and_complement():
  pw = passwords.sample_training_passwords(jax.random.PRNGKey(0), 4096, 4)
  assert set(pw) == {"anon", "anon2", "recover", "wrong", "wrong2"}

  def eq(a, b):
    return np.all(np.asarray(a) == np.asarray(b), axis=-1)

  np.testing.assert_array_equal(np.asarray(pw["recover"]), 1 - np.asarray(pw["anon"]))
  # With 4 bits collisions are frequent, so rejection is exercised heavily.
  assert not eq(pw["anon2"], pw["anon"]).any()
  assert not eq(pw["wrong"], pw["recover"]).any()
  assert not eq(pw["wrong2"], pw["recover"]).any()
  assert not eq(pw["wrong2"], pw["wrong"]).any()


def test_wrong_passwords_exactly_uniform_per_sample():
  # Every sample forbids the same code 0: the other 15 codes must be equally
  # likely (chi-square, fixed seed), and code 0 must never appear.
  n, batch = 4, 60000
  forbidden = jnp.zeros((batch, n), jnp.uint8)
  bits = passwords.sample_bits_excluding(jax.random.PRNGKey(3), [forbidden])
  ints = np.asarray(passwords.digits(bits))[:, 0]
  counts = collections.Counter(ints.tolist())
  assert 0 not in counts
  observed = np.array([counts[c] for c in range(1, 16)])
  expected = batch / 15
  chi2 = np.sum((observed - expected) ** 2 / expected)
  assert chi2 < 36.1  # 99.9 % quantile of chi-square with 14 dof.


def test_per_sample_not_batch_redraw():
  # A sample's draw depends on its own forbidden codes only: forbidding its
  # neighbour's draw moves the neighbour and leaves it alone.
  key = jax.random.PRNGKey(7)
  forbid = jnp.zeros((2, 16), jnp.uint8)
  a = passwords.sample_bits_excluding(key, [forbid])
  moved = passwords.sample_bits_excluding(key, [forbid.at[0].set(a[0])])
  np.testing.assert_array_equal(a[1], moved[1])
  assert not np.array_equal(moved[0], a[0])


def test_two_forbidden_codes_including_duplicates():
  # Every 4-bit code but the forbidden ones appears, forbidden ones never;
  # a code forbidden twice counts once (15 allowed codes, not 14).
  batch = 30000
  f1 = jnp.tile(jnp.asarray(passwords.int_to_bits(5, 4)), (batch, 1))
  f2 = jnp.tile(jnp.asarray(passwords.int_to_bits(11, 4)), (batch, 1))
  two = np.asarray(
    passwords.digits(passwords.sample_bits_excluding(jax.random.PRNGKey(1), [f2, f1]))
  )[:, 0]
  assert set(two.tolist()) == set(range(16)) - {5, 11}
  same = np.asarray(
    passwords.digits(passwords.sample_bits_excluding(jax.random.PRNGKey(1), [f1, f1]))
  )[:, 0]
  assert set(same.tolist()) == set(range(16)) - {5}


def test_long_passwords_use_rejection_and_stay_distinct():
  key = jax.random.PRNGKey(2)
  pw = passwords.sample_training_passwords(key, 64, 32)
  assert pw["wrong"].shape == (64, 32)
  assert not np.all(np.asarray(pw["wrong"]) == np.asarray(pw["recover"]), axis=-1).any()


def test_training_passwords_have_no_loop_on_gpu():
  # A data-dependent loop makes the device wait for the host inside the step.
  lowered = (
    jax.jit(lambda k: passwords.sample_training_passwords(k, 48, 16))
    .trace(jax.random.PRNGKey(0))
    .lower(lowering_platforms=("cuda",))
  )
  assert "stablehlo.while" not in lowered.as_text()


def test_user_forms():
  np.testing.assert_array_equal(passwords.parse("4660", 16), passwords.int_to_bits(4660, 16))
  np.testing.assert_array_equal(passwords.parse("0x1234", 16), passwords.int_to_bits(0x1234, 16))
  p1 = passwords.parse("correct horse battery staple", 16)
  p2 = passwords.parse("phrase:correct horse battery staple", 16)
  np.testing.assert_array_equal(p1, p2)
  assert p1.shape == (16,) and set(np.unique(p1)) <= {0, 1}
  # Deterministic and length-aware: a 32-bit passphrase extends the 16-bit one.
  np.testing.assert_array_equal(passwords.parse("abc", 32)[:16], passwords.parse("abc", 16))
  assert not np.array_equal(passwords.parse("abc", 16), passwords.parse("abd", 16))
  np.testing.assert_array_equal(
    passwords.parse("phrase:123", 16), passwords.passphrase_bits("123", 16)
  )


@pytest.mark.parametrize(
  "text, message",
  [
    ("70000", "outside"),
    ("0x12345", "at most 4"),
    ("0xZZ", "malformed"),
    ("-5", "malformed"),
    ("", "empty"),
    ("phrase:", "empty"),
  ],
)
def test_invalid_forms(text, message):
  with pytest.raises(ValueError, match=message) as error:
    passwords.parse(text, 16)
  # The message names the rule, never the secret (it reaches logs).
  if text.strip("phrase:0x-"):
    assert text.strip("phrase:0x-") not in str(error.value)
