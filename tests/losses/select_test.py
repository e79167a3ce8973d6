"""Integer-exact selection counts (``entropylab.losses._select.count_floor`` / ``count_ceil``).

These counts size the global top-k / random selections of Clip-Cov, KL-Cov and forking tokens.
The references are Python's exact integer arithmetic (``fractions.Fraction``), which shares
nothing with the uint32 long multiplication of the implementation.
"""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropylab.losses._select import count_ceil, count_floor


def test_counts_exact_at_1e7_and_2_30():
    # The float32 product 0.2·1e7 rounds below 2e6 (the old code returned 1,999,998).
    assert int(count_ceil(0.2, 1e7)) == 2_000_000
    assert int(count_floor(0.2, 1e7)) == 2_000_000
    assert int(count_ceil(0.2, 10**7)) == 2_000_000
    # 0.2 · 2^30 = 214748364.8 → floor 214748364, ceil 214748365 (float32 cannot hold either)
    assert int(count_floor(0.2, 2**30)) == 214_748_364
    assert int(count_ceil(0.2, 2**30)) == 214_748_365
    assert int(count_floor(2e-3, 2**30)) == 2_147_483  # 2^30 / 500 = 2147483.648
    assert int(count_ceil(2e-4, 2**31 - 1)) == 429_497  # (2^31 − 1) / 5000 = 429496.7294
    assert int(count_floor(1 / 3, 2**31 - 1)) == 715_827_882


@pytest.mark.parametrize("frac", [0.2, 2e-3, 2e-4, 0.8, 1e-5, 0.123456789, 1 / 3, 0.0, 1.0])
def test_counts_match_exact_integers_under_jit(frac):
    rng = np.random.default_rng(0)
    ns = np.concatenate(
        [[0, 1, 4, 5, 999, 10**7, 2**24 + 1, 2**30, 2**31 - 1], rng.integers(0, 2**31 - 1, 40)]
    )
    f = Fraction(repr(frac)) if Fraction(repr(frac)).denominator < 2**31 else Fraction(1, 3)
    want_floor = [n * f.numerator // f.denominator for n in ns.tolist()]
    want_ceil = [-((-n * f.numerator) // f.denominator) for n in ns.tolist()]
    fl = jax.jit(lambda n: count_floor(frac, n))(jnp.asarray(ns, jnp.int32))
    ce = jax.jit(lambda n: count_ceil(frac, n))(jnp.asarray(ns, jnp.int32))
    np.testing.assert_array_equal(np.asarray(fl, np.int64), want_floor)
    np.testing.assert_array_equal(np.asarray(ce, np.int64), want_ceil)
    # float counts (masked_count returns float32) that hold an integer exactly
    small = ns[ns < 2**24]
    fl32 = jax.jit(lambda n: count_floor(frac, n))(jnp.asarray(small, jnp.float32))
    np.testing.assert_array_equal(
        np.asarray(fl32, np.int64), [n * f.numerator // f.denominator for n in small.tolist()]
    )


def test_count_errors():
    with pytest.raises(ValueError, match="frac"):
        count_floor(1.5, 10)
    with pytest.raises(TypeError, match="frac"):
        jax.jit(lambda fr: count_ceil(fr, 10))(0.2)
