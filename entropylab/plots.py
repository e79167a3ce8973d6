"""Token-level entropy plots for notebooks and reports (matplotlib, arrays in, Axes out).

Every function takes NumPy-compatible arrays (not file paths), draws on ``ax`` (a new figure is
made when ``ax`` is None) and returns that Axes. No backend is chosen here and matplotlib is
imported inside the functions, so ``import entropylab`` / ``import entropylab.plots`` stays light
and a notebook shows the figures inline with whatever backend its kernel uses.

Conventions:

* ``mask`` marks valid tokens (``True``/1) and must have the shape of the value array it
  masks; ``None`` means every entry is valid. Masked entries are never drawn or counted.
* Empty or all-masked input draws an axes that says so ("no valid tokens") instead of raising.
* A NaN/inf among the valid values is never turned into a number: it is left out of the
  drawing and the count left out is written on the axes.

Views (the figures of the entropy papers):

* :func:`plot_token_entropy_text` - a response with each token coloured by its entropy
  (the forking-tokens figure, Wang et al., arXiv:2506.01939, Fig. 1).
* :func:`plot_entropy_distribution` - histogram or CDF of token entropy per batch, with the
  top-``top_frac`` threshold (the quantile ``1 - top_frac`` of the valid tokens; 20% in
  arXiv:2506.01939) marked.
* :func:`plot_entropy_vs_position` - mean entropy per response position, optionally split by
  group (e.g. correct vs incorrect responses); :func:`plot_entropy_by_outcome` - histogram of
  per-response mean entropy for correct vs incorrect responses.
* :func:`plot_logp_vs_advantage` - log π vs advantage per token, coloured by entropy, titled with
  the batch covariance Cov(log π, A) of the entropy theorem (Cui et al., arXiv:2505.22617 §4.2;
  the token estimator with batch-wide means, as in ``entropylab.losses.covariance``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "plot_entropy_by_outcome",
    "plot_entropy_distribution",
    "plot_entropy_vs_position",
    "plot_logp_vs_advantage",
    "plot_token_entropy_text",
    "token_covariance",
    "top_fraction_threshold",
]

NO_DATA = "no valid tokens"


# -- array helpers (NumPy only) -------------------------------------------------------------------


def _array(x, name: str, *, ndim: int | None = None) -> np.ndarray:
    if x is None:
        raise TypeError(f"{name} must be an array, got None")
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a numeric array: {e}") from None
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


def _mask(mask, shape: tuple, name: str = "mask") -> np.ndarray:
    if mask is None:
        return np.ones(shape, bool)
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(f"{name} has shape {m.shape}, expected {tuple(shape)}")
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.number):
            raise TypeError(f"{name} must be boolean or 0/1, got dtype {m.dtype}")
        m = m != 0
    return m


def _valid(values, mask, name: str) -> tuple[np.ndarray, int]:
    """Finite valid values (flattened) and how many valid values were non-finite."""
    v = _array(values, name)
    m = _mask(mask, v.shape)
    sel = v[m]
    finite = np.isfinite(sel)
    return sel[finite], int((~finite).sum())


def top_fraction_threshold(entropy, mask=None, *, top_frac: float = 0.2) -> float:
    """Entropy above which the top ``top_frac`` of valid tokens lie: quantile ``1 - top_frac``.

    NumPy's ``linear`` quantile, the method of :func:`entropylab.ops.entropy_stats` (``p80`` for
    ``top_frac = 0.2``). Returns NaN when no token is valid, and NaN when a valid value is NaN
    (a NaN is never hidden).
    """
    if not 0 < top_frac < 1:
        raise ValueError(f"top_frac must be in (0, 1), got {top_frac}")
    h = _array(entropy, "entropy")
    sel = h[_mask(mask, h.shape)]
    if sel.size == 0:
        return float("nan")
    return float(np.quantile(sel, 1.0 - top_frac))


def token_covariance(logp, advantages, mask=None) -> np.ndarray:
    """Per-token centred covariance ``(log π_t − l̄)(A_t − Ā)``, means over the valid tokens.

    Shapes ``[...]`` → ``[...]`` float64, 0 on masked tokens; its mean over the valid tokens is
    the batch Cov(log π, A) of arXiv:2505.22617 §4.2 (population form). NumPy twin of
    :func:`entropylab.losses.covariance.token_covariance` for plotting.
    """
    lp = _array(logp, "logp")
    adv = _array(advantages, "advantages")
    if adv.shape != lp.shape:
        raise ValueError(f"advantages has shape {adv.shape}, expected logp's {lp.shape}")
    m = _mask(mask, lp.shape)
    out = np.zeros(lp.shape)
    if m.any():
        out[m] = (lp[m] - lp[m].mean()) * (adv[m] - adv[m].mean())
    return out


# -- drawing helpers ------------------------------------------------------------------------------


def _axes(ax, figsize):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def _say(ax, text: str, y: float = 0.5) -> None:
    ax.text(0.5, y, text, transform=ax.transAxes, ha="center", va="center", color="0.35")


def _note_dropped(ax, n: int) -> None:
    if n:
        ax.text(
            0.99,
            0.01,
            f"{n} non-finite value(s) not shown",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="C3",
        )


def _series(values, masks, labels, name: str):
    """Normalise one array or a sequence of arrays (+ masks, labels) to lists."""
    if isinstance(values, np.ndarray) or (
        not isinstance(values, Sequence) and hasattr(values, "shape")
    ):
        values, masks = [values], [masks]
        labels = [labels] if labels is None or isinstance(labels, str) else list(labels)
    else:
        values = list(values)
        masks = [None] * len(values) if masks is None else list(masks)
    if len(masks) != len(values):
        raise ValueError(f"got {len(masks)} masks for {len(values)} {name} arrays")
    if labels is None or labels == [None]:
        labels = [None] * len(values)
    labels = list(labels)
    if len(labels) != len(values):
        raise ValueError(f"got {len(labels)} labels for {len(values)} {name} arrays")
    return values, masks, labels


# -- views ----------------------------------------------------------------------------------------


def plot_token_entropy_text(
    tokens,
    entropy,
    mask=None,
    *,
    row_labels: Sequence[str] | None = None,
    ax=None,
    cmap: str = "YlOrRd",
    vmin: float = 0.0,
    vmax: float | None = None,
    title: str | None = "token entropy (nats)",
    fontsize: float = 10.0,
):
    """Render responses with each token's background coloured by its entropy.

    Args:
      tokens: ``[B][N]`` token strings (nested sequences or a 2-D string array), one row per
        response. Whitespace tokens are drawn as ``␣``, an empty string as ``∅``.
      entropy: ``[B, N]`` per-token entropy. mask: ``[B, N]`` tokens to draw (e.g. the response
        mask); masked tokens are skipped.
      row_labels: ``[B]`` text written left of each row (e.g. the prompt and the reward).
      vmax: top of the colour scale (default: the largest finite valid entropy).
    Returns: the Axes (one ``Text`` per drawn token plus one per row label; a colorbar is
      added to the figure when there is something to colour).
    """
    import matplotlib as mpl

    h = _array(entropy, "entropy")
    if h.ndim == 1 and h.size == 0:
        h = h.reshape(0, 0)
    if h.ndim != 2:
        raise ValueError(f"entropy must be 2-D [B, N], got shape {h.shape}")
    b, n = h.shape
    rows = [list(r) for r in tokens]
    if len(rows) != b or any(len(r) != n for r in rows):
        shape = (len(rows), sorted({len(r) for r in rows}))
        raise ValueError(f"tokens must be [B][N] = [{b}][{n}], got {shape[0]} rows of {shape[1]}")
    m = _mask(mask, h.shape)
    if row_labels is not None and len(row_labels) != b:
        raise ValueError(f"row_labels has {len(row_labels)} entries, expected {b}")
    ax = _axes(ax, (9, 0.45 * max(b, 1) + 0.9))
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    drawable = m & np.isfinite(h)
    dropped = int((m & ~np.isfinite(h)).sum())
    if not drawable.any():
        _say(ax, NO_DATA)
        _note_dropped(ax, dropped)
        return ax
    top = float(h[drawable].max()) if vmax is None else float(vmax)
    norm = mpl.colors.Normalize(vmin=vmin, vmax=max(top, vmin + 1e-6))
    cm = mpl.colormaps[cmap]
    ax.figure.colorbar(
        mpl.cm.ScalarMappable(norm=norm, cmap=cm),
        ax=ax,
        fraction=0.03,
        pad=0.01,
        label="entropy (nats)",
    )
    # lay out in character cells (monospace), then fit the font so every row fits the axes
    shown = [
        [("∅" if s == "" else ("␣" * len(s) if s.isspace() else s)) for s in map(str, r)]
        for r in rows
    ]
    label_w = max((len(s) for s in row_labels), default=0) + 1 if row_labels is not None else 0
    gap = 0.7  # box padding + space between tokens, in cells
    width = max(
        [label_w + sum(len(shown[i][j]) + gap for j in range(n) if m[i, j]) for i in range(b)]
    )
    axes_pt = ax.get_position().width * ax.figure.get_figwidth() * 72
    fs = min(fontsize, axes_pt / (0.6 * max(width, 1.0)))
    cells = max(width, axes_pt / (0.6 * fs))
    for i in range(b):
        y = b - 1 - i
        if row_labels is not None:
            ax.text(
                0,
                y,
                row_labels[i],
                family="monospace",
                fontsize=fs,
                va="center",
                ha="left",
                color="0.3",
            )
        x = float(label_w)
        for j in range(n):
            if not m[i, j]:
                continue
            face = cm(norm(h[i, j])) if np.isfinite(h[i, j]) else (0.85, 0.85, 0.85, 1.0)
            dark = 0.299 * face[0] + 0.587 * face[1] + 0.114 * face[2] < 0.5
            ax.text(
                x + gap / 2,
                y,
                shown[i][j],
                family="monospace",
                fontsize=fs,
                va="center",
                ha="left",
                color="white" if dark else "black",
                bbox={"facecolor": face, "edgecolor": "none", "pad": 1.0},
            )
            x += len(shown[i][j]) + gap
    ax.set_xlim(0, cells)
    ax.set_ylim(-0.7, b - 0.3)
    _note_dropped(ax, dropped)
    return ax


def plot_entropy_distribution(
    entropies,
    masks=None,
    labels=None,
    *,
    top_frac: float | None = 0.2,
    cumulative: bool = False,
    bins: int = 40,
    ax=None,
    title: str | None = None,
):
    """Histogram (density) or empirical CDF of token entropy for one or several batches.

    Args:
      entropies: one array or a sequence of arrays (any shape each, e.g. ``[B, N]`` per RL step).
      masks: matching mask(s) or None. labels: one label per array (e.g. ``"step 10"``).
      top_frac: mark the threshold above which the top ``top_frac`` of each batch's valid
        tokens lie (:func:`top_fraction_threshold`) with a dashed line; None = no line.
      cumulative: draw the empirical CDF instead of the histogram.
    Returns: the Axes (one histogram patch or CDF line per non-empty batch, one dashed line per
      threshold).
    """
    values, masks, labels = _series(entropies, masks, labels, "entropy")
    ax = _axes(ax, (6, 3.5))
    ax.set_xlabel("token entropy (nats)")
    ax.set_ylabel("fraction of tokens ≤ H" if cumulative else "density")
    ax.set_title(title or ("entropy CDF over tokens" if cumulative else "entropy over tokens"))
    kept = [_valid(v, m, "entropies") for v, m in zip(values, masks)]
    dropped = sum(d for _, d in kept)
    finite = [v for v, _ in kept if v.size]
    if not finite:
        _say(ax, NO_DATA)
        _note_dropped(ax, dropped)
        return ax
    lo = min(float(v.min()) for v in finite)
    hi = max(float(v.max()) for v in finite)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    for i, ((v, _), lab) in enumerate(zip(kept, labels)):
        if not v.size:
            continue
        color = f"C{i % 10}"
        name = lab if lab is not None else f"batch {i}"
        if cumulative:
            xs = np.sort(v)
            ax.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post", color=color, label=name)
        else:
            ax.hist(v, bins=edges, density=True, histtype="step", color=color, label=name)
        if top_frac is not None:
            thr = float(np.quantile(v, 1.0 - top_frac))
            ax.axvline(
                thr,
                color=color,
                ls="--",
                lw=1,
                label=f"top {top_frac:.0%} of {name}: H ≥ {thr:.2f}",
            )
    ax.legend(fontsize=7)
    _note_dropped(ax, dropped)
    return ax


def plot_entropy_vs_position(
    entropy,
    mask=None,
    *,
    groups=None,
    group_labels: Sequence[str] | None = None,
    ax=None,
    title: str | None = "entropy vs response position",
):
    """Mean entropy at each response position over the valid tokens (1-based positions).

    Args:
      entropy: ``[B, N]``. mask: ``[B, N]``.
      groups: optional ``[B]`` group id per response (bool or int, e.g. ``reward == 1``);
        one line per group value, labelled by ``group_labels`` (indexed by the sorted distinct
        values; for a bool ``groups`` the default labels are "incorrect", "correct").
    Returns: the Axes (one line per group with at least one valid token, colours from the
      axes' colour cycle, so several calls on one Axes stay distinguishable). Positions without
      a valid token are not drawn (their mean is undefined, not 0).
    """
    h = _array(entropy, "entropy")
    if h.ndim == 1 and h.size == 0:
        h = h.reshape(0, 0)
    if h.ndim != 2:
        raise ValueError(f"entropy must be 2-D [B, N], got shape {h.shape}")
    m = _mask(mask, h.shape)
    if groups is None:
        g = np.zeros(h.shape[0], int)
        names = {0: "all responses"}
    else:
        g = np.asarray(groups)
        if g.shape != (h.shape[0],):
            raise ValueError(f"groups has shape {g.shape}, expected ({h.shape[0]},)")
        keys = sorted(set(g.tolist()))
        if group_labels is not None:
            if len(group_labels) != len(keys):
                raise ValueError(f"group_labels has {len(group_labels)} entries for groups {keys}")
            names = dict(zip(keys, group_labels))
        elif g.dtype == bool:
            names = {False: "incorrect", True: "correct"}
        else:
            names = {k: f"group {k}" for k in keys}
    ax = _axes(ax, (6, 3.5))
    ax.set_xlabel("response position (token)")
    ax.set_ylabel("mean token entropy (nats)")
    if title:
        ax.set_title(title)
    ok = m & np.isfinite(h)
    dropped = int((m & ~np.isfinite(h)).sum())
    drawn = 0
    for key in sorted(set(g.tolist())):
        rows = g == key
        cnt = ok[rows].sum(axis=0)
        tot = np.where(ok[rows], h[rows], 0.0).sum(axis=0)
        if not cnt.any():
            continue
        mean = np.full(h.shape[1], np.nan)
        mean[cnt > 0] = tot[cnt > 0] / cnt[cnt > 0]
        pos = np.arange(1, h.shape[1] + 1)
        ax.plot(pos, mean, marker="o", ms=3, label=f"{names[key]} ({int(rows.sum())} responses)")
        drawn += 1
    if drawn:
        ax.legend(fontsize=7)
    else:
        _say(ax, NO_DATA)
    _note_dropped(ax, dropped)
    return ax


def plot_entropy_by_outcome(
    entropy,
    mask,
    correct,
    *,
    bins: int = 20,
    ax=None,
    title: str | None = "response entropy: correct vs incorrect",
):
    """Histogram of per-response mean token entropy, correct vs incorrect responses.

    Args: entropy ``[B, N]``, mask ``[B, N]`` (None = all valid), correct ``[B]`` bool (or
      rewards, with ``correct = reward == 1`` done by the caller). Responses without a valid
      token have no mean and are left out.
    Returns: the Axes (one histogram per non-empty outcome, its mean in the legend).
    """
    h = _array(entropy, "entropy")
    if h.ndim == 1 and h.size == 0:
        h = h.reshape(0, 0)
    if h.ndim != 2:
        raise ValueError(f"entropy must be 2-D [B, N], got shape {h.shape}")
    m = _mask(mask, h.shape)
    c = np.asarray(correct)
    if c.shape != (h.shape[0],):
        raise ValueError(f"correct has shape {c.shape}, expected ({h.shape[0]},)")
    c = c.astype(bool)
    cnt = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(m, h, 0.0).sum(axis=1) / cnt  # NaN stays NaN; 0/0 → NaN (no tokens)
    has = cnt > 0
    finite = np.isfinite(per)
    dropped = int((has & ~finite).sum())
    ax = _axes(ax, (6, 3.5))
    ax.set_xlabel("mean token entropy of a response (nats)")
    ax.set_ylabel("responses")
    if title:
        ax.set_title(title)
    sel = has & finite
    if not sel.any():
        _say(ax, NO_DATA)
        _note_dropped(ax, dropped)
        return ax
    lo, hi = float(per[sel].min()), float(per[sel].max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    for flag, name, color in ((True, "correct", "C2"), (False, "incorrect", "C3")):
        v = per[sel & (c == flag)]
        if v.size:
            ax.hist(
                v,
                bins=edges,
                alpha=0.5,
                color=color,
                label=f"{name} (n={v.size}, mean {v.mean():.3f})",
            )
    ax.legend(fontsize=7)
    _note_dropped(ax, dropped)
    return ax


def plot_logp_vs_advantage(
    logp,
    advantages,
    entropy,
    mask=None,
    *,
    ax=None,
    cmap: str = "viridis",
    size: float = 8.0,
    title: str | None = None,
):
    """Scatter of log π(token) vs its advantage, one point per valid token, coloured by entropy.

    The title gives the batch covariance Cov(log π, A) = mean of :func:`token_covariance` over
    the valid tokens (what the entropy theorem of arXiv:2505.22617 says drives the entropy
    change, ΔH ≈ −η·Cov) and the fraction of tokens with a positive per-token covariance.

    Args: logp, advantages, entropy ``[...]`` of one shape; mask the same shape or None.
    Returns: the Axes (one PathCollection; a colorbar when there are points).
    """
    lp = _array(logp, "logp")
    adv = _array(advantages, "advantages")
    h = _array(entropy, "entropy")
    for name, a in (("advantages", adv), ("entropy", h)):
        if a.shape != lp.shape:
            raise ValueError(f"{name} has shape {a.shape}, expected logp's {lp.shape}")
    m = _mask(mask, lp.shape)
    ok = m & np.isfinite(lp) & np.isfinite(adv) & np.isfinite(h)
    dropped = int((m & ~ok).sum())
    ax = _axes(ax, (5.5, 4))
    ax.set_xlabel("log π(token)")
    ax.set_ylabel("advantage A")
    if not ok.any():
        ax.set_title(title or "log π vs A")
        _say(ax, NO_DATA)
        _note_dropped(ax, dropped)
        return ax
    cov = token_covariance(lp[ok], adv[ok])
    sc = ax.scatter(lp[ok], adv[ok], c=h[ok], cmap=cmap, s=size, alpha=0.7)
    ax.figure.colorbar(sc, ax=ax, label="token entropy (nats)")
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_title(
        title
        or f"Cov(log π, A) = {cov.mean():+.4f} ({(cov > 0).mean():.0%} of tokens > 0, "
        f"n={cov.size})",
        fontsize=9,
    )
    _note_dropped(ax, dropped)
    return ax
