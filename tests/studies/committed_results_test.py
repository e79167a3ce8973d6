"""Every committed study result stays analysable by the current code.

``analyse`` refuses a run directory whose ``study.json`` config hash differs from the spec it is
asked to analyse ("analyse the spec that ran"), so a change of a config class that shifts the
hash of a committed study (a new field without ``runs.added_field``, a changed default, a
renamed arm) would orphan results that took hours to produce. This fails first.
"""

import importlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = sorted(ROOT.glob("experiments/*/results/*/study.json"))


def test_there_are_committed_studies():
    assert len(COMMITTED) >= 4, COMMITTED  # EM full + pilot, Entropy-ABF quick, EGA quick


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parts[-4]}/{p.parts[-2]}")
def test_committed_study_config_hash_equals_the_current_spec(path):
    study, preset = path.parts[-4], path.parent.name
    mod = importlib.import_module(f"experiments.{study}.study")
    ran = json.loads(path.read_text())
    spec = mod.build_spec(preset)
    assert ran["study"] == spec.name
    assert ran["config_hash"] == spec.config_hash(), (study, preset)
    assert ran["jobs"] == [j.label for j in spec.jobs()], (study, preset)
