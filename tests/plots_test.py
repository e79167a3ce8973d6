"""entropylab.plots: shape handling, empty / all-masked input, NaN handling, figure content."""

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")  # tests only: the library itself never picks a backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402

from entropylab import plots as P  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _batch(b=4, n=5, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.uniform(0.0, 2.0, (b, n))
    mask = np.ones((b, n), bool)
    mask[0, 3:] = False  # a short response
    return h, mask


def _token_texts(ax):
    return [t for t in ax.texts if t.get_bbox_patch() is not None]


def test_import_does_not_load_matplotlib():
    code = "import sys, entropylab, entropylab.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_top_fraction_threshold_hand_checked_and_matches_entropy_stats():
    # 10 valid values 0..9: the 0.8 quantile (linear) is 7.2; the masked 100 is ignored
    h = np.array([[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 100, 100]], float)
    m = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], bool)
    assert P.top_fraction_threshold(h, m) == pytest.approx(7.2)
    assert P.top_fraction_threshold(h, m, top_frac=0.5) == pytest.approx(4.5)
    from entropylab.ops import entropy_stats

    hr, mr = _batch(6, 7, seed=3)
    p80 = float(entropy_stats(hr.astype(np.float32), mr)["p80"])
    assert P.top_fraction_threshold(hr.astype(np.float32), mr) == pytest.approx(p80, rel=1e-5)
    assert np.isnan(P.top_fraction_threshold(h, np.zeros_like(m)))
    h_nan = h.copy()
    h_nan[0, 0] = np.nan
    assert np.isnan(P.top_fraction_threshold(h_nan, m))  # a NaN is never hidden
    with pytest.raises(ValueError, match="top_frac"):
        P.top_fraction_threshold(h, m, top_frac=1.0)


def test_token_covariance_hand_checked_and_matches_library():
    lp = np.array([[-1.0, -3.0], [-2.0, -50.0]])
    adv = np.array([[1.0, 1.0], [-2.0, 7.0]])
    m = np.array([[1, 1], [1, 0]], bool)
    # valid: lp (-1, -3, -2) mean -2; A (1, 1, -2) mean 0 → (1·1, -1·1, 0·-2)
    np.testing.assert_allclose(P.token_covariance(lp, adv, m), [[1.0, -1.0], [0.0, 0.0]])
    from entropylab.losses.covariance import token_covariance

    rng = np.random.default_rng(1)
    lp, adv = -rng.exponential(size=(4, 6)), rng.normal(size=(4, 6))
    m = rng.uniform(size=(4, 6)) < 0.7
    ref = np.asarray(token_covariance(lp.astype(np.float32), adv.astype(np.float32), m))
    np.testing.assert_allclose(P.token_covariance(lp, adv, m), ref, atol=1e-5)
    np.testing.assert_array_equal(P.token_covariance(lp, adv, np.zeros_like(m)), 0.0)


def test_token_entropy_text_draws_one_box_per_valid_token():
    h, m = _batch()
    tokens = [list("12+3⏎") for _ in range(4)]
    ax = P.plot_token_entropy_text(tokens, h, m, row_labels=["a", "b", "c", "d"])
    boxes = _token_texts(ax)
    assert len(boxes) == m.sum() == 18
    assert [t.get_text() for t in boxes[:3]] == ["1", "2", "+"]
    assert {t.get_text() for t in ax.texts} >= {"a", "b", "c", "d"}
    assert ax.get_title() == "token entropy (nats)"
    assert len(ax.figure.axes) == 2  # the colorbar
    # the colour follows the entropy: the highest-entropy token gets the top of the colormap
    i, j = np.unravel_index(np.argmax(np.where(m, h, -1)), h.shape)
    k = int(m[:i].sum() + m[i, :j].sum())
    import matplotlib as mpl

    top = mpl.colormaps["YlOrRd"](1.0)
    np.testing.assert_allclose(boxes[k].get_bbox_patch().get_facecolor(), top)
    # whitespace is made visible
    ax = P.plot_token_entropy_text([[" ", "x"]], [[0.1, 0.2]])
    assert [t.get_text() for t in _token_texts(ax)] == ["␣", "x"]


def test_token_entropy_text_rejects_bad_shapes():
    h, m = _batch()
    with pytest.raises(ValueError, match="tokens must be"):
        P.plot_token_entropy_text([list("12+3")] * 4, h, m)
    with pytest.raises(ValueError, match="mask has shape"):
        P.plot_token_entropy_text([list("12+3⏎")] * 4, h, m[:, :4])
    with pytest.raises(ValueError, match="entropy must be 2-D"):
        P.plot_token_entropy_text([list("1")], np.zeros(3))
    with pytest.raises(ValueError, match="row_labels"):
        P.plot_token_entropy_text([list("12+3⏎")] * 4, h, m, row_labels=["a"])
    with pytest.raises(TypeError, match="mask must be boolean"):
        P.plot_token_entropy_text([list("12+3⏎")] * 4, h, np.full(h.shape, "x"))


def test_distribution_hist_and_cdf_content():
    h, m = _batch(8, 6)
    ax = P.plot_entropy_distribution([h, h * 0.5], [m, m], ["step 0", "step 40"])
    assert ax.get_xlabel() == "token entropy (nats)"
    assert len(ax.patches) == 2  # one step histogram per batch
    vlines = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(vlines) == 2
    thr = vlines[0].get_xdata()[0]
    assert thr == pytest.approx(P.top_fraction_threshold(h, m))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "step 0" in labels and any(s.startswith("top 20% of step 40") for s in labels)
    ax = P.plot_entropy_distribution(h, m, "one", cumulative=True, top_frac=None)
    (line,) = ax.lines
    y = line.get_ydata()
    assert y[-1] == pytest.approx(1.0) and len(y) == m.sum()
    assert ax.get_ylabel() == "fraction of tokens ≤ H"


def test_distribution_rejects_mismatched_inputs():
    h, m = _batch()
    with pytest.raises(ValueError, match="masks"):
        P.plot_entropy_distribution([h, h], [m])
    with pytest.raises(ValueError, match="labels"):
        P.plot_entropy_distribution([h, h], [m, m], ["a"])
    with pytest.raises(ValueError, match="mask has shape"):
        P.plot_entropy_distribution(h, m[:2])


def test_position_and_outcome_content():
    h = np.array([[1.0, 2.0, 9.0], [3.0, 4.0, 5.0]])
    m = np.array([[1, 1, 0], [1, 1, 1]], bool)
    ax = P.plot_entropy_vs_position(h, m)
    (line,) = ax.lines
    np.testing.assert_allclose(line.get_ydata(), [2.0, 3.0, 5.0])  # the masked 9 is not used
    ax = P.plot_entropy_vs_position(h, m, groups=np.array([True, False]))
    assert len(ax.lines) == 2
    by_label = {ln.get_label().split(" (")[0]: ln.get_ydata() for ln in ax.lines}
    np.testing.assert_allclose(by_label["correct"], [1.0, 2.0, np.nan])  # no token: NaN, not 0
    np.testing.assert_allclose(by_label["incorrect"], [3.0, 4.0, 5.0])
    ax = P.plot_entropy_by_outcome(h, m, np.array([True, False]))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["correct (n=1, mean 1.500)", "incorrect (n=1, mean 4.000)"]
    with pytest.raises(ValueError, match="groups has shape"):
        P.plot_entropy_vs_position(h, m, groups=np.array([True]))
    with pytest.raises(ValueError, match="correct has shape"):
        P.plot_entropy_by_outcome(h, m, np.array([True, False, True]))
    with pytest.raises(ValueError, match="group_labels"):
        P.plot_entropy_vs_position(h, m, groups=np.array([0, 1]), group_labels=["x"])


def test_logp_vs_advantage_content():
    lp = np.array([[-1.0, -3.0], [-2.0, -50.0]])
    adv = np.array([[1.0, 1.0], [-2.0, 7.0]])
    h = np.array([[0.1, 0.2], [0.3, 0.4]])
    m = np.array([[1, 1], [1, 0]], bool)
    ax = P.plot_logp_vs_advantage(lp, adv, h, m)
    (sc,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sc.get_offsets().shape == (3, 2)
    np.testing.assert_allclose(sc.get_array(), [0.1, 0.2, 0.3])
    assert ax.get_title().startswith("Cov(log π, A) = +0.0000")  # (1 - 1 + 0) / 3
    assert ax.get_xlabel() == "log π(token)" and ax.get_ylabel() == "advantage A"
    with pytest.raises(ValueError, match="advantages has shape"):
        P.plot_logp_vs_advantage(lp, adv[:1], h, m)


EMPTY_CALLS = {
    "text": lambda h, m: P.plot_token_entropy_text([[""] * h.shape[1]] * h.shape[0], h, m),
    "hist": lambda h, m: P.plot_entropy_distribution(h, m),
    "cdf": lambda h, m: P.plot_entropy_distribution([h, h], [m, m], cumulative=True),
    "position": lambda h, m: P.plot_entropy_vs_position(h, m, groups=np.ones(h.shape[0], bool)),
    "outcome": lambda h, m: P.plot_entropy_by_outcome(h, m, np.ones(h.shape[0], bool)),
    "scatter": lambda h, m: P.plot_logp_vs_advantage(-h, h, h, m),
}


@pytest.mark.parametrize("name", sorted(EMPTY_CALLS))
@pytest.mark.parametrize("case", ["empty", "zero_tokens", "all_masked"])
def test_empty_or_all_masked_input_draws_a_note(name, case):
    shape = {"empty": (0, 0), "zero_tokens": (3, 0), "all_masked": (3, 4)}[case]
    h = np.ones(shape)
    ax = EMPTY_CALLS[name](h, np.zeros(shape, bool))
    assert P.NO_DATA in [t.get_text() for t in ax.texts]
    assert not [c for c in ax.collections if isinstance(c, PathCollection)]
    assert not _token_texts(ax)


def test_nan_is_left_out_and_counted_not_zeroed():
    h, m = _batch()
    h[1, 1] = np.nan
    ax = P.plot_entropy_distribution(h, m)
    assert "1 non-finite value(s) not shown" in [t.get_text() for t in ax.texts]
    ax = P.plot_entropy_vs_position(h, m)
    (line,) = ax.lines
    expected = np.nanmean(np.where(m, h, np.nan), axis=0)
    np.testing.assert_allclose(line.get_ydata(), expected)
    ax = P.plot_entropy_by_outcome(h, m, np.array([True, True, False, False]))
    assert "1 non-finite value(s) not shown" in [t.get_text() for t in ax.texts]
    ax = P.plot_token_entropy_text([list("abcde")] * 4, h, m)
    boxes = _token_texts(ax)
    assert len(boxes) == m.sum()  # the token stays readable, in grey, and is counted
    assert tuple(boxes[int(m[0].sum()) + 1].get_bbox_patch().get_facecolor()) == (
        0.85,
        0.85,
        0.85,
        1.0,
    )
    assert "1 non-finite value(s) not shown" in [t.get_text() for t in ax.texts]
    ax = P.plot_logp_vs_advantage(-h, np.ones_like(h), h, m)
    (sc,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(sc.get_offsets()) == m.sum() - 1


def test_draws_on_given_axes():
    h, m = _batch()
    fig, axs = plt.subplots(1, 2)
    assert P.plot_entropy_distribution(h, m, ax=axs[1]) is axs[1]
    assert P.plot_entropy_vs_position(h, m, ax=axs[0]) is axs[0]
    assert len(fig.axes) == 2
