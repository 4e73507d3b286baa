"""Packs a config's training data and recognizer for a machine without them.

  python -m fit_jax.pack --config configs/lfw.py --out .gpu_pack \
      [--config.data.image_size=64] [--quality 90] [--facenet int8] [--max_mib 60]

Writes into --out:
- `faces.npz`: the folder source's training faces at `data.image_size` (see
  packed_faces), and `--num_eval` faces of the people the config leaves out
  (`data.exclude_pairs`, `data.exclude_folds`), one per person, for the
  sample grids; train with `--config.data.source=packed
  --config.data.root=OUT/faces.npz`.
- `facenet.<mode>.npz`: with `model.recognizer=facenet`, FaceNet's weights
  in compact form (compact_weights), for `model.facenet.pretrained`.
- `pack.json`: what was packed and what compactness costs: the JPEG
  round-trip's PSNR over all faces, and the cosine between FaceNet's
  embeddings of `--agreement_faces` packed faces under the full and the
  compact weights.

Unreadable images are listed in pack.json and skipped, never silently. The
total size is checked against --max_mib (a lent accelerator takes 64 MiB
with the repository). Nothing is written over an existing file of another
kind: outputs are written atomically inside --out.
"""

import concurrent.futures
import json
import os

import numpy as np

from fit_jax.data import input_pipeline, packed_faces, pixels
from fit_jax.deploy import compact_weights
from fit_jax.runtime import atomic


def _read(source, record):
  """(uint8 image, landmarks in the source's frame) or the reason it failed."""
  try:
    image, (width, height) = source.read(record)
  except input_pipeline.BadRecordError as e:
    return str(e)
  scale = np.array([source.landmark_frame / width, source.landmark_frame / height], np.float32)
  return pixels.to_uint8(image), record.landmarks * scale


def _pack_records(source, records, quality: int, threads: int = 4):
  """Encoded faces of `records`, with the PSNR of the JPEG round trip."""
  jpegs, labels, landmarks, skipped = [], [], [], {}
  squared_error, pixels = 0.0, 0
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for record, result in zip(records, pool.map(lambda r: _read(source, r), records)):
      if isinstance(result, str):
        skipped[os.path.join(record.root, record.relpath)] = result
        continue
      image, points = result
      jpeg = packed_faces.encode_jpeg(image, quality)
      decoded = packed_faces.decode_all(
        np.frombuffer(jpeg, np.uint8), np.array([0, len(jpeg)]), image.shape[0], "pack"
      )[0]
      squared_error += float(np.sum((decoded.astype(np.float64) - image) ** 2))
      pixels += image.size
      jpegs.append(jpeg)
      labels.append(record.label)
      landmarks.append(points)
  mse = squared_error / max(pixels, 1)
  psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
  landmarks = (
    np.stack(landmarks).astype(np.float32) if landmarks else np.zeros((0, 5, 2), np.float32)
  )
  return jpegs, np.asarray(labels, np.int32), landmarks, skipped, psnr


def _eval_records(config, num_eval: int):
  """One record each of the first `num_eval` left-out people (sorted)."""
  data = config.data
  people = input_pipeline.excluded_people(data)
  if not people or not num_eval:
    return [], None
  source = input_pipeline.FaceFolder(
    input_pipeline.split_paths(data.root),
    input_pipeline.split_paths(data.landmarks),
    with_labels=False,
    image_size=data.image_size,
    landmark_frame=data.landmark_frame,
    num_classes=2**31 - 1,
    on_bad_record="skip",
    identities=people,
  )
  first = {}
  for record in sorted(source.records, key=lambda r: r.relpath):
    first.setdefault(record.relpath.split("/")[0], record)
  return list(first.values())[:num_eval], source


def facenet_agreement(
  full: dict, compact: dict, images: np.ndarray, landmarks: np.ndarray, frame: float
) -> dict:
  """Cosine between FaceNet embeddings under two weight sets, over
  [N, S, S, 3] uint8 faces with landmarks in a `frame` px frame."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from fit_jax.models import inception_resnet_v1  # noqa: PLC0415
  from fit_jax.training import alignment  # noqa: PLC0415

  model = inception_resnet_v1.InceptionResnetV1()

  @jax.jit
  def embed(params, x, lm):
    crops = alignment.recognizer_crops(x / 127.5 - 1.0, lm, frame, "facenet")
    return model.apply({"params": params}, crops)

  cosines = []
  for i in range(0, len(images), 32):
    x = jnp.asarray(images[i : i + 32], jnp.float32)
    lm = jnp.asarray(landmarks[i : i + 32], jnp.float32)
    a, b = np.asarray(embed(full, x, lm)), np.asarray(embed(compact, x, lm))
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    cosines.append(np.sum(a * b, axis=-1))
  cosines = np.concatenate(cosines)
  return {
    "faces": int(len(cosines)),
    "cosine_mean": float(cosines.mean()),
    "cosine_min": float(cosines.min()),
  }


def pack(
  config,
  out: str,
  *,
  quality: int = 90,
  facenet_mode: str = "int8",
  num_eval: int = 16,
  agreement_faces: int = 256,
) -> dict:
  """Writes faces.npz (and facenet.<mode>.npz) into `out`; returns pack.json's dict."""
  source = input_pipeline.build_source(config)
  if not isinstance(source, input_pipeline.FaceFolder):
    raise ValueError(
      f"config.data.source={config.data.source!r}: only folder sources "
      "(lfw_folder, casia, folder, ffhq) can be packed"
    )
  jpegs, labels, landmarks, skipped, psnr = _pack_records(source, source.records, quality)
  eval_records, eval_source = _eval_records(config, num_eval)
  eval_jpegs, _, eval_landmarks, eval_skipped, _ = (
    _pack_records(eval_source, eval_records, quality)
    if eval_records
    else ([], None, np.zeros((0, 5, 2), np.float32), {}, None)
  )
  data, offsets = packed_faces.join_jpegs(jpegs)
  eval_data, eval_offsets = packed_faces.join_jpegs(eval_jpegs)
  faces_path = os.path.join(out, "faces.npz")
  arrays = dict(
    format=np.int64(packed_faces.FORMAT),
    image_size=np.int64(config.data.image_size),
    landmark_frame=np.float64(config.data.landmark_frame),
    jpeg=data,
    offsets=offsets,
    label=labels,
    landmarks=landmarks,
    # The sample grids show these left-out people; their A-Softmax labels
    # mean nothing (the grid's losses are not reported), so all are 0.
    eval_jpeg=eval_data,
    eval_offsets=eval_offsets,
    eval_label=np.zeros(len(eval_jpegs), np.int32),
    eval_landmarks=eval_landmarks,
  )
  atomic.write_npz(faces_path, arrays)
  report = {
    "faces": len(jpegs),
    "identities": int(len(np.unique(labels))),
    "max_label": int(labels.max()) if len(labels) else -1,
    "image_size": int(config.data.image_size),
    "jpeg_quality": quality,
    "jpeg_psnr_db": round(psnr, 2),
    "faces_bytes": os.path.getsize(faces_path),
    "eval_faces": len(eval_jpegs),
    "skipped": {**skipped, **eval_skipped},
    "excluded_people": len(input_pipeline.excluded_people(config.data)),
  }
  if config.model.get("recognizer", "sphereface") == "facenet" and facenet_mode != "none":
    from fit_jax.conversion import convert_facenet  # noqa: PLC0415

    source_weights = config.model.facenet.pretrained
    full = convert_facenet.load_params(None if source_weights == "package" else source_weights)
    path = os.path.join(out, f"facenet.{facenet_mode}.npz")
    compact_weights.save(path, full, facenet_mode)
    compact = compact_weights.load(path)
    n = min(agreement_faces, len(jpegs))
    faces = packed_faces.decode_all(data, offsets[: n + 1], config.data.image_size, faces_path)
    report["facenet"] = {
      "file": os.path.basename(path),
      "mode": facenet_mode,
      "bytes": os.path.getsize(path),
      **facenet_agreement(full, compact, faces, landmarks[:n], config.data.landmark_frame),
    }
  report["total_bytes"] = sum(
    os.path.getsize(os.path.join(out, f))
    for f in ("faces.npz", report.get("facenet", {}).get("file", ""))
    if f and os.path.isfile(os.path.join(out, f))
  )
  atomic.write_text(os.path.join(out, "pack.json"), json.dumps(report, indent=1) + "\n")
  return report
