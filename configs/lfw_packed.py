"""configs/lfw.py trained from a pack, on a machine without the LFW folders.

What a lent accelerator runs (benchmarks/gpu_train.sh): the faces and
FaceNet's weights come from `python -m fit_jax.pack --config configs/lfw.py
--out .gpu_pack` (64 px faces as JPEG, FaceNet in int8; 55 MiB), and nothing
needs grain, clu or TensorFlow. The run stops itself at
train.time_budget_s, compiles included, with a final checkpoint and grid.
Command:
  python -m fit_jax.main --config configs/lfw_packed.py --workdir /tmp/fit_lfw
"""

from configs import lfw

PACK = ".gpu_pack"


def get_config():
  config = lfw.get_config()
  config.data.source = "packed"
  config.data.root = f"{PACK}/faces.npz"
  config.data.landmarks = ""
  # Packed faces are decoded once into memory; batches are array slices.
  config.data.num_workers = 0
  config.model.facenet.pretrained = f"{PACK}/facenet.int8.npz"
  # Twice the paper's 48: at 64 px a step costs little more at 96, and a
  # few minutes of training want every image they can get.
  config.train.batch_size = 96
  config.train.num_steps = 100_000
  config.train.time_budget_s = 450.0
  config.train.tensorboard = False
  # A lent machine starts bare: a persistent cache would only cost writes.
  config.train.compilation_cache = ""
  config.train.log_every = 50
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  return config
