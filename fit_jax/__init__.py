"""fit_jax: the face identity transformer in JAX/Flax.

The commands are the top-level modules (`python -m fit_jax.<command>`); the
library is in the subpackages. Importing fit_jax changes nothing.
"""
