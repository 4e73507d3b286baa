"""Export the generator as a TF SavedModel for deployment.

  python -m fit_jax.export --checkpoint CKPT --out DIR [--tflite FILE] [--size S]

Signatures (any batch size b, S = the model card's image size unless --size,
N = the checkpoint's password length):
  anonymize(images: float32 [b, S, S, 3] in [-1, 1],
            password_bits: float32 [b, N] of 0/1, MSB first) -> images
  recover(images, password_bits) -> images   (applies the inverse itself)
The password scale of the model card is built in. The SavedModel carries
`assets.extra/model.json`: the card plus the signatures' contract (input
range, size, bit order, how a passphrase becomes bits).

BatchNorm running statistics are folded into the convolutions first
(fit_jax.inference), so every image's output is independent of its batch.
The model holds weights only: no password or image is ever part of it.
--tflite also writes a TFLite flatbuffer for edge cameras with the same two
signatures, built from TFLite builtin ops only (no Flex delegate needed).
Imports TensorFlow (the `export` extra).
"""

import dataclasses
import os

from absl import app, flags

from fit_jax import inference

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir, checkpoint or converted dir.")
_OUT = flags.DEFINE_string("out", None, "SavedModel directory to create.")
_TFLITE = flags.DEFINE_string("tflite", None, "Also write a TFLite model to this file.")
_SIZE = flags.DEFINE_integer(
  "size", None, "Image side (default: the model card's image size, else 128).")


def contract(card: dict | None, image_size: int, password_bits: int, scale: float) -> dict:
  """What a deployer needs to feed the signatures, with the model card."""
  from fit_jax import passwords  # noqa: PLC0415

  return {
    "signatures": {
      "anonymize": "images float32 [b, S, S, 3] in [-1, 1] (uint8 / 127.5 - 1), "
                   "password_bits float32 [b, N] of 0/1 -> images in [-1, 1]",
      "recover": "the same inputs and the same bits as anonymize: the inverse is applied "
                 "inside",
    },
    "image_size": image_size,
    "password_bits": password_bits,
    "bit_order": "MSB first",
    "password_scale": scale,
    "passphrase_to_bits": f"{passwords.PASSPHRASE_KDF_VERSION}: PBKDF2-HMAC-SHA256, "
                          "the first N bits (fit_jax.passwords.parse)",
    "model_card": card,
  }


def export_saved_model(checkpoint: str, out_dir: str, image_size: int | None = None) -> None:
  """Writes the SavedModel (atomically: a temporary folder renamed at the end)."""
  from fit_jax import release  # noqa: PLC0415

  model, variables, deterministic = inference.load_generator(checkpoint)
  if not deterministic:
    raise ValueError(
      f"{checkpoint}: this generator has no running statistics (norm=batch_stats), "
      "so its output depends on the batch; export a norm=batch checkpoint"
    )
  card = release.card_for(checkpoint)
  image_size = image_size or release.image_size(card)
  scale = release.password_scale(card)
  save_generator(model, variables, out_dir, image_size, scale,
                 contract(card, image_size, model.password_bits, scale))


def save_generator(model, variables, out_dir: str, image_size: int, scale: float = 1.0,
                   card: dict | None = None) -> None:
  """A per-image deterministic generator (folded or running statistics) as a
  SavedModel with signatures anonymize and recover (atomically), with
  `card` as assets.extra/model.json."""
  import tensorflow as tf  # noqa: PLC0415
  from jax.experimental import jax2tf  # noqa: PLC0415

  # TFLite has builtins for jnp.pad's concatenations, none for the gather
  # that pads in one pass on accelerators (batch size unknown until run time),
  # nor for the scatter of folded_trunk_padding="border" or the dilated-input
  # convolution of upsample="transposed": the same functions in ops it has.
  model = dataclasses.replace(model, reflect_pad_ops="concatenate",
                              folded_trunk_padding="per_conv")
  if model.upsample == "transposed":
    model = dataclasses.replace(model, upsample="resize_conv")
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir):
    raise FileExistsError(f"{out_dir} exists; choose a new --out directory")
  n = model.password_bits

  def transform(sign):
    def fn(images, bits):
      return model.apply(variables, images, sign * scale * (bits - 0.5), train=False)
    return jax2tf.convert(
      fn, polymorphic_shapes=[f"(b, {image_size}, {image_size}, 3)", f"(b, {n})"],
      with_gradient=False,
    )

  module = tf.Module()
  anonymize_fn, recover_fn = transform(1.0), transform(-1.0)
  specs = [
    tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images"),
    tf.TensorSpec([None, n], tf.float32, name="password_bits"),
  ]
  module.anonymize = tf.function(lambda images, password_bits: anonymize_fn(images, password_bits),
                                 input_signature=specs, autograph=False)
  module.recover = tf.function(lambda images, password_bits: recover_fn(images, password_bits),
                               input_signature=specs, autograph=False)
  tmp = out_dir + ".tmp"
  tf.saved_model.save(module, tmp, signatures={
    "anonymize": module.anonymize, "recover": module.recover})
  if card is not None:
    import json  # noqa: PLC0415

    os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
    with open(os.path.join(tmp, "assets.extra", "model.json"), "w") as f:
      json.dump(card, f, indent=1)
  os.replace(tmp, out_dir)


def export_tflite(saved_model_dir: str, path: str) -> None:
  """The SavedModel's two signatures as a builtin-ops TFLite model (atomic)."""
  import tensorflow as tf  # noqa: PLC0415

  from fit_jax import atomic  # noqa: PLC0415

  if os.path.exists(path):
    raise FileExistsError(f"{path} exists; choose a new --tflite file")
  converter = tf.lite.TFLiteConverter.from_saved_model(
    saved_model_dir, signature_keys=["anonymize", "recover"])
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  flatbuffer = converter.convert()

  def save(tmp):
    with open(tmp, "wb") as f:
      f.write(flatbuffer)

  atomic.write_atomically(path, save)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _CHECKPOINT.value or not _OUT.value:
    raise app.UsageError("--checkpoint and --out are required")
  if _TFLITE.value and os.path.exists(_TFLITE.value):
    raise app.UsageError(f"--tflite {_TFLITE.value} exists; choose a new file")
  export_saved_model(_CHECKPOINT.value, _OUT.value, image_size=_SIZE.value)
  print(f"wrote SavedModel with signatures anonymize, recover to {os.path.abspath(_OUT.value)}")
  if _TFLITE.value:
    export_tflite(_OUT.value, _TFLITE.value)
    print(f"wrote TFLite model with signatures anonymize, recover to {os.path.abspath(_TFLITE.value)}")


def run() -> None:  # the `fit-export` console script
  app.run(main)


if __name__ == "__main__":
  run()
