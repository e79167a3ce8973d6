"""Pin the git state the study harness records: other engineers commit to the shared tree while
these tests run, and a commit between two Runner calls would (correctly) refuse to mix shards."""

import pytest

from entropylab.study import provenance


@pytest.fixture(autouse=True)
def fixed_git(monkeypatch):
    monkeypatch.setattr(provenance, "git_info", lambda cwd=None: {"sha": "a" * 40, "dirty": False})
