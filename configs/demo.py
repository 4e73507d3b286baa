"""The embedded default: small nets on synthetic faces, ~5 minutes on 2 CPU cores.

Needs no data: faces are drawn by fit_jax.data.input_pipeline.SyntheticFaces.
Command (what `make demo` runs):
  python -m fit_jax.main --config configs/demo.py --workdir /tmp/fit_jax_demo
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = "synthetic"
  config.data.root = ""
  # 64x64 faces drawn in a 250x250 frame (landmarks stay in that frame).
  config.data.image_size = 64
  config.data.num_workers = 0
  config.model.norm_group_size = 0
  config.model.generator.ngf = 16
  config.model.generator.num_blocks = 3
  config.model.discriminator.ndf = 16
  config.model.password_head.ndf = 16
  config.model.sphereface.num_classes = 50
  config.model.sphereface.width = 8
  config.loss.pool_size = 50
  config.optim.g.learning_rate = 2e-4
  config.optim.g.password_head_learning_rate = 2e-4
  config.train.batch_size = 8
  config.train.num_steps = 300
  config.train.log_every = 25
  config.train.eval_every = 100
  config.train.checkpoint_every = 100
  config.train.num_samples = 4
  return config
