"""Test configuration, applied before JAX initialises.

* 8 simulated CPU devices for sharding/equivalence tests (set once here, see
  ../shared/reference/jax_anchors.md §3.2).
* float32 stays the default; tests that compare against float64 NumPy references use the
  ``x64`` fixture (``jax.enable_x64(True)`` as a context) so library code is exercised in the
  dtype it runs in.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture
def x64():
    """Run the test body with 64-bit JAX types enabled."""
    with jax.enable_x64(True):
        yield
