"""Converts the authors' PyTorch checkpoints into fit_jax variables.

  python -m fit_jax.convert_torch --checkpoint C.pth.tar \
      [--sphereface S.pth] [--config configs/default.py] --out DIR

The conversion and its checks: fit_jax.conversion.convert_torch (torch, the
`convert` extra).
"""

import os

from absl import app, flags
from ml_collections import config_flags

from fit_jax.conversion import pretrained
from fit_jax.conversion.convert_torch import convert_checkpoint, convert_sphereface
from fit_jax.runtime import xla_cpu_flags

config_flag = config_flags.DEFINE_config_file(
  "config", "configs/default.py", "Config whose model the checkpoint matches."
)
ckpt = flags.DEFINE_string("checkpoint", None, "Reference checkpoint_*.pth.tar.")
sphere = flags.DEFINE_string("sphereface", None, "Bare sphere20a .pth.")
out = flags.DEFINE_string("out", None, "Output directory (orbax).")
flags.mark_flag_as_required("out")


def main(argv):
  del argv
  config = config_flag.value
  if not ckpt.value and not sphere.value:
    raise app.UsageError("give --checkpoint and/or --sphereface")
  variables = convert_checkpoint(ckpt.value, config) if ckpt.value else {}
  if sphere.value:
    variables["sphereface"] = convert_sphereface(sphere.value, config)
  pretrained.save_variables(out.value, variables)
  print(f"wrote {sorted(variables)} to {os.path.abspath(out.value)}")


def run() -> None:  # the console script
  xla_cpu_flags.apply()
  app.run(main)


if __name__ == "__main__":
  run()
