"""Figures of the entropy-guided attention study from a results directory.

Each function takes the study's output directory (``--out`` of ``study.py``, e.g.
``experiments/entropy_guided_attention/results/quick``) and returns a matplotlib ``Figure``;
nothing here sets a backend or saves a file. The arrays come from the per-job
``attn_entropy.npz`` files (``study.entropy_arrays`` lists them) and the per-step logs, so the
figures work on a run that ``analyse`` has not seen yet.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from entropylab.study.metrics import read_records

ARRAYS = ("row_entropy", "head_entropy", "head_entropy_norm", "buckets", "buckets_rel")
BUCKET_LABELS = ("collapse [0, ¼)", "[¼, ½)", "[½, ¾)", "overload [¾, 1]")


def _job_dirs(out) -> dict[str, list[Path]]:
    out = Path(out)
    if not (out / "jobs").is_dir():
        raise FileNotFoundError(f"{out} has no jobs/ folder: not a study output directory")
    found: dict[str, list[Path]] = {}
    for res in sorted((out / "jobs").glob("*/init*/seed*/result.json")):
        found.setdefault(res.parent.parent.parent.name, []).append(res.parent)
    if not found:
        raise FileNotFoundError(f"no finished job (result.json) under {out}/jobs")
    return found


def arm_names(out) -> list[str]:
    """Arms with finished jobs, in the study's order (``study.json``) when known."""
    found = _job_dirs(out)
    order = []
    study = Path(out) / "study.json"
    if study.exists():
        order = [a for a in json.loads(study.read_text())["arms"] if a in found]
    return order + sorted(a for a in found if a not in order)


def load_entropy(out) -> dict[str, dict[str, np.ndarray]]:
    """``{arm: {array: mean over seeds}}`` for the arrays in :data:`ARRAYS`, plus ``n_seeds``."""
    res = {}
    dirs = _job_dirs(out)
    for a in arm_names(out):
        zs = [np.load(d / "attn_entropy.npz") for d in dirs[a]]
        res[a] = {k: np.mean([z[k] for z in zs], axis=0) for k in ARRAYS}
        res[a]["n_seeds"] = np.asarray(len(zs))
    return res


def load_results(out) -> dict[str, list[dict]]:
    """``{arm: [result dict of each seed]}`` (the job function's final numbers)."""
    dirs = _job_dirs(out)
    return {a: [json.loads((d / "result.json").read_text())["result"] for d in dirs[a]]
            for a in arm_names(out)}  # fmt: skip


def _pick(out, sel):
    have = arm_names(out)
    if sel is None:
        return have
    missing = [a for a in sel if a not in have]
    if missing:
        raise ValueError(f"arms {missing} have no finished job in {out}; have {have}")
    return list(sel)


def heatmaps(out, arms=None, *, normalised: bool = True):
    """Per-layer × per-head attention entropy, one panel per arm (seed mean).

    ``normalised``: H/ln n in [0, 1] (``head_entropy_norm``); else raw nats (``head_entropy``).
    """
    import matplotlib.pyplot as plt

    data = load_entropy(out)
    sel = _pick(out, arms)
    key = "head_entropy_norm" if normalised else "head_entropy"
    vmax = 1.0 if normalised else max(float(np.max(data[a][key])) for a in sel)
    fig, axes = plt.subplots(1, len(sel), figsize=(2.4 * len(sel) + 1, 3), squeeze=False)
    for ax, a in zip(axes[0], sel):
        m = data[a][key]
        im = ax.imshow(m, vmin=0.0, vmax=vmax, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
        ax.set(title=a, xlabel="head", ylabel="layer" if ax is axes[0][0] else None)
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
    fig.colorbar(im, ax=axes[0].tolist(), label="H / ln n" if normalised else "H (nats)")
    return fig


def bucket_bars(out, arms=None, *, relative: bool = False):
    """Fraction of heads per entropy quarter, per layer (stacked bars), one panel per arm.

    ``relative``: the paper's quarters of the maximum observed head entropy (``buckets_rel``)
    instead of quarters of ln n (``buckets``).
    """
    import matplotlib.pyplot as plt

    data = load_entropy(out)
    sel = _pick(out, arms)
    key = "buckets_rel" if relative else "buckets"
    fig, axes = plt.subplots(1, len(sel), figsize=(2.4 * len(sel) + 1, 3), squeeze=False,
                             sharey=True)  # fmt: skip
    colors = ("tab:blue", "tab:gray", "silver", "tab:red")
    for ax, a in zip(axes[0], sel):
        b = data[a][key]
        bottom = np.zeros(b.shape[0])
        for k in range(4):
            ax.bar(range(b.shape[0]), b[:, k], bottom=bottom, color=colors[k],
                   label=BUCKET_LABELS[k])  # fmt: skip
            bottom += b[:, k]
        ax.set(title=a, xlabel="layer", ylim=(0, 1))
        ax.set_xticks(range(b.shape[0]))
    axes[0][0].set_ylabel("fraction of heads")
    axes[0][-1].legend(fontsize=6, loc="upper right")
    return fig


def entropy_vs_position(out, arm: str, layer: int | None = None):
    """Row entropy against query position for each head (seed mean), with the uniform ln(t+1).

    One panel per layer (or only ``layer``).
    """
    import matplotlib.pyplot as plt

    r = load_entropy(out)[_pick(out, [arm])[0]]["row_entropy"]
    layers = range(r.shape[0]) if layer is None else [layer]
    fig, axes = plt.subplots(1, len(layers), figsize=(3 * len(layers), 2.8), squeeze=False,
                             sharey=True)  # fmt: skip
    t = np.arange(r.shape[-1])
    for ax, ly in zip(axes[0], layers):
        for h in range(r.shape[1]):
            ax.plot(t, r[ly, h], lw=1, label=f"head {h}")
        ax.plot(t, np.log(t + 1.0), "k--", lw=0.8, label="ln(t+1)")
        ax.set(title=f"{arm} layer {ly}", xlabel="query position t")
    axes[0][0].set_ylabel("attention entropy (nats)")
    axes[0][-1].legend(fontsize=6)
    return fig


def training_curves(out, key: str = "train/loss", arms=None):
    """A per-step logged ``key`` against step: one colour per arm, one line per seed."""
    import matplotlib.pyplot as plt

    dirs = _job_dirs(out)
    sel = _pick(out, arms)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for c, a in enumerate(sel):
        for d in dirs[a]:
            recs = [r for r in read_records(d / "metrics.jsonl") if key in r]
            if not recs:
                continue
            v = np.array([np.nan if r[key] is None else r[key] for r in recs], np.float64)
            ax.plot([r["step"] for r in recs], v, color=f"C{c}", lw=0.8, alpha=0.6)
        ax.plot([], [], color=f"C{c}", label=a)
    ax.set(xlabel="step", ylabel=key)
    ax.legend(fontsize=7)
    return fig


def perplexity_bars(out):
    """Final held-out perplexity per arm (mean ± sd over seeds), nonlinear ops on the bars."""
    import matplotlib.pyplot as plt

    res = load_results(out)
    names = list(res)
    ppl = [np.array([r["eval/ppl"] for r in res[a]], np.float64) for a in names]
    mean = [float(np.mean(p)) for p in ppl]
    sd = [float(np.std(p, ddof=1)) if p.size > 1 else 0.0 for p in ppl]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.2))
    ax.bar(range(len(names)), mean, yerr=sd, color="tab:blue", capsize=3)
    for i, a in enumerate(names):
        ops = res[a][0]["nonlinear_ops"]["total"]
        if math.isfinite(mean[i]):
            ax.text(i, mean[i], f"{ops / 1e3:.0f}k ops", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="held-out perplexity (per byte)")
    fig.tight_layout()
    return fig


def save_figures(out, dest=None) -> list[Path]:
    """Draw the study's figures from ``out`` into ``dest`` (default ``<out>/plots``) as PNGs:
    ``heatmaps.png``, ``buckets.png``, ``perplexity.png``, ``train_loss.png``,
    ``entropy_norm.png`` (per-layer mean normalised entropy at the periodic evals, layer 0 and
    the last layer). Returns the paths written."""
    import io

    import matplotlib.pyplot as plt

    from entropylab import runs

    dest = Path(dest) if dest is not None else Path(out) / "plots"
    figs = {
        "heatmaps": heatmaps(out),
        "buckets": bucket_bars(out),
        "perplexity": perplexity_bars(out),
        "train_loss": training_curves(out, "train/loss"),
        "entropy_norm": _entropy_norm_curves(out),
    }
    paths = []
    for name, fig in figs.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        paths.append(runs.atomic_write_bytes(dest / f"{name}.png", buf.getvalue()))
    return paths


def _entropy_norm_curves(out):
    """Per-layer mean normalised entropy (``attn/entropy_norm``) against step: first and last
    layer, one colour per arm, one line per seed."""
    import matplotlib.pyplot as plt

    dirs = _job_dirs(out)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for c, a in enumerate(arm_names(out)):
        for d in dirs[a]:
            recs = [r for r in read_records(d / "metrics.jsonl") if "attn/entropy_norm" in r]
            steps = [r["step"] for r in recs]
            for ax, pick in zip(axes, (0, -1)):
                ax.plot(steps, [r["attn/entropy_norm"][pick] for r in recs], color=f"C{c}",
                        lw=0.8, alpha=0.6)  # fmt: skip
        axes[0].plot([], [], color=f"C{c}", label=a)
    axes[0].set(title="first layer", xlabel="step", ylabel="mean H / ln n", ylim=(0, 1.05))
    axes[1].set(title="last layer", xlabel="step")
    axes[0].legend(fontsize=6)
    return fig
