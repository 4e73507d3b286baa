"""Export the generator as a TF SavedModel (and TFLite) for deployment.

The command: python -m fit_jax.export.

Signatures (any batch size b, S = the model card's image size unless --size,
N = the checkpoint's password length):
  anonymize(images: float32 [b, S, S, 3] in [-1, 1],
            password_bits: float32 [b, N] of 0/1, MSB first) -> images
  recover(images, password_bits) -> images   (applies the inverse itself)
Another size, values outside [-1, 1] (such as 0..255) or bits other than 0/1
fail with one line that names the input. The password scale of the model card
is built in. The SavedModel carries
`assets.extra/model.json`: the card plus the signatures' contract (input
range, size, bit order, how a passphrase becomes bits).

BatchNorm running statistics are folded into the convolutions first
(fit_jax.deploy.inference), so every image's output is independent of its batch.
The model holds weights only: no password or image is ever part of it.
--tflite also writes a TFLite flatbuffer for edge cameras with the same two
signatures on uint8 images and bool bits (types its interpreter enforces),
built from TFLite builtin ops only (no Flex delegate needed).
Imports TensorFlow (the `export` extra).
"""

import dataclasses
import os

import numpy as np

from fit_jax.data import pixels
from fit_jax.deploy import inference
from fit_jax.runtime import atomic
from fit_jax.training import passwords


def contract(card: dict | None, image_size: int, password_bits: int, scale: float) -> dict:
  """What a deployer needs to feed the signatures, with the model card."""
  return {
    "signatures": {
      "anonymize": "images float32 [b, S, S, 3] in [-1, 1] (uint8 / 127.5 - 1), "
      "password_bits float32 [b, N] of 0/1 -> images in [-1, 1]; other "
      "sizes, ranges or bit values fail with one line naming the input",
      "recover": "the same inputs and the same bits as anonymize: the inverse is applied inside",
    },
    "tflite_signatures": {
      "anonymize": "images uint8 [b, S, S, 3], password_bits bool [b, N] -> images uint8",
      "recover": "the same inputs and the same bits as anonymize",
    },
    "image_size": image_size,
    "password_bits": password_bits,
    "bit_order": "MSB first",
    "password_scale": scale,
    "passphrase_to_bits": f"{passwords.PASSPHRASE_KDF_VERSION}: PBKDF2-HMAC-SHA256, "
    "the first N bits (fit_jax.training.passwords.parse)",
    "model_card": card,
  }


def export_saved_model(
  checkpoint: str, out_dir: str, image_size: int | None = None, tflite_path: str | None = None
) -> None:
  """Writes the SavedModel, and the TFLite model if asked (each atomically)."""
  from fit_jax.deploy import release  # noqa: PLC0415

  model, variables, deterministic = inference.load_generator(checkpoint)
  if not deterministic:
    raise ValueError(
      f"{checkpoint}: this generator has no running statistics (norm=batch_stats), "
      "so its output depends on the batch; run python -m fit_jax.calibrate on it first"
    )
  card = release.card_for(checkpoint)
  image_size = image_size or release.image_size(card)
  scale = release.password_scale(card)
  save_generator(
    model,
    variables,
    out_dir,
    image_size,
    scale,
    contract(card, image_size, model.password_bits, scale),
  )
  if tflite_path:
    export_tflite(model, variables, tflite_path, image_size, scale)


def _deployable(model):
  """The same function in ops that TF and TFLite have builtins for."""
  # TFLite has builtins for jnp.pad's concatenations, none for the gather
  # that pads in one pass on accelerators (batch size unknown until run time),
  # nor for the scatter of folded_trunk_padding="border".
  return dataclasses.replace(model, reflect_pad_ops="concatenate", folded_trunk_padding="per_conv")


def _converted(model, variables, image_size: int, scale: float, sign: float, io_uint8: bool):
  """G(x, sign * scale * (bits - 1/2)) as a TF function of (images, bits)."""
  from jax.experimental import jax2tf  # noqa: PLC0415

  model = _deployable(model)

  def fn(images, bits):
    if io_uint8:
      images, bits = pixels.to_unit(images), bits.astype(np.float32)
    out = model.apply(variables, images, passwords.encode(bits, sign * scale), train=False)
    return pixels.to_uint8(out) if io_uint8 else out

  n = model.password_bits
  return jax2tf.convert(
    fn, polymorphic_shapes=[f"(b, {image_size}, {image_size}, 3)", f"(b, {n})"], with_gradient=False
  )


def save_generator(
  model, variables, out_dir: str, image_size: int, scale: float = 1.0, card: dict | None = None
) -> None:
  """A per-image deterministic generator (folded or running statistics) as a
  SavedModel with signatures anonymize and recover (atomically), with
  `card` as assets.extra/model.json."""
  import tensorflow as tf  # noqa: PLC0415

  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir):
    raise FileExistsError(f"{out_dir} exists; choose a new --out directory")
  # Any size is accepted by the signature and then checked, so a wrong size or
  # range is one clear error line from the graph, not a dump of the compiled
  # module, nor values cast silently into saturated output (TF casts a numpy
  # uint8 or int array to a float32 signature without a word).
  specs = [
    tf.TensorSpec([None, None, None, 3], tf.float32, name="images"),
    tf.TensorSpec([None, None], tf.float32, name="password_bits"),
  ]
  tmp = out_dir + ".tmp"
  _save_signatures(model, variables, image_size, scale, specs, tmp, io_uint8=False, check=True)
  if card is not None:
    import json  # noqa: PLC0415

    os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
    with open(os.path.join(tmp, "assets.extra", "model.json"), "w") as f:
      json.dump(card, f, indent=1)
  os.replace(tmp, out_dir)


def _save_signatures(
  model,
  variables,
  image_size: int,
  scale: float,
  specs,
  directory: str,
  io_uint8: bool,
  check: bool,
) -> None:
  """A SavedModel in `directory` with the signatures anonymize and recover
  on `specs` (with the input checks if `check`)."""
  import tensorflow as tf  # noqa: PLC0415

  module = tf.Module()
  for name, sign in (("anonymize", 1.0), ("recover", -1.0)):
    transform = _converted(model, variables, image_size, scale, sign, io_uint8)
    setattr(module, name, _signature(transform, specs, image_size, model.password_bits, check))
  tf.saved_model.save(
    module, directory, signatures={"anonymize": module.anonymize, "recover": module.recover}
  )


def _signature(transform, specs, image_size: int, n: int, check: bool):
  import tensorflow as tf  # noqa: PLC0415

  def call(images, password_bits):
    if check:
      images, password_bits = checked_inputs(images, password_bits, image_size, n)
    return transform(images, password_bits)

  return tf.function(call, input_signature=specs, autograph=False)


def checked_inputs(images, bits, image_size: int, n: int):
  """`images` and `bits` once they are known to be what the signatures take:
  a failed check raises InvalidArgumentError with a one-line reason."""
  import tensorflow as tf  # noqa: PLC0415

  def check(condition, message):
    return tf.debugging.Assert(condition, [tf.constant(message)], summarize=1)

  checks = [
    check(
      tf.reduce_all(tf.shape(images)[1:3] == image_size),
      f"images must be float32 [b, {image_size}, {image_size}, 3] (the model's size)",
    ),
    check(tf.shape(bits)[-1] == n, f"password_bits must be float32 [b, {n}]"),
    check(
      tf.shape(bits)[0] == tf.shape(images)[0], "images and password_bits differ in batch size"
    ),
    check(
      tf.reduce_all((images >= -1.0) & (images <= 1.0)),
      "images must be in [-1, 1] (uint8 / 127.5 - 1), not [0, 255] or [0, 1]",
    ),
    check(tf.reduce_all((bits == 0.0) | (bits == 1.0)), "password_bits must be 0 or 1, MSB first"),
  ]
  with tf.control_dependencies(checks):
    return (
      tf.ensure_shape(tf.identity(images), [None, image_size, image_size, 3]),
      tf.ensure_shape(tf.identity(bits), [None, n]),
    )


def export_tflite(model, variables, path: str, image_size: int, scale: float = 1.0) -> None:
  """Signatures anonymize and recover as a builtin-ops TFLite model (atomic).

  TFLite has no builtin for the SavedModel's checks, so its contract is made
  by types instead, which its interpreter enforces: uint8 images in and out,
  bool password bits (a float array is refused, not cast).
  """
  import tempfile  # noqa: PLC0415

  import tensorflow as tf  # noqa: PLC0415

  if os.path.exists(path):
    raise FileExistsError(f"{path} exists; choose a new --tflite file")
  specs = [
    tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name="images"),
    tf.TensorSpec([None, model.password_bits], tf.bool, name="password_bits"),
  ]
  with tempfile.TemporaryDirectory() as staging:
    _save_signatures(
      model, variables, image_size, scale, specs, staging, io_uint8=True, check=False
    )
    converter = tf.lite.TFLiteConverter.from_saved_model(
      staging, signature_keys=["anonymize", "recover"]
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    flatbuffer = converter.convert()

  def save(tmp):
    with open(tmp, "wb") as f:
      f.write(flatbuffer)

  atomic.write_atomically(path, save)
