"""The suite's set-up (CPU, 8 fake devices, the real-face path) for the lab's tests."""

from tests.conftest import DATA, SHARED, golden  # noqa: F401  (importing it sets the environment)
