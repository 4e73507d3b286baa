"""python -m fit_jax.recover --checkpoint CKPT --password PW --out DIR INPUT...

Give the same password as to fit_jax.anonymize; the inverse is applied here.
See fit_jax.photo_cli for the options.
"""

from fit_jax import photo_cli


def run() -> None:  # the `fit-recover` console script
  photo_cli.main("recover")


if __name__ == "__main__":
  run()
