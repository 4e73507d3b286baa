"""The paper's section-5 evaluation on LFW pairs: identity removal, recovery,
multimodality, detector consistency, and the classical baselines.

  python -m fit_jax.evaluate --checkpoint CKPT --data $FIT_DATA/lfw_subset \
      --landmarks data/lfw_subset_landmarks.txt --out REPORT_DIR \
      [--recognizers dlib,facenet] [--baselines blur,noise,mask,superpixel,edge] \
      [--deanonymizers DIR] [--folds 1]

Writes REPORT_DIR/report.json, report.md and plots (identity_vs_recovery.png,
roc_<recognizer>.png). The protocol:

- Pairs: LFW View 2 (pairs.txt; pairs whose images or landmarks are missing
  are left out and counted). Images are decoded as the training data (the
  whole frame, bicubic to 128) and landmarks rescaled into that frame.
- Verification: each pair's first image is replaced by a variant, the
  cosine of embeddings is thresholded with the threshold chosen on the
  other folds (sweep [-1, 1) step 0.005), accuracy averaged over folds;
  ROC AUC over all pairs. With a single fold present (the LFW subset's fold
  1), its pairs are cut into 10 interleaved folds instead. Variants:
  original; the model's anonymization A = G(x, p), wrong recovery
  W = G(A, -q) and recovery R = G(A, -p) with random passwords p != q per
  image; each baseline's output and, when a deanonymizer is given, its
  deanonymization. Chance (0.5) is the goal for A and W, the original
  accuracy for R.
- Recovery (Table 2): LPIPS (AlexNet), DSSIM, L1, L2 of x vs R on [0, 1].
- Multimodality (§5.3): cosine similarity of A vs A2 (two passwords) and
  W vs W2 (two wrong passwords), and the share judged "same person" at the
  recognizer's own threshold on original pairs.
- Detector consistency (Table 3): MTCNN on x, A and R; mean absolute
  difference of box corners and of the 5 keypoints, in pixels of the 128
  frame, over faces found in both; and the detection rates.

Every number is computed on the first images of the pairs (the images a
verification replaces), except that the originals' embeddings cover both.
Passwords are drawn from --seed and never written anywhere.
"""

import json
import os
import sys
import time

import numpy as np

from fit_jax.data import pairs as pairs_io
from fit_jax.evaluation import baselines, lfw_pairs, metrics, recognizers
from fit_jax.runtime import atomic

METHOD = "fit_jax"


def progress(iterable, desc: str, total: int | None = None):
  from tqdm import tqdm  # noqa: PLC0415

  # Bars on a terminal only: in logs and CI they would be noise.
  return tqdm(
    iterable, desc=desc, total=total, file=sys.stderr, leave=False, disable=not sys.stderr.isatty()
  )


def draw_passwords(num_images: int, bits: int, seed: int) -> dict[str, np.ndarray]:
  """p, p2 (second anonymization) and wrong q, q2 != p, per image."""
  rng = np.random.default_rng(seed)
  drawn = {
    k: rng.integers(0, 2, (num_images, bits), dtype=np.int32) for k in ("p", "p2", "q", "q2")
  }
  for key in ("q", "q2"):
    same = np.all(drawn[key] == drawn["p"], axis=1)
    drawn[key][same, 0] ^= 1  # a wrong password must differ from the right one
  return drawn


def transform_all(transformer, images, passwords, batch: int) -> dict[str, np.ndarray]:
  """A, A2, R, W, W2 in [0, 1] of [0, 1] images."""
  out = {k: [] for k in ("A", "A2", "R", "W", "W2")}
  for i in progress(range(0, len(images), batch), "generator", total=-(-len(images) // batch)):
    x = images[i : i + batch] * 2.0 - 1.0
    p = {k: v[i : i + batch] for k, v in passwords.items()}
    anon = transformer.anonymize(x, p["p"])
    out["A"].append(anon)
    out["A2"].append(transformer.anonymize(x, p["p2"]))
    out["R"].append(transformer.recover(anon, p["p"]))
    out["W"].append(transformer.recover(anon, p["q"]))
    out["W2"].append(transformer.recover(anon, p["q2"]))
  return {k: np.clip((np.concatenate(v) + 1.0) / 2.0, 0.0, 1.0) for k, v in out.items()}


def deanonymize(path: str, images: np.ndarray, batch: int) -> np.ndarray:
  """A deanonymizer's output ([0, 1]) for baseline images ([0, 1])."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from fit_jax.deploy import inference  # noqa: PLC0415

  model, variables, _ = inference.load_generator(path)
  run = jax.jit(
    lambda v, x: model.apply(
      v, x, jnp.zeros((x.shape[0], model.password_bits), jnp.float32), train=False
    )
  )
  out = [
    np.asarray(run(variables, images[i : i + batch] * 2.0 - 1.0))
    for i in range(0, len(images), batch)
  ]
  return np.clip((np.concatenate(out) + 1.0) / 2.0, 0.0, 1.0)


def verification_folds(pairs: list[pairs_io.Pair]) -> tuple[np.ndarray, str]:
  folds = np.array([p.fold for p in pairs])
  if len(np.unique(folds)) >= 2:
    return folds, "pairs.txt folds"
  return np.arange(len(pairs)) % 10, "10 interleaved splits of the single fold present"


def verify(embed_first, embed_second, same, folds) -> dict[str, float]:
  scores = metrics.cosine_scores(embed_first, embed_second)
  result = metrics.verification_accuracy(scores, same, folds)
  result["auc"] = metrics.roc_auc(scores, same)
  result["scores"] = scores
  return result


def recovery_quality(original, recovered, lpips, chunk: int = 32) -> dict[str, float]:
  """Table 2's metrics; LPIPS in chunks (its AlexNet at 128 px is memory-hungry)."""
  total = sum(
    lpips(original[i : i + chunk], recovered[i : i + chunk]) * len(original[i : i + chunk])
    for i in range(0, len(original), chunk)
  )
  return {
    "lpips": float(total / len(original)),
    "dssim": metrics.dssim(original, recovered),
    "l1": metrics.l1(original, recovered),
    "l2": metrics.l2(original, recovered),
  }


def detect(detector, images: np.ndarray, landmarks: np.ndarray) -> list[np.ndarray | None]:
  """Per image: [14] box corners + 5 keypoints of the face nearest the
  landmarks' centre, or None."""
  found = []
  for image, points in zip(progress(images, "MTCNN"), landmarks):
    pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    faces = detector.detect_faces(pixels)
    if not faces:
      found.append(None)
      continue
    centre = points.mean(axis=0)
    face = min(faces, key=lambda f: np.sum((np.array(f["keypoints"]["nose"]) - centre) ** 2))
    x, y, w, h = face["box"]
    keypoints = [
      face["keypoints"][k] for k in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    ]
    found.append(np.array([x, y, x + w, y + h, *np.ravel(keypoints)], np.float64))
  return found


def detector_consistency(original: list, variant: list) -> dict[str, float]:
  both = [(a, b) for a, b in zip(original, variant) if a is not None and b is not None]
  result = {"detected": float(np.mean([v is not None for v in variant])), "compared": len(both)}
  if both:
    diff = np.abs(np.stack([a for a, _ in both]) - np.stack([b for _, b in both]))
    result["box_px"] = float(diff[:, :4].mean())
    result["keypoints_px"] = float(diff[:, 4:].mean())
  return result


def evaluate(
  *,
  checkpoint: str,
  data: str,
  pairs_file: str,
  landmark_file: str,
  recognizer_names: list[str],
  baseline_names: list[str],
  deanonymizers: str = "",
  sphereface: str = "",
  folds: list[int] | None = None,
  max_pairs: int = 0,
  detector: str = "mtcnn",
  image_size: int = 128,
  batch_size: int = 32,
  seed: int = 0,
) -> tuple[dict, dict]:
  """Runs the protocol; returns (report, images for the plots)."""
  start = time.time()
  images_root = os.path.join(data, "lfw") if os.path.isdir(os.path.join(data, "lfw")) else data
  pairs_file = pairs_file or os.path.join(data, "pairs.txt")
  landmark_file = landmark_file or os.path.join(data, "lfw_landmark.txt")
  for unknown in sorted(set(baseline_names) - set(baselines.NAMES)):
    raise ValueError(f"--baselines: unknown baseline {unknown!r}; choose from {baselines.NAMES}")
  pairs, landmarks, excluded = lfw_pairs.select(
    pairs_io.read_pairs(pairs_file), images_root, landmark_file, folds, max_pairs or None
  )
  if not pairs:
    raise ValueError(f"{pairs_file}: no pair has both images and landmarks under {images_root}")
  faces = lfw_pairs.load_faces(pairs, images_root, landmarks, image_size)
  first = np.array([faces.index[p.first] for p in pairs])
  second = np.array([faces.index[p.second] for p in pairs])
  same = np.array([p.same for p in pairs])
  fold_ids, fold_note = verification_folds(pairs)
  # The images a verification replaces: each pair's first, once.
  subjects = np.unique(first)
  subject_row = {int(s): i for i, s in enumerate(subjects)}
  x = faces.images[subjects]
  x_points = faces.landmarks[subjects]
  rows = np.array([subject_row[int(f)] for f in first])

  variants: dict[str, np.ndarray] = {}
  if checkpoint:
    from fit_jax.deploy import inference, release  # noqa: PLC0415

    model, variables, deterministic = inference.load_generator(checkpoint)
    card = release.card_for(checkpoint)
    transformer = inference.Transformer(
      model, variables, deterministic, scale=release.password_scale(card)
    )
    passwords = draw_passwords(len(x), model.password_bits, seed)
    generated = transform_all(transformer, x, passwords, batch_size)
    variants.update({f"{METHOD}:{k}": v for k, v in generated.items()})
  for name in baseline_names:
    anonymized = baselines.apply(name, x, x_points, seed=seed)
    variants[f"{name}:A"] = anonymized
    if deanonymizers:
      path = os.path.join(deanonymizers, name)
      if os.path.isdir(os.path.join(path, "deanonymizer")):
        path = os.path.join(path, "deanonymizer")
      if not os.path.isdir(path):
        raise FileNotFoundError(f"--deanonymizers: no deanonymizer for {name!r} at {path}")
      variants[f"{name}:R"] = deanonymize(path, anonymized, batch_size)

  report: dict = {
    "setup": {
      "checkpoint": checkpoint,
      "data": images_root,
      "pairs_file": pairs_file,
      "landmarks": landmark_file,
      "pairs": len(pairs),
      "same_pairs": int(same.sum()),
      "folds": sorted({p.fold for p in pairs}),
      "cross_validation": fold_note,
      "pairs_left_out": excluded,
      "image_size": image_size,
      "recognizers": recognizer_names,
      "baselines": baseline_names,
      "seed": seed,
    },
    "verification": {},
    "multimodality": {},
    "recovery": {},
    "detector": {},
  }
  curves: dict = {}
  for name in recognizer_names:
    weights = sphereface or (checkpoint if name == "sphereface" else "")
    recognizer = recognizers.build(name, sphereface_weights=weights)
    t = time.time()
    base = recognizer(faces.images, faces.landmarks, image_size)
    table = {"original": verify(base[first], base[second], same, fold_ids)}
    embedded = {}
    for key, images in progress(variants.items(), f"{name} embeddings", total=len(variants)):
      embedded[key] = recognizer(images, x_points, image_size)
      if key.endswith(("A2", "W2")):
        continue
      table[key] = verify(embedded[key][rows], base[second], same, fold_ids)
    curves[name] = {k: (v.pop("scores"), same) for k, v in table.items()}
    report["verification"][name] = table
    threshold = table["original"]["threshold"]
    if f"{METHOD}:A" in embedded:
      mm = {}
      for a, b in (("A", "A2"), ("W", "W2")):
        sim = np.sum(embedded[f"{METHOD}:{a}"] * embedded[f"{METHOD}:{b}"], axis=1)
        mm[f"{a}_vs_{b}"] = {
          "similarity": float(sim.mean()),
          "same_person_rate": float(np.mean(sim > threshold)),
        }
      # For scale: the same statistic between x and its own recovery.
      sim = np.sum(embedded[f"{METHOD}:R"] * base[subjects], axis=1)
      mm["x_vs_R"] = {
        "similarity": float(sim.mean()),
        "same_person_rate": float(np.mean(sim > threshold)),
      }
      report["multimodality"][name] = mm
    report["verification"][name]["seconds"] = round(time.time() - t, 1)

  recovered = {k: v for k, v in variants.items() if k.endswith((":R", ":W"))}
  if recovered:
    lpips = metrics.LPIPS("alexnet")
    for key, images in recovered.items():
      report["recovery"][key] = recovery_quality(x, images, lpips)

  if detector == "mtcnn" and f"{METHOD}:A" in variants:
    from mtcnn import MTCNN  # noqa: PLC0415  (faces extra, TensorFlow)

    mtcnn = MTCNN()
    found_x = detect(mtcnn, x, x_points)
    report["detector"]["original"] = {"detected": float(np.mean([f is not None for f in found_x]))}
    for key in (f"{METHOD}:A", f"{METHOD}:R"):
      report["detector"][key] = detector_consistency(
        found_x, detect(mtcnn, variants[key], x_points)
      )
  report["setup"]["wall_s"] = round(time.time() - start, 1)
  return report, {"curves": curves, "x": x, "variants": variants}


def markdown(report: dict) -> str:
  """The report as Markdown tables."""
  setup = report["setup"]
  lines = [
    "# fit_jax evaluation",
    "",
    f"{setup['pairs']} LFW pairs ({setup['same_pairs']} same) from folds {setup['folds']} "
    f"({setup['cross_validation']}); checkpoint `{setup['checkpoint'] or '-'}`; "
    f"{setup['wall_s']} s.",
    "",
    "## Verification accuracy (first image replaced; chance 0.5)",
    "",
  ]
  recognizer_names = list(report["verification"])
  methods = []
  for table in report["verification"].values():
    methods += [m for m in table if m != "seconds" and m not in methods]
  lines.append("| variant | " + " | ".join(f"{r} acc | {r} AUC" for r in recognizer_names) + " |")
  lines.append("|---|" + "---|---|" * len(recognizer_names))
  for method in methods:
    cells = []
    for r in recognizer_names:
      v = report["verification"][r].get(method)
      cells += [f"{v['accuracy']:.4f} ± {v['std']:.3f}", f"{v['auc']:.4f}"] if v else ["-", "-"]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  if report["recovery"]:
    lines += [
      "",
      "## Recovery quality (vs the original, [0, 1] images)",
      "",
      "| variant | LPIPS | DSSIM | L1 | L2 |",
      "|---|---|---|---|---|",
    ]
    for key, v in report["recovery"].items():
      lines.append(
        f"| {key} | {v['lpips']:.4f} | {v['dssim']:.4f} | {v['l1']:.4f} | {v['l2']:.4f} |"
      )
  if report["multimodality"]:
    lines += [
      "",
      "## Multimodality (cosine similarity; share judged the same person)",
      "",
      "| recognizer | pair | similarity | same-person rate |",
      "|---|---|---|---|",
    ]
    for r, table in report["multimodality"].items():
      for pair, v in table.items():
        lines.append(f"| {r} | {pair} | {v['similarity']:.4f} | {v['same_person_rate']:.3f} |")
  if report["detector"]:
    lines += [
      "",
      "## MTCNN consistency (pixels of the 128 px frame)",
      "",
      "| variant | detected | compared | box | keypoints |",
      "|---|---|---|---|---|",
    ]
    for key, v in report["detector"].items():
      lines.append(
        f"| {key} | {v['detected']:.3f} | {v.get('compared', '-')} | "
        f"{v.get('box_px', float('nan')):.2f} | {v.get('keypoints_px', float('nan')):.2f} |"
      )
  return "\n".join(lines) + "\n"


def plot(report: dict, extras: dict, out_dir: str) -> list[str]:
  """Fig. 4 style identity-removal vs recovery plot and ROC curves."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  written = []
  recognizer_names = list(report["verification"])
  fig, axes = plt.subplots(
    1, len(recognizer_names), figsize=(5 * len(recognizer_names), 4.5), squeeze=False
  )
  for ax, name in zip(axes[0], recognizer_names):
    table = report["verification"][name]
    methods = sorted({k.split(":")[0] for k in table if ":" in k})
    for method in methods:
      anon = table.get(f"{method}:A")
      recovered = table.get(f"{method}:R")
      if anon:
        ax.scatter(anon["accuracy"], recovered["accuracy"] if recovered else 0.5, s=40)
        ax.annotate(method, (anon["accuracy"], recovered["accuracy"] if recovered else 0.5))
    ax.axhline(table["original"]["accuracy"], ls="--", c="gray", lw=1)
    ax.set(
      xlim=(0.4, 1.0),
      ylim=(0.4, 1.0),
      title=name,
      xlabel="accuracy, anonymized vs original (lower: more private)",
      ylabel="accuracy, recovered vs original (higher: better)",
    )
  fig.tight_layout()
  path = os.path.join(out_dir, "identity_vs_recovery.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  written.append(path)
  for name, curves in extras["curves"].items():
    fig, ax = plt.subplots(figsize=(5, 5))
    for method, (scores, same) in curves.items():
      order = np.argsort(-scores)
      tpr = np.cumsum(same[order]) / max(same.sum(), 1)
      fpr = np.cumsum(~same[order]) / max((~same).sum(), 1)
      ax.plot(np.r_[0, fpr], np.r_[0, tpr], label=method)
    ax.plot([0, 1], [0, 1], ls=":", c="gray")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC, {name}")
    ax.legend(fontsize=7)
    path = os.path.join(out_dir, f"roc_{name}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
  return written


def write_report(report: dict, extras: dict, out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  atomic.write_text(os.path.join(out_dir, "report.json"), json.dumps(report, indent=2) + "\n")
  atomic.write_text(os.path.join(out_dir, "report.md"), markdown(report))
  plot(report, extras, out_dir)
