"""The anonymize / recover command line (shared by both commands).

  python -m fit_jax.anonymize --checkpoint CKPT --password PW --out DIR INPUT...
  python -m fit_jax.recover   --checkpoint CKPT --password PW --out DIR INPUT...

Users give the same password to both; recover applies the inverse itself.
Password sources (exactly one, else a prompt): --password, --password_env
VAR, --password_file FILE; forms as fit_jax.training.passwords.parse. Modes: `crop`
(aligned face crops, resized to --size (128), written at that size) and `wild` (every
MTCNN face of a photo is cropped as the reference's LFW_CROP, transformed
and pasted back with a feathered blend; the crop boxes, and nothing else,
go to a `<output>.fit.json` sidecar so recovery uses the same boxes; wild
recovery refuses an image without it).

Privacy: nothing writes the password, its bits or original pixels anywhere
but the transformed output image itself; logs name files only. Every item
is reported; failures never stop the batch; the exit code is 1 if any item
failed. Outputs are written atomically, never over an input or an existing
file (unless --overwrite, and never over an input).
"""

import getpass
import json
import os
import sys

import numpy as np
from absl import app, flags
from PIL import Image

from fit_jax.data import faces, photos, pixels
from fit_jax.data.photos import ItemError, collect_inputs, read_rgb
from fit_jax.deploy import inference
from fit_jax.runtime import atomic, xla_cpu_flags
from fit_jax.training import passwords

SIDECAR = ".fit.json"

_CHECKPOINT = flags.DEFINE_string(
  "checkpoint", None, "Training workdir, checkpoint or converted dir."
)
_PASSWORD = flags.DEFINE_string(
  "password",
  None,
  "Password (integer, 0x-hex or passphrase). A 16-bit model (the paper's) "
  "has 65,536 passwords, which anyone holding the model can try in seconds: any passphrase "
  "is one of them. Train with model.password_bits=128 where guessing matters.",
)
_PASSWORD_ENV = flags.DEFINE_string("password_env", None, "Read the password from this variable.")
_PASSWORD_FILE = flags.DEFINE_string("password_file", None, "Read the password from this file.")
_OUT = flags.DEFINE_string("out", None, "Output folder.")
_MODE = flags.DEFINE_enum("mode", "crop", ["crop", "wild"], "Aligned crops or photos in the wild.")
_FORMAT = flags.DEFINE_enum("format", "same", ["same", "png"], "Output format.")
_BATCH = flags.DEFINE_integer("batch", 16, "Images per generator call (crop mode).")
_SIZE = flags.DEFINE_integer(
  "size",
  None,
  "Side of the faces the model sees. Default: the model card's image size "
  "(its training data.image_size; 128 without a card, as the paper).",
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing outputs (never inputs).")


def read_password(num_bits: int) -> np.ndarray:
  sources = [
    s for s in (_PASSWORD.value, _PASSWORD_ENV.value, _PASSWORD_FILE.value) if s is not None
  ]
  if len(sources) > 1:
    raise app.UsageError("give the password once: --password, --password_env or --password_file")
  if _PASSWORD.value is not None:
    text = _PASSWORD.value
  elif _PASSWORD_ENV.value is not None:
    if _PASSWORD_ENV.value not in os.environ:
      raise app.UsageError(f"environment variable {_PASSWORD_ENV.value} is not set")
    text = os.environ[_PASSWORD_ENV.value]
  elif _PASSWORD_FILE.value is not None:
    try:
      with open(_PASSWORD_FILE.value) as f:
        text = f.read().rstrip("\r\n")
    except OSError as e:
      raise app.UsageError(f"--password_file {_PASSWORD_FILE.value}: {e.strerror}") from None
  elif sys.stdin.isatty():
    text = getpass.getpass("password: ")
  else:
    raise app.UsageError("no password: give --password, --password_env or --password_file")
  try:
    return passwords.parse(text, num_bits)
  except ValueError as e:
    raise app.UsageError(f"password: {e}") from None


def output_path(out_dir: str, relpath: str) -> str:
  base, ext = os.path.splitext(relpath)
  if _FORMAT.value == "png" or ext.lower() not in (".jpg", ".jpeg", ".png"):
    ext = ".png"
  return os.path.join(out_dir, base + ext)


def save_image(path: str, image: np.ndarray) -> None:
  fmt = "JPEG" if path.lower().endswith((".jpg", ".jpeg")) else "PNG"
  options = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
  atomic.write_atomically(path, lambda p: Image.fromarray(image).save(p, fmt, **options))


def model_settings(checkpoint: str, model) -> tuple[int, float]:
  """(image size, password scale) from the model card, --size checked."""
  from fit_jax.deploy import release  # noqa: PLC0415

  card = release.card_for(checkpoint)
  trained = card["image_size"] if card else None
  size = _SIZE.value if _SIZE.value is not None else release.image_size(card)
  try:
    inference.check_image_size(model, size)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if trained is None and _SIZE.value is None:
    print(
      f"{checkpoint} carries no model card: assuming {size} px faces (give --size)", file=sys.stderr
    )
  elif trained is not None and size != trained:
    print(
      f"this model was trained on {trained} px faces; running it at {size} px (--size)",
      file=sys.stderr,
    )
  return size, release.password_scale(card)


def run(direction: str, inputs: list[str]) -> int:
  from fit_jax.runtime import quiet_logs  # noqa: PLC0415

  quiet_logs.quiet_orbax()
  if not inputs:
    raise app.UsageError("give at least one input file or folder")
  if not _CHECKPOINT.value or not _OUT.value:
    raise app.UsageError("--checkpoint and --out are required")
  try:
    model, variables, deterministic = inference.load_generator(_CHECKPOINT.value)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(f"--checkpoint: {e}") from None
  if not deterministic:
    # A photo anonymized in one batch is recovered alone later: that needs
    # outputs that do not depend on the batch.
    raise app.UsageError(
      f"--checkpoint: {_CHECKPOINT.value} has no running statistics (norm=batch_stats), so an "
      "image's output would depend on the other images of its batch; estimate them with "
      "python -m fit_jax.calibrate, or use a norm=batch checkpoint"
    )
  size, scale = model_settings(_CHECKPOINT.value, model)
  bits = read_password(model.password_bits)
  transformer = inference.Transformer(model, variables, deterministic, scale=scale)
  transform = transformer.anonymize if direction == "anonymize" else transformer.recover
  out_dir = os.path.abspath(_OUT.value)
  items = collect_inputs(inputs)
  if not items:
    raise app.UsageError(
      f"no images in {', '.join(inputs)} (looked for {', '.join(photos.IMAGE_SUFFIXES)})"
    )
  input_paths = {os.path.realpath(p) for p, _ in items}
  planned: dict[str, str] = {}
  failures: list[tuple[str, str]] = []
  jobs = []
  for path, relpath in items:
    target = output_path(out_dir, relpath)
    real = os.path.realpath(target)
    if real in input_paths:
      failures.append((path, f"output {target} would overwrite an input"))
    elif real in planned:
      failures.append((path, f"output {target} is also the output of {planned[real]}"))
    elif os.path.exists(target) and not _OVERWRITE.value:
      failures.append((path, f"output {target} exists (use --overwrite)"))
    else:
      planned[real] = path
      jobs.append((path, target))
  detector = faces.Detector() if _MODE.value == "wild" else None
  done = 0

  terminal = sys.stderr.isatty()

  def progress():
    # One updating line on a terminal; whole lines in logs and pipes.
    line = f"{direction}: {done}/{len(jobs)} images"
    print(
      f"\r{line}" if terminal else line, end="" if terminal else "\n", file=sys.stderr, flush=True
    )

  if _MODE.value == "crop":
    for start in range(0, len(jobs), _BATCH.value):
      chunk, images = [], []
      for path, target in jobs[start : start + _BATCH.value]:
        try:
          rgb = read_rgb(path)
        except ItemError as e:
          failures.append((path, str(e)))
          continue
        images.append(photos.preprocess(rgb, size))
        chunk.append((path, target))
      if images:
        outputs = transform(np.stack(images), bits)
        for (path, target), image in zip(chunk, outputs):
          try:
            save_image(target, pixels.to_uint8(image))
          except OSError as e:
            failures.append((path, f"cannot write {target}: {e.strerror}"))
      done += len(jobs[start : start + _BATCH.value])
      progress()
  else:
    for path, target in jobs:
      try:
        rgb = read_rgb(path)
        sidecar = path + SIDECAR
        if direction == "recover" and os.path.exists(sidecar):
          with open(sidecar) as f:
            crops = [faces.Crop(**c) for c in json.load(f)["crops"]]
          small = 0
        elif direction == "recover":
          # Detecting faces on the anonymized photo finds some of them at
          # best; the others would stay anonymized with nothing said.
          raise ItemError(
            f"no {os.path.basename(sidecar)} beside it: the faces its "
            "anonymization changed are unknown (keep the sidecar with the image)"
          )
        else:
          crops, small = detector(rgb)
        if not crops:
          raise ItemError("no face found" + (f" ({small} too small)" if small else ""))
        transformed = transform(np.stack([faces.extract(rgb, c, size) for c in crops]), bits)
        result = rgb
        for crop, face in zip(crops, transformed):
          result = faces.paste(result, crop, face)
        save_image(target, result)
        record = {"version": 1, "crops": [c.to_json() for c in crops]}
        atomic.write_text(target + SIDECAR, json.dumps(record))
        if small:
          print(f"{path}: {small} face(s) too small to transform", file=sys.stderr)
      except ItemError as e:
        failures.append((path, str(e)))
      except OSError as e:
        failures.append((path, f"cannot write output: {e.strerror}"))
      done += 1
      progress()
  if terminal:
    print(file=sys.stderr)
  for path, reason in failures:
    print(f"failed {path}: {reason}")
  print(f"{direction}: {len(items) - len(failures)} written to {out_dir}, {len(failures)} failed")
  return 1 if failures else 0


def main(direction: str) -> None:
  def entry(argv):
    sys.exit(run(direction, argv[1:]))

  # --help lists the flags of the program's main module: make this module's
  # flags its own, whether it runs as `python -m fit_jax.anonymize` or as
  # the `fit-anonymize` console script.
  for flag in flags.FLAGS.get_flags_for_module(__name__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  xla_cpu_flags.apply()
  app.run(entry)
