"""A trained generator as a release: compact weights and a model card.

  python -m fit_jax.release --checkpoint WORKDIR --out DIR \
      [--mode int8|bfloat16|float32] [--max_part_mib 15] [--config FILE]

Writes into DIR:
- `generator.npz` (or its parts, `generator-0000i-of-0000k.npz`): the
  generator's params and running BatchNorm statistics (compact_weights);
- `model.json`, the model card: image size, password bits and scale, norm,
  generator sizes, training step, the weights' form, and the training
  config. It holds no password and no image.

The config is read from the workdir's runs.jsonl (the trainer records it at
each start) unless --config names a config file. Anonymization, recovery
and export load a release directory like a checkpoint (inference
.load_generator).
"""

import json
import os

from fit_jax.deploy import compact_weights
from fit_jax.runtime import atomic

CARD = "model.json"
WEIGHTS = "generator.npz"
FORMAT = 1


def recorded_config(workdir: str) -> dict:
  """The config of the last start recorded in workdir/runs.jsonl."""
  path = os.path.join(workdir, "runs.jsonl")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no training record; give --config")
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  if not lines:
    raise ValueError(f"{path}: empty training record; give --config")
  return json.loads(lines[-1])["config"]


def card_of(config: dict, step: int, mode: str) -> dict:
  """The model card of a generator trained under `config` (a plain dict)."""
  model, data = config["model"], config["data"]
  return {
    "format": FORMAT,
    "step": step,
    "image_size": data["image_size"],
    "password_bits": model["password_bits"],
    # Anyone holding the model can try every password of a small space.
    "password_space": f"2^{model['password_bits']} = {2 ** model['password_bits']:,} passwords; "
    "every passphrase maps to one of them",
    "password_scale": model["password_scale"],
    "norm": model["norm"],
    "generator": {k: model["generator"][k] for k in ("ngf", "num_downsampling", "num_blocks")},
    "weights": mode,
    "config": config,
  }


def release(
  checkpoint: str,
  out: str,
  *,
  mode: str = "int8",
  max_part_bytes: int | None = None,
  config: dict | None = None,
) -> list[str]:
  """Writes `checkpoint`'s generator and card into `out`; returns the files."""
  from fit_jax.conversion import pretrained  # noqa: PLC0415  (orbax)

  where, tree = pretrained.restore_checkpoint(checkpoint)
  if "gen" not in tree:
    raise ValueError(f"{where}: not a training checkpoint (no generator state)")
  step_dir = os.path.basename(os.path.dirname(where))
  step = int(step_dir) if step_dir.isdigit() else -1
  params = tree["gen"]["params"]["generator"]
  stats = tree["gen"]["batch_stats"].get("generator")
  if not stats:
    raise ValueError(
      f"{where}: the generator has no running statistics (norm=batch_stats); "
      "a release runs on single photos: calibrate it (python -m fit_jax.calibrate)"
    )
  if config is None:
    workdir = os.path.abspath(os.path.expanduser(checkpoint))
    config = recorded_config(workdir)
  os.makedirs(out, exist_ok=True)
  written = compact_weights.save(
    os.path.join(out, WEIGHTS), {"params": params, "batch_stats": stats}, mode, max_part_bytes
  )
  card = os.path.join(out, CARD)
  atomic.write_text(card, json.dumps(card_of(config, step, mode), indent=1) + "\n")
  return written + [card]


# What a checkpoint without a card (a converted reference one) is taken to be:
# the paper's setting.
UNCARDED_IMAGE_SIZE = 128
UNCARDED_PASSWORD_SCALE = 1.0


def image_size(card: dict | None) -> int:
  return card["image_size"] if card else UNCARDED_IMAGE_SIZE


def password_scale(card: dict | None) -> float:
  return float(card["password_scale"]) if card else UNCARDED_PASSWORD_SCALE


def card_for(checkpoint: str) -> dict | None:
  """The model card of a release, or of a training workdir (from its
  runs.jsonl), or None (a converted checkpoint carries no card)."""
  path = os.path.abspath(os.path.expanduser(checkpoint))
  if is_release(path):
    return load_card(path)
  # A workdir, its checkpoints/ folder or one step inside it.
  for candidate in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
    if os.path.isfile(os.path.join(candidate, "runs.jsonl")):
      step_dir = os.path.basename(path)
      step = int(step_dir) if step_dir.isdigit() else -1
      return card_of(recorded_config(candidate), step, "float32")
  return None


# Where a trained model installed with the package lives (a release
# directory); the notebooks use it when it is there.
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "generator")


def shipped_model() -> str | None:
  """The trained release installed with this package, or None where it ships none."""
  return SHIPPED if is_release(SHIPPED) else None


def is_release(path: str) -> bool:
  return os.path.isfile(os.path.join(path, CARD))


def load_card(path: str) -> dict:
  """The model card of a release directory."""
  card_path = os.path.join(path, CARD)
  try:
    with open(card_path) as f:
      card = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{card_path}: unreadable model card ({e})") from None
  if card.get("format") != FORMAT:
    raise ValueError(f"{card_path}: model card format {card.get('format')}, expected {FORMAT}")
  return card


def load(path: str) -> tuple[dict, dict]:
  """(card, {'params', 'batch_stats'}) of a release directory."""
  return load_card(path), compact_weights.load(os.path.join(path, WEIGHTS))
