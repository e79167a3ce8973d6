"""The README section "Using the losses in your own JAX project" runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Using the losses in your own JAX project"


def _code_blocks() -> list[str]:
    text = README.read_text()
    assert SECTION in text, f"README section {SECTION!r} is missing"
    body = text.split(SECTION, 1)[1]
    body = re.split(r"^## ", body, maxsplit=1, flags=re.M)[0]
    return re.findall(r"^```python\n(.*?)^```", body, flags=re.S | re.M)


def test_readme_losses_example_runs():
    blocks = _code_blocks()
    assert blocks, "no python code block in the README losses section"
    namespace: dict = {"__name__": "__readme__"}
    for code in blocks:
        exec(compile(code, f"{README}:losses-example", "exec"), namespace)
    assert float(namespace["loss"]) == float(namespace["loss"])  # ran to the end, not NaN
    assert "pg/clipfrac" in namespace["metrics"] and "kl/low_var_kl" in namespace["metrics"]
