"""Deanonymizer of one classical baseline (paper §5.1): fit_jax's generator
trained to undo blur | noise | mask | superpixel | edge with the L1 and LSGAN
losses only (fit_jax/deanonymize.py).

Command (one per baseline; the suffix after ':' picks it):
  python -m fit_jax.deanonymize --config configs/deanonymize.py:blur \
      --workdir ~/runs/deanonymize/blur

Trains on the LFW subset's people who are not in its pairs file, so the
fold-1 evaluation (python -m fit_jax.evaluate) sees unseen faces. Point
data.root/landmarks at CASIA-WebFace (data.source=casia) for the paper's
training set.
"""

from configs import lfw_subset


def get_config(baseline: str = "blur"):
  config = lfw_subset.get_config()
  config.deanonymize = dict(
    # Which baseline's output the generator learns to invert.
    baseline=baseline
  )
  config.data.exclude_pairs = f"{lfw_subset.DATA}/lfw_subset/pairs.txt"
  config.data.num_workers = 0
  # The generator's password input is held at zero; the size is kept so the
  # deanonymizer loads with the same code as an identity transformer.
  config.model.norm_group_size = 0
  # Weight of the L1 reconstruction term against the LSGAN term: the
  # reference's lambda_G_recon for its own recovery (and pix2pix's 100).
  config.loss.lambda_recon = 100.0
  config.train.batch_size = 16
  config.train.num_steps = 2000
  config.train.log_every = 50
  return config
