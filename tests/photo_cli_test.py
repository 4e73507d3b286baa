"""Anonymize/recover CLI, determinism, export and privacy, on real LFW photos."""

import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from fit_jax.data import pixels
from fit_jax.deploy import inference
from fit_jax.training import passwords, train

from . import commands
from .conftest import DATA

pytestmark = [pytest.mark.real_faces, pytest.mark.slow]

LFW = DATA / "lfw_subset" / "lfw"
PHOTO = LFW / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"
PASSWORD = "0x1234"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("ckpt")
  config = tiny.get_config()
  config.train.num_steps = 3
  train.train_and_evaluate(config, str(workdir))
  return workdir


def test_outputs_do_not_depend_on_the_batch(checkpoint):
  model, variables, deterministic = inference.load_generator(str(checkpoint))
  assert deterministic and model.norm == "folded"
  t = inference.Transformer(model, variables, deterministic)
  images = np.random.default_rng(0).uniform(-1, 1, (4, 128, 128, 3)).astype(np.float32)
  bits = passwords.parse(PASSWORD, 16)
  together = t.anonymize(images, bits)
  alone = t.anonymize(images[2:3], bits)
  assert np.abs(together[2] - alone[0]).max() < 1e-5
  # Recovery is G with the complement: -z.
  other = t.recover(together, bits)
  assert other.shape == images.shape and not np.allclose(other, together)


def test_crop_mode_with_bad_inputs(checkpoint, tmp_path):
  inputs = tmp_path / "in"
  inputs.mkdir()
  shutil.copy(PHOTO, inputs / "face.jpg")
  face = Image.open(PHOTO)
  face.convert("CMYK").save(inputs / "cmyk.jpg")
  face.convert("RGBA").save(inputs / "alpha.png")
  face.convert("L").save(inputs / "gray.png")
  Image.fromarray(np.asarray(face.convert("L"), np.uint16) * 257).save(inputs / "deep.png")
  (inputs / "notes.txt.jpg").write_text("hello")
  (inputs / "cut.jpg").write_bytes(PHOTO.read_bytes()[:700])
  Image.new("RGB", (8, 8)).save(inputs / "tiny.png")
  Image.new("L", (8000, 6000)).save(inputs / "huge.png")  # 48 MP, refused before decoding
  out = tmp_path / "out"
  done = commands.run(
    "anonymize",
    f"--checkpoint={checkpoint}",
    "--password_env=FIT_PW",
    f"--out={out}",
    str(inputs),
    str(tmp_path / "missing.jpg"),
    env={"FIT_PW": PASSWORD},
  )
  assert done.returncode == 1, done.stderr[-2000:]
  assert "orbax" not in done.stderr  # its routine lines stay out
  lines = done.stdout.splitlines()
  for name, reason in [
    ("notes.txt.jpg", "not a readable image"),
    ("cut.jpg", "not a readable image"),
    ("tiny.png", "too small"),
    ("huge.png", "too large"),
    ("missing.jpg", "no such file"),
  ]:
    assert any(name in line and reason in line for line in lines), (name, done.stdout)
  assert "5 written" in lines[-1] and "5 failed" in lines[-1]
  for name in ("face.jpg", "cmyk.jpg", "alpha.png", "gray.png", "deep.png"):
    image = Image.open(out / name)
    # The checkpoint's card (its runs.jsonl) says 64 px: the size it runs at.
    assert image.size == (64, 64) and image.mode == "RGB"
  # Progress goes to logs as whole lines, not carriage-return updates.
  assert "anonymize: 10/10 images\n" in done.stderr and "\r" not in done.stderr
  # Same password through a file recovers; the inputs were never touched.
  (tmp_path / "pw.txt").write_text(PASSWORD + "\n")
  rec = commands.run(
    "recover",
    f"--checkpoint={checkpoint}",
    f"--password_file={tmp_path / 'pw.txt'}",
    f"--out={tmp_path / 'rec'}",
    str(out / "face.jpg"),
  )
  assert rec.returncode == 0, rec.stderr[-2000:]
  assert (tmp_path / "rec" / "face.jpg").exists()
  assert (inputs / "face.jpg").read_bytes() == PHOTO.read_bytes()


def test_refuses_to_overwrite_inputs_and_bad_passwords(checkpoint, tmp_path):
  shutil.copy(PHOTO, tmp_path / "face.jpg")
  same = commands.run(
    "anonymize",
    f"--checkpoint={checkpoint}",
    f"--password={PASSWORD}",
    f"--out={tmp_path}",
    str(tmp_path / "face.jpg"),
  )
  assert same.returncode == 1 and "would overwrite an input" in same.stdout
  assert (tmp_path / "face.jpg").read_bytes() == PHOTO.read_bytes()
  bad = commands.run(
    "anonymize",
    f"--checkpoint={checkpoint}",
    "--password=0x12345",
    f"--out={tmp_path / 'o'}",
    str(tmp_path / "face.jpg"),
  )
  assert bad.returncode != 0 and "at most 4" in bad.stderr
  wrong = commands.run(
    "anonymize",
    f"--checkpoint={tmp_path}",
    f"--password={PASSWORD}",
    f"--out={tmp_path / 'o'}",
    str(tmp_path / "face.jpg"),
  )
  assert wrong.returncode != 0 and "--checkpoint" in wrong.stderr


def test_wild_mode_pastes_faces_back_and_recovery_reuses_the_boxes(checkpoint, tmp_path):
  pytest.importorskip("mtcnn")
  inputs = tmp_path / "in"
  inputs.mkdir()
  shutil.copy(PHOTO, inputs / "photo.jpg")
  Image.new("RGB", (200, 150), (90, 120, 200)).save(inputs / "sky.png")
  out = tmp_path / "out"
  done = commands.run(
    "anonymize",
    f"--checkpoint={checkpoint}",
    f"--password={PASSWORD}",
    f"--out={out}",
    "--mode=wild",
    "--format=png",
    str(inputs),
  )
  assert done.returncode == 1 and "sky.png: no face found" in done.stdout
  original = np.asarray(Image.open(PHOTO).convert("RGB"), np.int16)
  anon = np.asarray(Image.open(out / "photo.png"), np.int16)
  assert anon.shape == original.shape
  diff = np.abs(anon - original).max(axis=-1)
  assert diff[125, 125] > 0  # the face changed
  assert diff[:10, :10].max() == 0 and diff[-10:, -10:].max() == 0  # corners untouched
  sidecar = (out / "photo.png.fit.json").read_text()
  assert set(__import__("json").loads(sidecar)) == {"version", "crops"}
  rec = commands.run(
    "recover",
    f"--checkpoint={checkpoint}",
    f"--password={PASSWORD}",
    f"--out={tmp_path / 'rec'}",
    "--mode=wild",
    str(out / "photo.png"),
  )
  assert rec.returncode == 0, rec.stdout + rec.stderr[-1000:]
  assert (tmp_path / "rec" / "photo.png.fit.json").read_text() == sidecar
  # Without its sidecar a wild photo is refused: detection on the anonymized
  # image could miss faces, which would stay anonymized unannounced.
  (tmp_path / "bare").mkdir()
  shutil.copy(out / "photo.png", tmp_path / "bare" / "photo.png")
  bare = commands.run(
    "recover",
    f"--checkpoint={checkpoint}",
    f"--password={PASSWORD}",
    f"--out={tmp_path / 'rec2'}",
    "--mode=wild",
    str(tmp_path / "bare" / "photo.png"),
  )
  assert bare.returncode == 1 and "no photo.png.fit.json beside it" in bare.stdout
  assert "0 written" in bare.stdout and not (tmp_path / "rec2" / "photo.png").exists()


def test_saved_model_export_reloads_with_parity(checkpoint, tmp_path):
  tf = pytest.importorskip("tensorflow")
  done = commands.run(
    "export",
    f"--checkpoint={checkpoint}",
    f"--out={tmp_path / 'sm'}",
    f"--tflite={tmp_path / 'fit.tflite'}",
  )
  assert done.returncode == 0, done.stderr[-2000:]
  loaded = tf.saved_model.load(str(tmp_path / "sm"))
  lite = tf.lite.Interpreter(model_path=str(tmp_path / "fit.tflite"))
  model, variables, deterministic = inference.load_generator(str(checkpoint))
  t = inference.Transformer(model, variables, deterministic)
  # The export is at the card's size (64 px here), and says what it takes.
  card = __import__("json").loads((tmp_path / "sm" / "assets.extra" / "model.json").read_text())
  assert card["image_size"] == 64 and card["bit_order"] == "MSB first"
  assert card["model_card"]["password_space"].startswith("2^16 = 65,536")
  assert "[-1, 1]" in card["signatures"]["anonymize"]
  assert "uint8" in card["tflite_signatures"]["anonymize"]
  rng = np.random.default_rng(1)
  for b in (1, 3):
    images = rng.uniform(-1, 1, (b, 64, 64, 3)).astype(np.float32)
    bits = rng.integers(0, 2, (b, 16)).astype(np.float32)
    np.testing.assert_allclose(
      loaded.anonymize(images, bits).numpy(), t.anonymize(images, bits), atol=1e-5
    )
    np.testing.assert_allclose(
      loaded.recover(images, bits).numpy(), t.recover(images, bits), atol=1e-5
    )
    # TFLite works on 8-bit pixels: the same model, rounded once at each end.
    u8 = pixels.to_uint8(images)
    for name, reference in (("anonymize", t.anonymize), ("recover", t.recover)):
      runner = lite.get_signature_runner(name)  # resizes its inputs to this batch
      out = runner(images=u8, password_bits=bits.astype(bool))["output_0"]
      expected = pixels.to_uint8(reference(pixels.to_unit(u8), bits))
      assert out.dtype == np.uint8
      assert np.abs(out.astype(int) - expected).max() <= 1, name
  # Inputs a deployer could plausibly pass by mistake fail with the reason,
  # instead of running into saturated output (or an MLIR dump for a size).
  images, bits = images[:1], bits[:1]
  mistakes = {
    "images must be in [-1, 1]": (pixels.to_uint8(images), bits),
    "images must be float32 [b, 64, 64, 3]": (images[:, :32, :32], bits),
    "password_bits must be 0 or 1": (images, bits - 0.5),
    "password_bits must be float32 [b, 16]": (images, bits[:, :8]),
    "differ in batch size": (np.concatenate([images, images]), bits),
  }
  for reason, (x, z) in mistakes.items():
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(reason)):
      loaded.signatures["recover"](images=tf.constant(x, tf.float32), password_bits=tf.constant(z))
  runner = lite.get_signature_runner("anonymize")
  with pytest.raises(ValueError, match="expected type UINT8"):
    runner(images=images, password_bits=bits.astype(bool))
  with pytest.raises(ValueError, match="expected type BOOL"):
    runner(images=pixels.to_uint8(images), password_bits=bits)


def test_no_password_or_original_pixels_are_written(checkpoint, tmp_path):
  phrase = "correct horse battery staple"
  bits = passwords.parse(phrase, 16)
  secrets = [
    phrase.encode(),
    "".join(map(str, bits)).encode(),
    bits.tobytes(),
    str(passwords.bits_to_int(bits)).encode(),
  ]
  inputs = tmp_path / "in"
  inputs.mkdir()
  shutil.copy(PHOTO, inputs / "face.png")
  out = tmp_path / "out"
  runs = [
    commands.run(
      "anonymize",
      f"--checkpoint={checkpoint}",
      "--password_env=PW",
      f"--out={out}",
      "--format=png",
      str(inputs),
      env={"PW": phrase},
    ),
    commands.run(
      "recover",
      f"--checkpoint={checkpoint}",
      "--password_env=PW",
      f"--out={tmp_path / 'rec'}",
      str(out),
      env={"PW": phrase},
    ),
    commands.run(
      "export",
      f"--checkpoint={checkpoint}",
      f"--out={tmp_path / 'sm'}",
      f"--tflite={tmp_path / 'edge.tflite'}",
    ),
  ]
  assert all(r.returncode == 0 for r in runs), [r.stderr[-500:] for r in runs]
  original = np.asarray(Image.open(PHOTO).convert("RGB"))
  rows = [original[r].tobytes() for r in (60, 125, 190)]
  written = [
    p for p in tmp_path.rglob("*") if p.is_file() and "in" not in p.relative_to(tmp_path).parts[:1]
  ]
  assert len(written) > 3
  blobs = [p.read_bytes() for p in written] + [(r.stdout + r.stderr).encode() for r in runs]
  for blob in blobs:
    for secret in secrets:
      assert secret not in blob
    for row in rows:
      assert row not in blob
  # The anonymized output's decoded pixels are not the original's either.
  assert (
    np.abs(
      np.asarray(Image.open(out / "face.png"), np.int16)
      - np.asarray(Image.fromarray(original).resize((64, 64)), np.int16)
    ).mean()
    > 2
  )


def test_recovery_through_files_is_the_models_recovery(checkpoint, tmp_path):
  """anonymize -> file -> recover gives G(G(x, z), -z) up to 8-bit rounding
  (PNG), and a JPEG round trip stays close; a wrong password differs.

  A 3-step tiny generator's output barely leaves 0, below 8-bit resolution,
  so its output layer is scaled up (saved as a converted checkpoint) to give
  images whose every difference survives the files."""
  from fit_jax.conversion import pretrained

  _, tree = pretrained.restore_checkpoint(str(checkpoint))
  params = dict(tree["gen"]["params"]["generator"])
  params["conv_out"] = {k: v * 40.0 for k, v in params["conv_out"].items()}
  vivid = tmp_path / "vivid"
  pretrained.save_variables(
    str(vivid),
    {"generator": {"params": params, "batch_stats": tree["gen"]["batch_stats"]["generator"]}},
  )
  checkpoint = vivid
  model, variables, deterministic = inference.load_generator(str(checkpoint))
  t = inference.Transformer(model, variables, deterministic)
  x = np.asarray(Image.open(PHOTO).convert("RGB").resize((128, 128), Image.BICUBIC), np.float32)
  bits = passwords.parse(PASSWORD, 16)
  anonymized = t.anonymize(x[None] / 127.5 - 1.0, bits)
  expected = t.recover(anonymized, bits)[0]
  assert anonymized.std() > 0.1 and expected.std() > 0.1
  inputs = tmp_path / "in"
  inputs.mkdir()
  shutil.copy(PHOTO, inputs / "face.jpg")
  got = {}
  for fmt in ("png", "same"):
    anon = commands.run(
      "anonymize",
      f"--checkpoint={checkpoint}",
      f"--password={PASSWORD}",
      f"--format={fmt}",
      f"--out={tmp_path / ('a' + fmt)}",
      str(inputs),
    )
    rec = commands.run(
      "recover",
      f"--checkpoint={checkpoint}",
      f"--password={PASSWORD}",
      f"--out={tmp_path / ('r' + fmt)}",
      str(tmp_path / ("a" + fmt)),
    )
    assert anon.returncode == rec.returncode == 0, anon.stderr[-500:] + rec.stderr[-500:]
    name = "face.png" if fmt == "png" else "face.jpg"
    got[fmt] = np.asarray(Image.open(tmp_path / ("r" + fmt) / name), np.float32) / 127.5 - 1.0
  assert np.abs(got["png"] - expected).mean() < 2.5 / 127.5  # two 8-bit roundings
  assert np.abs(got["same"] - expected).mean() < 0.05  # two JPEG encodings
  wrong = commands.run(
    "recover",
    f"--checkpoint={checkpoint}",
    "--password=0xbeef",
    f"--out={tmp_path / 'w'}",
    str(tmp_path / "apng"),
  )
  assert wrong.returncode == 0
  w = np.asarray(Image.open(tmp_path / "w" / "face.png"), np.float32) / 127.5 - 1.0
  assert np.abs(w - got["png"]).mean() > 1e-3


def test_help_size_and_empty_inputs_are_clear(checkpoint, tmp_path):
  helped = commands.run("anonymize", "--help")  # absl exits 1 after help
  # The installed console script too ([project.scripts]).
  script = subprocess.run(
    [str(pathlib.Path(sys.executable).parent / "fit-recover"), "--help"],
    capture_output=True,
    text=True,
    timeout=300,
  )
  for output in (helped.stdout, script.stdout):
    for flag in ("--checkpoint", "--password", "--size", "--mode", "65,536"):
      assert flag in output, flag
  (tmp_path / "empty").mkdir()
  empty = commands.run(
    "anonymize",
    f"--checkpoint={checkpoint}",
    f"--password={PASSWORD}",
    f"--out={tmp_path / 'o'}",
    str(tmp_path / "empty"),
  )
  assert empty.returncode != 0 and "no images in" in empty.stderr
  assert "Traceback" not in empty.stderr
  shutil.copy(PHOTO, tmp_path / "face.jpg")
  for size in ("0", "7"):
    bad = commands.run(
      "anonymize",
      f"--checkpoint={checkpoint}",
      f"--password={PASSWORD}",
      f"--out={tmp_path / 'o'}",
      f"--size={size}",
      str(tmp_path / "face.jpg"),
    )
    assert bad.returncode != 0 and f"--size {size}: give a side" in bad.stderr, bad.stderr[-500:]
    assert "Traceback" not in bad.stderr
  other = commands.run(
    "anonymize",
    f"--checkpoint={checkpoint}",
    f"--password={PASSWORD}",
    f"--out={tmp_path / 'o128'}",
    "--size=128",
    str(tmp_path / "face.jpg"),
  )
  assert other.returncode == 0 and "trained on 64 px faces; running it at 128 px" in other.stderr
  assert Image.open(tmp_path / "o128" / "face.jpg").size == (128, 128)


def test_the_cards_password_scale_is_used(tmp_path):
  """A release whose card says password_scale=0.5 runs at 0.5, not 1.0
  (random weights, so the password visibly changes the output)."""
  import jax  # noqa: PLC0415

  from fit_jax import models  # noqa: PLC0415
  from fit_jax.deploy import compact_weights, release  # noqa: PLC0415

  config = tiny.get_config()
  generator = models.build_models(config.model).generator
  variables = generator.init(
    jax.random.key(3),
    np.zeros((1, 64, 64, 3), np.float32),
    np.zeros((1, 16), np.float32),
    train=False,
  )
  variables = jax.device_get(dict(variables))
  # Password channels weigh 50x and the output layer 300x (a fresh init's
  # output is ~1e-4), so the password scale shows in the written image.
  kernel = np.array(variables["params"]["conv_in"])  # [7, 7, 3 + bits, ngf]
  kernel[:, :, 3:, :] *= 50.0
  variables["params"]["conv_in"] = kernel
  variables["params"]["conv_out"] = jax.tree.map(
    lambda w: w * 300.0, variables["params"]["conv_out"]
  )
  model_dir = tmp_path / "model"
  compact_weights.save(str(model_dir / release.WEIGHTS), variables, "float32")
  config.model.password_scale = 0.5
  card = release.card_of(__import__("json").loads(config.to_json_best_effort()), 0, "float32")
  (model_dir / release.CARD).write_text(__import__("json").dumps(card))
  shutil.copy(PHOTO, tmp_path / "face.png")
  done = commands.run(
    "anonymize",
    f"--checkpoint={model_dir}",
    f"--password={PASSWORD}",
    f"--out={tmp_path / 'o'}",
    str(tmp_path / "face.png"),
  )
  assert done.returncode == 0, done.stderr[-2000:]
  got = np.asarray(Image.open(tmp_path / "o" / "face.png"), np.float32)
  model, loaded, deterministic = inference.load_generator(str(model_dir))
  x = np.asarray(Image.open(PHOTO).resize((64, 64), Image.BICUBIC), np.float32)[None] / 127.5 - 1
  bits = passwords.parse(PASSWORD, 16)
  errors = {}
  for scale in (0.5, 1.0):
    want = inference.Transformer(model, loaded, deterministic, scale=scale).anonymize(x, bits)
    want = np.clip((want[0] + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8).astype(np.float32)
    errors[scale] = np.abs(got - want).max()
  assert errors[0.5] <= 1 < errors[1.0], errors
