"""Markdown table printing shared by the benchmark scripts."""

from __future__ import annotations


def print_markdown_table(rows: list[dict], *, ratio_keys: tuple[str, ...] = ()) -> None:
    """Print ``rows`` (dicts with the same keys) as a Markdown table.

    Floats print with 3 significant digits, or as ``1.23x`` for the keys in ``ratio_keys``.
    """
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        cells = []
        for k in keys:
            v = r[k]
            if isinstance(v, float):
                cells.append(f"{v:.2f}x" if k in ratio_keys else f"{v:.3g}")
            else:
                cells.append(str(v))
        print("| " + " | ".join(cells) + " |")
