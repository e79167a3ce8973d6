"""Test configuration, applied before JAX initialises.

* 8 simulated CPU devices for sharding/equivalence tests (``--xla_force_host_platform_device_count``
  must be set before JAX initialises its backends, so it is set once here).
* float32 stays the default; tests that compare against float64 NumPy references use the
  ``x64`` fixture (``jax.enable_x64(True)`` as a context) so library code is exercised in the
  dtype it runs in.
* Hypothesis runs derandomized (the same examples on every run, so CI cannot flake on a new
  random draw); set ``ENTROPYLAB_HYPOTHESIS_RANDOM=1`` to explore fresh examples locally.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

settings.register_profile("entropylab", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("explore" if os.environ.get("ENTROPYLAB_HYPOTHESIS_RANDOM") else "entropylab")


@pytest.fixture
def x64():
    """Run the test body with 64-bit JAX types enabled."""
    with jax.enable_x64(True):
        yield
