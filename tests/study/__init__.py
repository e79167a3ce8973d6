"""Tests of entropylab.study (package: test module names differ from tests/train, tests/ops)."""
