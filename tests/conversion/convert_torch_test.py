"""Converter: reference layout, numerical parity with the original, errors."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from configs import default  # noqa: E402
from fit_jax import models as models_lib  # noqa: E402
from fit_jax.conversion import convert_torch, pretrained  # noqa: E402
from fit_jax.training import initial_weights, losses, train_state  # noqa: E402

from ..conftest import SHARED  # noqa: E402
from . import torch_reference as ref  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


def small_config():
  config = default.get_config()
  config.model.generator.ngf = 8
  config.model.generator.num_blocks = 2
  config.model.discriminator.ndf = 8
  config.model.password_head.ndf = 8
  config.model.sphereface.width = 4
  config.model.sphereface.num_classes = 10
  config.loss.pool_size = 2
  return config


def torch_nets(config, seed=0):
  m = config.model
  return {
    "G": ref.init_like_reference(
      ref.ResnetGenerator(
        3 + m.password_bits, m.generator.ngf, m.generator.num_blocks, m.generator.num_downsampling
      ),
      seed,
    ),
    "D": ref.init_like_reference(
      ref.MultiscaleDiscriminatorSharedFE(m.discriminator.ndf), seed + 1
    ),
    "Q": ref.init_like_reference(
      ref.MultiClassifier(m.password_head.ndf, m.password_bits // 4), seed + 2
    ),
    "FR": ref.sphere_init(ref.Sphere20a(m.sphereface.num_classes, m.sphereface.width), seed + 3),
  }


def save_reference_checkpoint(path, nets):
  torch.save(
    {
      "epoch": 3,
      "iter": 1200,
      **{f"state_dict_{k}": v.state_dict() for k, v in nets.items()},
      "optimizer_G": torch.optim.Adam(
        list(nets["G"].parameters()) + list(nets["Q"].parameters())
      ).state_dict(),
      "optimizer_D": torch.optim.Adam(
        list(nets["D"].parameters()) + list(nets["FR"].parameters())
      ).state_dict(),
    },
    path,
  )


def test_torch_reference_matches_the_checkpoint_layout():
  path = SHARED / "reference_checkpoint_layout.json"
  if not path.exists():
    pytest.skip(f"the authors' checkpoint layout not found at {path}")
  layout = json.loads(path.read_text())
  nets = torch_nets(default.get_config())
  for name, net in nets.items():
    got = [[k, list(v.shape)] for k, v in net.state_dict().items()]
    assert got == layout[f"state_dict_{name}"], name


def _nchw(x):
  return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("size", ["small", "paper"])
def test_numerical_parity(tmp_path, size):
  config = small_config() if size == "small" else default.get_config()
  # Parity in the reference's own mode: batch statistics, no running stats.
  config.model.norm = "batch_stats"
  nets = torch_nets(config)
  path = tmp_path / "checkpoint_3_iter1200.pth.tar"
  save_reference_checkpoint(path, nets)
  variables = convert_torch.convert_checkpoint(str(path), config)
  models = models_lib.build_models(config.model)
  rng = np.random.default_rng(0)
  b, n = 4, config.model.password_bits
  x = rng.uniform(-1, 1, (b, 128, 128, 3)).astype(np.float32)
  y = rng.uniform(-1, 1, (b, 128, 128, 3)).astype(np.float32)
  z = (rng.integers(0, 2, (b, n)) - 0.5).astype(np.float32)
  crops = rng.uniform(-1, 1, (b, 112, 96, 3)).astype(np.float32)
  report = {}
  with torch.no_grad():
    g_ref = _nhwc(nets["G"].train()(_nchw(x), torch.from_numpy(z)))
    g_jax = models.generator.apply(variables["generator"], x, z, train=True)
    report["G"] = np.abs(g_jax - g_ref).max()
    for branch in models_lib.BRANCHES:
      fine_ref, coarse_ref = nets["D"].train()(_nchw(x), branch)
      fine, coarse = models.discriminator.apply(
        variables["discriminator"], x, branch=branch, train=True
      )
      report[f"D_{branch}_fine"] = np.abs(fine - _nhwc(fine_ref)).max()
      report[f"D_{branch}_coarse"] = np.abs(coarse - _nhwc(coarse_ref)).max()
    q_ref = np.stack([h.numpy() for h in nets["Q"].train()(_nchw(x), _nchw(y))], 1)
    q_jax = models.password_head.apply(variables["password_head"], x, y, train=True)
    report["Q"] = np.abs(q_jax - q_ref).max()
    (cos_ref, phi_ref), feat_ref = nets["FR"](_nchw(crops))
    (cos, phi), feat = models.sphereface.apply(variables["sphereface"], crops)
    report["FR_fc5"] = np.abs(feat - feat_ref.numpy()).max()
    report["FR_cos"] = np.abs(cos - cos_ref.numpy()).max()
    report["FR_phi"] = np.abs(phi - phi_ref.numpy()).max()
  print(size, {k: float(v) for k, v in report.items()})
  assert max(report.values()) < 1e-4, report
  assert float(np.std(g_ref)) > 0.05 and float(np.std(feat_ref.numpy())) > 0.05  # not degenerate


def test_loss_terms_match_torch():
  rng = np.random.default_rng(1)
  cos = rng.normal(0, 3, (6, 10)).astype(np.float32)
  phi = (cos - np.abs(rng.normal(0, 2, (6, 10)))).astype(np.float32)
  labels = rng.integers(0, 10, 6)
  for it in (1, 50, 3000):
    want = ref.angle_loss(
      torch.from_numpy(cos), torch.from_numpy(phi), torch.from_numpy(labels), it
    )
    got = losses.angle_softmax(cos, phi, labels, it)
    np.testing.assert_allclose(got, want.item(), rtol=1e-5)
  maps = [
    rng.normal(size=(6, 14, 14, 1)).astype(np.float32),
    rng.normal(size=(6, 6, 6, 1)).astype(np.float32),
  ]
  for real in (True, False):
    want = ref.lsgan([torch.from_numpy(m) for m in maps], real)
    np.testing.assert_allclose(losses.lsgan(maps, 1.0 if real else 0.0), want.item(), rtol=1e-5)
  a, b = rng.normal(size=(6, 512)).astype(np.float32), rng.normal(size=(6, 512)).astype(np.float32)
  b[:3] = a[:3] + 0.1 * b[:3]  # some positive cosines
  want = torch.nn.CosineEmbeddingLoss()(torch.from_numpy(a), torch.from_numpy(b), -torch.ones(6))
  np.testing.assert_allclose(losses.feature_dissimilarity(a, b), want.item(), rtol=1e-5)
  logits = rng.normal(size=(6, 4, 16)).astype(np.float32)
  targets = rng.integers(0, 16, (6, 4))
  want = sum(
    torch.nn.functional.cross_entropy(
      torch.from_numpy(logits[:, k]), torch.from_numpy(targets[:, k])
    )
    for k in range(4)
  )
  np.testing.assert_allclose(losses.password_cross_entropy(logits, targets), want.item(), rtol=1e-5)
  want = torch.nn.functional.l1_loss(torch.from_numpy(a), torch.from_numpy(b))
  np.testing.assert_allclose(losses.l1(a, b), want.item(), rtol=1e-5)


def test_strict_validation(tmp_path):
  config = small_config()
  nets = torch_nets(config)
  good = {f"state_dict_{k}": v.state_dict() for k, v in nets.items()}

  def convert(obj, cfg=config):
    path = tmp_path / "c.pth.tar"
    torch.save(obj, path)
    return convert_torch.convert_checkpoint(str(path), cfg)

  broken = {k: dict(v) for k, v in good.items()}
  del broken["state_dict_D"]["layer1_R.3.weight"]
  broken["state_dict_D"]["layer1_X.0.weight"] = torch.zeros(1)
  broken["state_dict_D"]["FE.0.bias"] = torch.zeros(5)
  with pytest.raises(convert_torch.ConversionError) as err:
    convert(broken)
  message = str(err.value)
  assert "state_dict_D" in message and "layer1_R.3.weight" in message
  assert "layer1_X.0.weight" in message and "FE.0.bias: (5,)" in message
  other = small_config()
  other.model.password_bits = 32
  with pytest.raises(
    convert_torch.ConversionError, match="16-bit passwords but config.model.password_bits=32"
  ):
    convert(good, other)
  other = small_config()
  other.model.sphereface.num_classes = 7
  with pytest.raises(convert_torch.ConversionError, match="10 classes"):
    convert(good, other)
  with pytest.raises(convert_torch.ConversionError, match="lacks \\['state_dict_Q'\\]"):
    convert({k: v for k, v in good.items() if k != "state_dict_Q"})
  junk = tmp_path / "junk.pth"
  junk.write_bytes(b"\x00not a checkpoint" * 10)
  with pytest.raises(convert_torch.ConversionError, match="not a readable PyTorch checkpoint"):
    convert_torch.convert_checkpoint(str(junk), config)


def test_cli_output_initialises_training(tmp_path):
  config = small_config()
  nets = torch_nets(config)
  ckpt = tmp_path / "checkpoint_1_iter10.pth.tar"
  save_reference_checkpoint(ckpt, nets)
  sphere = tmp_path / "sphere.pth"
  torch.save(ref.sphere_init(ref.Sphere20a(10, 4), 9).state_dict(), sphere)
  out = tmp_path / "converted"
  command = [
    sys.executable,
    "-m",
    "fit_jax.convert_torch",
    f"--checkpoint={ckpt}",
    f"--sphereface={sphere}",
    f"--out={out}",
    "--config=configs/default.py",
    "--config.model.generator.ngf=8",
    "--config.model.generator.num_blocks=2",
    "--config.model.discriminator.ndf=8",
    "--config.model.password_head.ndf=8",
    "--config.model.sphereface.width=4",
    "--config.model.sphereface.num_classes=10",
  ]
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "wrote" in done.stdout
  loaded = pretrained.load_variables(str(out))
  assert sorted(loaded) == ["discriminator", "generator", "password_head", "sphereface"]
  # The bare --sphereface file wins over the checkpoint's FR.
  np.testing.assert_allclose(
    loaded["sphereface"]["params"]["fc6"]["weight"], torch.load(sphere)["fc6.weight"].numpy()
  )
  config.train.init_from = str(out)
  models = models_lib.build_models(config.model)
  state = train_state.create_train_state(
    config,
    models,
    jax.random.PRNGKey(0),
    train_state.make_mesh(jax.devices()[:1]),
    initial_weights.initial_overrides(config),
  )
  np.testing.assert_array_equal(
    state.gen.params["generator"]["conv_out"]["bias"], nets["G"].model[-2].bias.detach().numpy()
  )
  # And a .pth given as config.model.sphereface.pretrained is converted on load.
  config.train.init_from = ""
  config.model.sphereface.pretrained = str(sphere)
  over = initial_weights.initial_overrides(config)
  assert jnp.allclose(
    over["sphereface"]["params"]["fc5"]["bias"], torch.load(sphere)["fc5.bias"].numpy()
  )
  with pytest.raises(FileExistsError):
    pretrained.save_variables(str(out), loaded)


def test_bare_sphere20a_converts_without_a_config(tmp_path):
  """A sphere20a .pth (as the evaluation's --sphereface takes) converts with
  sphere20a's own sizes, its classes read from fc6: no config needed."""
  sphere = tmp_path / "sphere20a.pth"
  torch.save(ref.sphere_init(ref.Sphere20a(7, 64), 5).state_dict(), sphere)
  params = convert_torch.convert_sphereface(str(sphere))["params"]
  np.testing.assert_array_equal(params["fc6"]["weight"], torch.load(sphere)["fc6.weight"].numpy())
  assert params["fc5"]["kernel"].shape == (512 * 7 * 6, 512)
  torch.save({"conv1_1.weight": torch.zeros(1)}, tmp_path / "headless.pth")
  with pytest.raises(convert_torch.ConversionError, match="no fc6.weight"):
    convert_torch.convert_sphereface(str(tmp_path / "headless.pth"))
