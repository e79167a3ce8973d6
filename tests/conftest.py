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
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# study CLIs cache compiled programs in ~/.cache by default; the suite stays hermetic
os.environ.setdefault("ENTROPYLAB_COMPILE_CACHE", "off")

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


# The longest files (end-to-end smoke runs, every-objective trainer steps, multi-process tests)
# go first, so that under `pytest -n 2 --dist loadfile --no-loadscope-reorder` the two workers
# finish together instead of one of them starting a 2-minute file at the end. Order within a file
# is unchanged. (Without --no-loadscope-reorder, xdist re-sorts the files by their number of
# tests, which puts the one-test heavy files last.)
_HEAVY_FIRST = (
    "tests/studies/",
    "tests/rl/objectives_test.py",
    "tests/rl/trainer_test.py",
    "tests/rl/step_test.py",
    "tests/distributed_test.py",
    "tests/train/lm_pretrain_test.py",
    "tests/rl/decoding_test.py",
    "tests/rl/tree_sampling_test.py",
    "tests/bench/",
    "tests/notebooks/",
)


def pytest_configure(config):
    """One compilation cache for the whole run, shared by the xdist workers (they inherit the
    controller's environment): programs that several files compile identically (the smoke
    model's sampler, update and evaluation) compile once. A fresh temporary folder per run, so
    nothing carries over between runs; ``ENTROPYLAB_TEST_XLA_CACHE=off`` disables it."""
    d = os.environ.get("ENTROPYLAB_TEST_XLA_CACHE")
    if d is None and not hasattr(config, "workerinput"):
        d = tempfile.mkdtemp(prefix="entropylab-test-xla-")
        os.environ["ENTROPYLAB_TEST_XLA_CACHE"] = d
        config._entropylab_xla_cache = d
    if d and d != "off":
        from entropylab.runs import enable_compilation_cache

        enable_compilation_cache(d)


def pytest_unconfigure(config):
    d = getattr(config, "_entropylab_xla_cache", None)
    if d:
        shutil.rmtree(d, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        for i, prefix in enumerate(_HEAVY_FIRST):
            if item.nodeid.startswith(prefix):
                return i
        return len(_HEAVY_FIRST)

    items.sort(key=rank)
