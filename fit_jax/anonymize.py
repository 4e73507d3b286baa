"""python -m fit_jax.anonymize --checkpoint CKPT --password PW --out DIR INPUT...

See fit_jax.photo_cli for the options.
"""

from fit_jax import photo_cli


def run() -> None:  # the `fit-anonymize` console script
  photo_cli.main("anonymize")


if __name__ == "__main__":
  run()
