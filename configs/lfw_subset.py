"""Real faces from a local LFW-layout folder ($FIT_DATA/lfw_subset).

Landmarks: data/lfw_subset_landmarks.txt, made by the landmark tool
  python -m fit_jax.landmarks --images $FIT_DATA/lfw_subset/lfw \
      --out data/lfw_subset_landmarks.txt
Labels are the identity folders' indices (982 identities). A stand-in for
CASIA-WebFace, which is not available offline. Command:
  python -m fit_jax.main --config configs/lfw_subset.py --workdir ~/runs/fit_lfw
"""

import os

from configs import default

# The folder holding lfw_subset/ (FIT_DATA, as the tests).
DATA = os.environ.get("FIT_DATA", "../shared/data")


def get_config():
  config = default.get_config()
  config.data.source = "lfw_folder"
  config.data.root = f"{DATA}/lfw_subset/lfw"
  config.data.landmarks = "data/lfw_subset_landmarks.txt"
  config.data.landmark_frame = 250.0
  # LFW has odd images: skip and count them rather than stop the run.
  config.data.on_bad_record = "skip"
  config.model.sphereface.num_classes = 982
  config.train.num_epochs = 30
  config.train.log_every = 20
  config.train.eval_every = 200
  config.train.checkpoint_every = 200
  return config
