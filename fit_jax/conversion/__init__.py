"""The authors' PyTorch checkpoints and FaceNet's graph as fit_jax variables,
and the pretrained weights a run starts from."""
