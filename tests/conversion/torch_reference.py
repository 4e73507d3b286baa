"""The original PyTorch networks and losses, written for the parity tests.

Module structure, attribute names and Sequential indices reproduce the state
dict layout of the authors' checkpoints exactly (checked, where the layout file
reference_checkpoint_layout.json sits beside the repository, by
convert_torch_test), so their random state_dicts stand in for real
checkpoints of the original code. Test helper only; torch is imported here.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


def _bn(c):
  return nn.BatchNorm2d(c, affine=True, track_running_stats=False)


class ResnetBlock(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.conv_block = nn.Sequential(
      nn.ReflectionPad2d(1),
      nn.Conv2d(dim, dim, 3, bias=False),
      _bn(dim),
      nn.ReLU(True),
      nn.ReflectionPad2d(1),
      nn.Conv2d(dim, dim, 3, bias=False),
      _bn(dim),
    )

  def forward(self, x):
    return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
  def __init__(self, input_nc=19, ngf=64, n_blocks=9, n_down=2):
    super().__init__()
    model = [
      nn.ReflectionPad2d(3),
      nn.Conv2d(input_nc, ngf, 7, bias=False),
      _bn(ngf),
      nn.ReLU(True),
    ]
    for i in range(n_down):
      m = 2**i
      model += [
        nn.ReflectionPad2d(1),
        nn.Conv2d(ngf * m, ngf * m * 2, 3, stride=2, bias=False),
        _bn(ngf * m * 2),
        nn.ReLU(True),
      ]
    m = 2**n_down
    model += [ResnetBlock(ngf * m) for _ in range(n_blocks)]
    for i in range(n_down):
      m = 2 ** (n_down - i)
      model += [
        nn.Upsample(scale_factor=2),
        nn.ReflectionPad2d(1),
        nn.Conv2d(ngf * m, ngf * m // 2, 3),
        _bn(ngf * m // 2),
        nn.ReLU(True),
      ]
    model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
    self.model = nn.Sequential(*model)

  def forward(self, x, z):
    z = z[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
    return self.model(torch.cat([x, z], 1))


def _nlayer(input_nc, ndf=64, n_layers=3):
  seq = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
  mult = 1
  for n in range(1, n_layers):
    prev, mult = mult, min(2**n, 8)
    seq += [
      nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False),
      _bn(ndf * mult),
      nn.LeakyReLU(0.2, True),
    ]
  prev, mult = mult, min(2**n_layers, 8)
  seq += [
    nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False),
    _bn(ndf * mult),
    nn.LeakyReLU(0.2, True),
  ]
  seq += [nn.Conv2d(ndf * mult, 1, 4, 1, 1, bias=False)]
  return nn.Sequential(*seq)


class MultiscaleDiscriminatorSharedFE(nn.Module):
  def __init__(self, ndf=64):
    super().__init__()
    self.FE = _nlayer(3, ndf)
    self.layer1_M = _nlayer(3, ndf)
    self.layer1_R = _nlayer(3, ndf)
    self.layer1_WR = _nlayer(3, ndf)
    self.down = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

  def forward(self, x, name):
    return [getattr(self, f"layer1_{name}")(x), self.FE(self.down(x))]


class NLayerFrontEnd(nn.Module):
  def __init__(self, ndf=64):
    super().__init__()
    self.model = nn.Sequential(
      nn.Conv2d(6, ndf, 4, 2, 1),
      nn.LeakyReLU(0.2, True),
      nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
      _bn(ndf * 2),
      nn.LeakyReLU(0.2, True),
      nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
      _bn(ndf * 4),
      nn.LeakyReLU(0.2, True),
    )

  def forward(self, x):
    return self.model(x)


class MultiClassifierAfterFE(nn.Module):
  def __init__(self, ndf=64, heads=4):
    super().__init__()
    self.model = nn.Sequential(
      nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),
      _bn(ndf * 8),
      nn.LeakyReLU(0.2, True),
      nn.Conv2d(ndf * 8, ndf * 8, 4, 4, 0, bias=False),
      _bn(ndf * 8),
      nn.LeakyReLU(0.2, True),
      nn.AvgPool2d(2),
    )
    self.fc_list = nn.Module()
    for k in range(heads):
      setattr(self.fc_list, f"fc_{k}", nn.Linear(ndf * 8, 16))
    self.heads = heads

  def forward(self, x):
    x = self.model(x).flatten(1)
    return [getattr(self.fc_list, f"fc_{k}")(x) for k in range(self.heads)]


class MultiClassifier(nn.Module):
  def __init__(self, ndf=64, heads=4):
    super().__init__()
    self.FE = NLayerFrontEnd(ndf)
    self.classifiers = MultiClassifierAfterFE(ndf, heads)

  def forward(self, a, b):
    return self.classifiers(self.FE(torch.cat([a, b], 1)))


class AngleLinear(nn.Module):
  """clcarwin's AngleLinear (m=4)."""

  def __init__(self, in_features, out_features):
    super().__init__()
    self.weight = nn.Parameter(torch.Tensor(in_features, out_features))
    self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

  def forward(self, x):
    ww = self.weight.renorm(2, 1, 1e-5).mul(1e5)
    xlen = x.pow(2).sum(1).pow(0.5)
    wlen = ww.pow(2).sum(0).pow(0.5)
    cos_theta = x.mm(ww) / xlen.view(-1, 1) / wlen.view(1, -1)
    cos_theta = cos_theta.clamp(-1, 1)
    cos_m_theta = 8 * cos_theta**4 - 8 * cos_theta**2 + 1
    theta = cos_theta.data.acos()
    k = (4 * theta / 3.14159265).floor()
    n_one = k * 0.0 - 1
    phi_theta = (n_one**k) * cos_m_theta - 2 * k
    return cos_theta * xlen.view(-1, 1), phi_theta * xlen.view(-1, 1)


class Sphere20a(nn.Module):
  def __init__(self, classnum=10574, width=64):
    super().__init__()
    w = [3, width, width * 2, width * 4, width * 8]
    for stage, units in enumerate((1, 2, 4, 1), start=1):
      for i in range(1, 2 * units + 2):
        cin = w[stage - 1] if i == 1 else w[stage]
        setattr(self, f"conv{stage}_{i}", nn.Conv2d(cin, w[stage], 3, 2 if i == 1 else 1, 1))
        setattr(self, f"relu{stage}_{i}", nn.PReLU(w[stage]))
    self.fc5 = nn.Linear(w[4] * 7 * 6, 512)
    self.fc6 = AngleLinear(512, classnum)
    self.units = (1, 2, 4, 1)

  def forward(self, x):
    for stage, units in enumerate(self.units, start=1):
      x = getattr(self, f"relu{stage}_1")(getattr(self, f"conv{stage}_1")(x))
      for u in range(units):
        a, b = 2 * u + 2, 2 * u + 3
        y = getattr(self, f"relu{stage}_{a}")(getattr(self, f"conv{stage}_{a}")(x))
        x = x + getattr(self, f"relu{stage}_{b}")(getattr(self, f"conv{stage}_{b}")(y))
    feat = self.fc5(x.flatten(1))
    return self.fc6(feat), feat


def angle_loss(cos, phi, target, it):
  """clcarwin's AngleLoss.forward (gamma=0) at counter value `it`."""
  lamb = max(5.0, 1500.0 / (1 + 0.1 * it))
  index = F.one_hot(target, cos.shape[1]).bool()
  output = cos * 1.0
  output[index] -= cos[index] / (1 + lamb)
  output[index] += phi[index] / (1 + lamb)
  logpt = F.log_softmax(output, 1).gather(1, target.view(-1, 1)).view(-1)
  return -logpt.mean()


def lsgan(outputs, real):
  return sum(F.mse_loss(o, torch.full_like(o, 1.0 if real else 0.0)) for o in outputs)


def init_like_reference(module, seed):
  """init_weights('normal', 0.02) of the original, plus random BN affine."""
  g = torch.Generator().manual_seed(seed)
  for m in module.modules():
    if isinstance(m, (nn.Conv2d, nn.Linear)):
      m.weight.data.normal_(0, 0.02, generator=g)
      if m.bias is not None:
        m.bias.data.normal_(0, 0.02, generator=g)
    elif isinstance(m, nn.BatchNorm2d):
      m.weight.data.normal_(1, 0.02, generator=g)
      m.bias.data.normal_(0, 0.02, generator=g)
    elif isinstance(m, nn.PReLU):
      m.weight.data.uniform_(0.1, 0.4, generator=g)
  return module


def sphere_init(module, seed):
  """Random sphere20a weights scaled so activations stay O(1) over 20 layers."""
  g = torch.Generator().manual_seed(seed)
  for m in module.modules():
    if isinstance(m, (nn.Conv2d, nn.Linear)):
      fan_in = m.weight[0].numel()
      m.weight.data.normal_(0, 1 / math.sqrt(fan_in), generator=g)
      m.bias.data.normal_(0, 0.05, generator=g)
    elif isinstance(m, nn.PReLU):
      m.weight.data.uniform_(0.1, 0.4, generator=g)
  return module
