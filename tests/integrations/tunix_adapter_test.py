"""The tunix adapter's framework-free parts (main suite; ``tunix_test.py`` runs against tunix)."""

import subprocess
import sys

import pytest

from entropylab.integrations import tunix as el_tunix
from entropylab.ops.masked import AGG_MODES


def test_agg_table_is_explicit_and_raises_on_inexact_pairs():
    assert set(el_tunix.TUNIX_AGG_MODES) == {
        "token-mean",
        "sequence-mean-token-mean",
        "seq-mean-token-sum",
        "sequence-mean-token-sum-norm",
        "sequence-mean-token-scale",
    }
    for tunix_name, ours in el_tunix.TUNIX_AGG_MODES.items():
        if ours is None:
            with pytest.raises(ValueError, match="no exact"):
                el_tunix.tunix_agg_mode(tunix_name)
        else:
            assert ours in AGG_MODES and el_tunix.tunix_agg_mode(tunix_name) == ours
    # the trap: tunix's sequence-mean-token-sum-norm is NOT our same-looking name
    assert el_tunix.tunix_agg_mode("sequence-mean-token-sum-norm") == "seq-mean-token-sum"
    with pytest.raises(ValueError, match="unknown tunix"):
        el_tunix.tunix_agg_mode("seq-mean-token-sum-norm")


def test_importing_the_adapter_does_not_import_tunix():
    code = "import sys, entropylab.integrations.tunix; print('tunix' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out
