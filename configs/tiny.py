"""Smoke-test setting for the test suite: tiny nets, 64x64 synthetic faces.

Command:
  python -m fit_jax.main --config configs/tiny.py --workdir /tmp/fit_tiny
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = "synthetic"
  config.data.root = ""
  config.data.image_size = 64
  config.data.num_workers = 0
  config.model.norm_group_size = 0
  config.model.generator.ngf = 8
  config.model.generator.num_blocks = 2
  config.model.discriminator.ndf = 8
  config.model.password_head.ndf = 8
  config.model.sphereface.num_classes = 10
  config.model.sphereface.width = 4
  config.loss.pool_size = 6
  config.train.batch_size = 8
  config.train.num_steps = 2
  config.train.log_every = 1
  config.train.eval_every = 2
  config.train.checkpoint_every = 2
  config.train.num_samples = 2
  return config
