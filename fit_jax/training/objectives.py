"""How each update step weighs its loss terms (docs/reference.md §7).

The steps in train.py compute the terms (network calls, per branch and
image); these functions combine them with `config.loss`'s weights, as the
reference does, and name every term for the metrics.
"""

from fit_jax.training import losses


def _negative(loss, lc):
  """A term the objective maximises (the recognizer's on R in D, on A and W
  in G), bounded as config.loss.negative_angle_bound says."""
  return losses.bounded_negative(loss, lc.negative_angle_bound)


def generator(lc, *, gan: dict, password_ce: dict, fr: dict, features: dict, l1: dict):
  """(loss, metrics) of the G step from its terms:
  gan {M, R, WR}, password_ce {anon, recon, wrong}, fr {anon, recon, wrong}
  (A-Softmax of the recognizer), features {anon, wrong, anon_wrong}
  (feature dissimilarities) and l1 {anon, wrong, recon} (against x)."""
  gan_loss = (
    lc.lambda_gan
    * (lc.lambda_gan_m * gan["M"] + lc.lambda_gan_recon * gan["R"] + lc.lambda_gan_wr * gan["WR"])
    / 3.0
  )
  q_loss = lc.lambda_dis * sum(password_ce.values())
  fr_loss = (
    lc.lambda_fr
    * (
      -lc.lambda_fr_m * _negative(fr["anon"], lc)
      + fr["recon"]
      - lc.lambda_fr_wr * _negative(fr["wrong"], lc)
    )
    / (lc.lambda_fr_m + 1.0 + lc.lambda_fr_wr)
  )
  feat_loss = (
    lc.lambda_feat * features["anon"]
    + lc.lambda_wr_feat * features["wrong"]
    + lc.lambda_false_recon_diff * features["anon_wrong"]
  )
  l1_loss = (
    lc.lambda_l1 * l1["anon"]
    + lc.lambda_rand_recon_l1 * l1["wrong"]
    + lc.lambda_g_recon * l1["recon"]
  )
  loss = gan_loss + q_loss + fr_loss + feat_loss + l1_loss
  metrics = {
    "g/loss": loss,
    "g/gan": gan_loss,
    "g/password": q_loss,
    "g/fr": fr_loss,
    "g/feat": feat_loss,
    "g/l1": l1_loss,
  }
  for name, terms in (
    ("gan", gan),
    ("password_ce", password_ce),
    ("fr", fr),
    ("feat", features),
    ("l1", l1),
  ):
    metrics.update({f"g/{name}_{k}": v for k, v in terms.items()})
  return loss, metrics


def discriminator(lc, *, fr: dict, fake: dict, real: dict):
  """(loss, metrics) of the D step from its terms: fr {anon, recon, wrong,
  real} (A-Softmax of the recognizer) and the LSGAN terms of each branch's
  fakes and reals (fake, real: {M, R, WR})."""
  fr_loss = (
    lc.lambda_fr
    * 0.5
    * (
      fr["real"]
      + (lc.lambda_fr_m * fr["anon"] - _negative(fr["recon"], lc) + lc.lambda_fr_wr * fr["wrong"])
      / (1.0 + lc.lambda_fr_m + lc.lambda_fr_wr)
    )
  )
  gan_loss = lc.lambda_gan * 0.5 * (sum(fake.values()) / 3.0 + sum(real.values()) / 3.0)
  loss = fr_loss + gan_loss
  metrics = {"d/loss": loss, "d/fr": fr_loss, "d/gan": gan_loss}
  metrics.update({f"d/fr_{k}": v for k, v in fr.items()})
  metrics.update({f"d/gan_fake_{k}": v for k, v in fake.items()})
  metrics.update({f"d/gan_real_{k}": v for k, v in real.items()})
  return loss, metrics
