"""Tests for ARES: HWE counts, threshold, buckets, hierarchical entropy reward, dynamic KL.

Independent references: hand-worked numbers written in the tests, and ``rel_*`` NumPy float64
ports of the released code, ``shawn0728/ARES`` @ 146620e:

* ``examples/reward_function/aepo.py``: ``_huber_penalty``, ``_sigmoid_saturate``,
  ``_margin_from_target``, ``compute_score`` (the answer grading replaced by a given accuracy);
* ``verl/workers/actor/dp_actor.py``: ``_update_beta_per_bucket`` and the ``seq_mean_kl``
  statistic of ``update_policy``;
* ``verl/workers/rollout/vllm_rollout_spmd.py``: ``compute_reasoning_token_window_entropy``
  and ``get_window_average_entropy_percentile_threshold_list`` (on given per-token entropies
  and trigger flags instead of vLLM logprob dicts and token strings);
* ``verl/trainer/ray_trainer.py``: the threshold EMA (first batch replaces, then 0.99/0.01).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed
from hypothesis import given, settings
from hypothesis import strategies as st

from entropylab.losses.ares import (
    AresThresholdState,
    ares_bucket_kl,
    ares_bucket_targets,
    ares_difficulty_buckets,
    ares_entropy_reward,
    ares_hwe_counts,
    ares_kl_coefficients,
    ares_kl_init,
    ares_kl_update,
    ares_threshold_init,
    ares_threshold_update,
    ares_update_alpha,
)

NAMES = ("easy", "medium", "hard")


# ----------------------------------------------------------------- ports of the released code
def rel_huber_penalty(x, kappa):
    x = max(float(x), 0.0)
    return 0.5 * x * x / kappa if x <= kappa else x - 0.5 * kappa


def rel_sigmoid_saturate(x, temp):
    t = max(float(temp), 1e-6)
    return 1.0 / (1.0 + math.exp(-x / t))


def rel_margin_from_target(target, frac, min_margin=1.0):
    tgt = max(float(target), 1.0)
    return max(min_margin, frac * tgt)


def rel_compute_score(accuracy_score, difficulty, gen_token_num, target_token_num, alpha):
    """``high_entropy_token_num_score`` of ``compute_score`` (aepo.py @ 146620e)."""
    margin_frac = {"easy": 0.15, "medium": 0.25, "hard": 0.35}
    kappa_d = {"easy": 2.0, "medium": 3.0, "hard": 4.0}
    temp_d = {"easy": 2.0, "medium": 2.5, "hard": 3.0}
    cap_scale = {"easy": 1.0, "medium": 1.0, "hard": 1.2}
    delta = gen_token_num - target_token_num
    margin = rel_margin_from_target(target_token_num, margin_frac.get(difficulty, 0.2), 1.0)
    kappa = kappa_d.get(difficulty, 2.0)
    temp = temp_d.get(difficulty, 2.0)
    cap = alpha * cap_scale.get(difficulty, 1.0)
    entropy_score = 0.0
    if difficulty in ("easy", "medium"):
        if accuracy_score == 1.0:
            if difficulty == "easy":
                over = max(delta - margin, 0.0)
                pen = rel_huber_penalty(over, kappa)
                entropy_score = -min(cap, pen / (margin + kappa) * cap)
            else:
                dev = max(abs(delta) - margin, 0.0)
                pen = rel_huber_penalty(dev, kappa)
                entropy_score = -min(cap, pen / (margin + kappa) * cap)
        else:
            over = max(delta - margin, 0.0)
            entropy_score = (
                rel_sigmoid_saturate(over, temp) * cap * (0.6 if difficulty == "easy" else 0.8)
            )
    elif difficulty == "hard":
        if accuracy_score == 1.0:
            if delta >= -margin:
                entropy_score = rel_sigmoid_saturate(delta - (-margin), temp) * cap
            else:
                pen = rel_huber_penalty((-delta) - margin, kappa)
                entropy_score = -min(cap, 0.5 * pen / (margin + kappa) * cap)
        else:
            over = max(delta - margin, 0.0)
            entropy_score = rel_sigmoid_saturate(over, temp) * cap
    return entropy_score


class RelKLController:
    """``_kl_state`` / ``_e_ema`` / ``_update_beta_per_bucket`` of dp_actor.py @ 146620e."""

    def __init__(self, interval=100, deadzone=0.02):
        self.kl_state = {d: {"beta": 1.0, "dtarg": 0.01, "last_kl": None} for d in NAMES}
        self.beta_min, self.beta_max, self.ema_decay = 1e-4, 1e2, 0.97
        self.kl_lr, self.kl_clip = 0.05, 0.2
        self.interval, self.deadzone = interval, deadzone
        self.e_ema = {d: 0.0 for d in NAMES}
        self.update_count = 0

    def update(self, difficulties, seq_mean_kl):
        self.update_count += 1
        bucket_values = {d: [] for d in NAMES}
        for diff, val in zip(difficulties, seq_mean_kl):
            bucket_values[diff].append(val)
        for diff, vals in bucket_values.items():
            if not vals:
                continue
            cur = float(sum(vals) / len(vals))
            st_ = self.kl_state[diff]
            last = st_.get("last_kl")
            if last is None:
                last = cur
            mean_kl = (1.0 - self.ema_decay) * cur + self.ema_decay * last
            st_["last_kl"] = mean_kl
            target = max(1e-8, st_["dtarg"])
            e = (mean_kl / target) - 1.0
            if abs(e) < self.deadzone:
                continue
            if (self.update_count % self.interval) != 0:
                continue
            self.e_ema[diff] = (1.0 - self.ema_decay) * e + self.ema_decay * self.e_ema[diff]
            de = float(np.clip(self.e_ema[diff], -self.kl_clip, self.kl_clip))
            cur_beta = max(self.beta_min, min(self.beta_max, st_["beta"]))
            logb = float(np.log(cur_beta))
            logb_new = np.clip(logb + self.kl_lr * de, np.log(self.beta_min), np.log(self.beta_max))
            st_["beta"] = float(np.exp(logb_new))

    def betas(self):
        return [self.kl_state[d]["beta"] for d in NAMES]


def rel_seq_mean_kl(kld, mask):
    """``seq_mean_kl`` of ``update_policy`` (dp_actor.py @ 146620e)."""
    return (kld * mask).sum(1) / np.clip(mask.sum(1), 1.0, None)


def rel_window_counts(token_entropies, is_trigger, threshold, window_size):
    """``compute_reasoning_token_window_entropy`` for one response (vllm_rollout_spmd.py)."""
    valid = invalid = 0
    soft = 0.0
    for i in range(len(token_entropies)):
        if is_trigger[i]:
            remaining_length = len(token_entropies) - i - 1
            if remaining_length >= window_size:
                mean_following = float(np.mean(token_entropies[i + 1 : i + 1 + window_size]))
                soft += max(0.0, mean_following - threshold)
                if mean_following >= threshold:
                    valid += 1
                else:
                    invalid += 1
    return valid, invalid, soft


def rel_percentile_threshold(token_entropies, percentile, window_size):
    """``get_window_average_entropy_percentile_threshold_list`` for one response."""
    window_average_entropies = []
    for i in range(len(token_entropies)):
        remaining_length = len(token_entropies) - i - 1
        if remaining_length >= window_size:
            nxt = token_entropies[i + 1 : i + 1 + window_size]
            window_average_entropies.append(float(np.mean(nxt)))
        elif window_average_entropies:
            window_average_entropies.append(np.mean(window_average_entropies))
        else:
            window_average_entropies.append(token_entropies[i])
    if window_average_entropies:
        return np.percentile(window_average_entropies, percentile)
    return 0.0


class RelThreshold:
    """The threshold EMA of ``RayPPOTrainer.fit`` (ray_trainer.py @ 146620e)."""

    def __init__(self, tau=1.5):
        self.high_entropy_token_threshold = tau

    def update(self, batch_thresholds):
        batch_p95 = float(np.median(batch_thresholds))
        if not hasattr(self, "_ema_entropy_threshold"):
            self._ema_entropy_threshold = batch_p95
        else:
            self._ema_entropy_threshold = 0.99 * self._ema_entropy_threshold + 0.01 * batch_p95
        self.high_entropy_token_threshold = float(self._ema_entropy_threshold)


def batch(seed, b=8, t=12):
    rng = np.random.default_rng(seed)
    h = rng.exponential(0.8, (b, t))
    m = np.zeros((b, t))
    for i, n in enumerate(rng.integers(1, t + 1, b)):
        m[i, :n] = 1.0  # left-aligned responses, as in the release
    trig = rng.uniform(size=(b, t)) < 0.5
    return h, m, trig


def rows(h, m):
    return [list(h[i][m[i] != 0]) for i in range(h.shape[0])]


# ----------------------------------------------------------------------------- HWE counts
def test_hwe_counts_match_released_port(x64):
    h, m, trig = batch(0)
    tau = 0.8
    got = jax.jit(lambda a, b, c: ares_hwe_counts(a, b, c, tau, window=3))(h, m, trig)
    for i, row in enumerate(rows(h, m)):
        v, inv, soft = rel_window_counts(row, trig[i][m[i] != 0], tau, 3)
        assert got["count"][i] == v and got["invalid"][i] == inv
        np.testing.assert_allclose(got["soft_cost"][i], soft, rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- threshold
def test_threshold_hand_worked():
    """W = 2. Response (1, 2, 3, 4, 5): complete windows 2.5, 3.5, 4.5; the last two positions
    carry their mean 3.5 → values (2.5, 3.5, 4.5, 3.5, 3.5), 95th percentile 3.5 + 0.8 = 4.3.
    Response (0.7, 0.9): no complete window → every position carries H_0 = 0.7 → 0.7.
    Median of (4.3, 0.7) = 2.5. First update: τ = 2.5 (replaces 1.5); second with the same
    batch: 0.99·2.5 + 0.01·2.5 = 2.5; with a batch of median 0.5: 0.99·2.5 + 0.01·0.5 = 2.48.
    """
    h = jnp.array([[1.0, 2, 3, 4, 5], [0.7, 0.9, 0, 0, 0]])
    m = jnp.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    upd = jax.jit(lambda s, e, k: ares_threshold_update(s, e, k, window=2))
    s0 = ares_threshold_init(1.5)
    s1 = upd(s0, h, m)
    assert isinstance(s1, AresThresholdState) and bool(s1.initialized)
    np.testing.assert_allclose(s1.tau, 2.5, rtol=1e-6)
    h2 = jnp.array([[0.5, 0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0, 0, 0]])
    np.testing.assert_allclose(upd(s1, h2, m).tau, 0.99 * 2.5 + 0.01 * 0.5, rtol=1e-6)
    # a bare τ is an initialised threshold: it blends
    np.testing.assert_allclose(upd(1.5, h, m), 0.99 * 1.5 + 0.01 * 2.5, rtol=1e-6)
    # nothing valid → unchanged, still uninitialised
    s_e = upd(s0, h, jnp.zeros_like(m))
    np.testing.assert_allclose(s_e.tau, 1.5) and not bool(s_e.initialized)


def test_threshold_matches_released_port(x64):
    rel = RelThreshold(1.5)
    st_ = ares_threshold_init(1.5)
    upd = jax.jit(lambda s, e, k: ares_threshold_update(s, e, k, window=4))
    for seed in range(3):
        h, m, _ = batch(10 + seed)
        rel.update([rel_percentile_threshold(r, 95.0, 4) for r in rows(h, m)])
        st_ = upd(st_, h, m)
        np.testing.assert_allclose(st_.tau, rel.high_entropy_token_threshold, rtol=1e-12)


def test_threshold_update_distributed():
    h, m, _ = (jnp.asarray(a, jnp.float32) for a in batch(2))
    assert_matches_distributed(
        lambda e, mm, *, axis_name=None: (
            ares_threshold_update(ares_threshold_init(1.5), e, mm, axis_name=axis_name).tau
        ),
        (h, m),
        methods=("shard_map",),
        atol=1e-6,
    )


# ----------------------------------------------------------------------------- buckets, alpha
def test_buckets_targets_alpha():
    b = ares_difficulty_buckets(jnp.array([1.0, 2 / 3, 0.5, 1 / 3, 0.2, 0.0]))
    np.testing.assert_array_equal(b, [0, 0, 1, 1, 2, 2])
    counts = jnp.array([2.0, 4.0, 3.0, 6.0, 10.0, 0.0, 7.0, 7.0])
    bk = jnp.array([0, 0, 1, 1, 2, 2, 2, 2])
    t = ares_bucket_targets(counts, bk)
    np.testing.assert_allclose(t["mean"], [3.0, 4.5, 6.0])
    np.testing.assert_allclose(t["target"], [3.0, 4.0, 6.0])  # round half to even
    t2 = ares_bucket_targets(counts, jnp.zeros(8, jnp.int32))
    np.testing.assert_allclose(t2["n"], [8, 0, 0])
    np.testing.assert_allclose(t2["mean"][1:], 0.0)
    a = ares_update_alpha(jnp.full(3, 0.5), jnp.array([4.0, 4.0, 4.0]), jnp.array([3.0, 5, 3]))
    np.testing.assert_allclose(a, [0.55, 0.45, 0.45])
    a = ares_update_alpha(
        jnp.full(3, 0.5), jnp.array([90.0, 0, 0]), jnp.zeros(3), present=jnp.array([1, 0, 0])
    )
    np.testing.assert_allclose(a, [2.0, 0.5, 0.5])
    dist = assert_matches_distributed(
        lambda c, k, *, axis_name=None: ares_bucket_targets(c, k, axis_name=axis_name),
        (counts, bk),
        methods=("shard_map",),
    )
    np.testing.assert_allclose(dist["mean"], [3.0, 4.5, 6.0])


# ----------------------------------------------------------------------------- entropy reward
def test_entropy_reward_hand_worked():
    """Huber / κ. Correct & easy, target 10, n = 14, α = 0.5: Δ = 4, m = max(1, 1.5) = 1.5,
    over = 2.5 > κ = 2 → Hub = 2.5 − 1 = 1.5 → −min(0.5, 1.5/3.5·0.5) = −0.2142857…
    (textbook Huber would give 2·(2.5 − 1) = 3 → −0.428…). Correct & easy with over = 1 ≤ κ:
    n = 12.5 → Hub = 0.5·1/2 = 0.25 → −0.25/3.5·0.5 = −0.0357142…
    Correct & hard, target 20, n = 5, α = 1: m = 7, Δ = −15 < −m → Hub_4(8) = 8 − 2 = 6 →
    −min(1.2, 0.5·6/11·1.2) = −0.3272727…
    Incorrect & medium with Δ ≤ m: sig(0)·cap·0.8 = 0.5·0.7·0.8 = 0.28."""
    r, _ = jax.jit(ares_entropy_reward)(
        jnp.array([14.0, 12.5, 5.0, 0.0]),
        jnp.array([True, True, True, False]),
        jnp.array([0, 0, 2, 1]),
        jnp.array([10.0, 3.0, 20.0]),
        jnp.array([0.5, 0.7, 1.0]),
    )
    np.testing.assert_allclose(
        r, [-1.5 / 3.5 * 0.5, -0.25 / 3.5 * 0.5, -0.5 * 6 / 11 * 1.2, 0.28], rtol=1e-6
    )


def test_entropy_reward_matches_released_compute_score():
    rng = np.random.default_rng(3)
    n = rng.integers(0, 30, 90).astype(float)
    ok = rng.uniform(size=90) < 0.5
    b = rng.integers(0, 3, 90)
    target, alpha = np.array([5.0, 10.0, 20.0]), np.array([0.5, 0.7, 1.1])
    got, _ = jax.jit(ares_entropy_reward)(n, ok, b, target, alpha)
    want = [
        rel_compute_score(float(ok[i]), NAMES[b[i]], n[i], target[b[i]], alpha[b[i]])
        for i in range(90)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(st.floats(0, 100), st.booleans(), st.integers(0, 2), st.floats(0, 50), st.floats(0, 2))
def test_entropy_reward_bounded(n, ok, b, tgt, a):
    r, _ = ares_entropy_reward(
        jnp.array([n]), jnp.array([ok]), jnp.array([b]), jnp.full(3, tgt), jnp.full(3, a)
    )
    cap = a * (1.2 if b == 2 else 1.0)
    assert -cap - 1e-5 <= float(r[0]) <= cap + 1e-5


# ----------------------------------------------------------------------------- dynamic KL
def test_dynamic_kl_hand_worked():
    """First observation KL = 0.02 (target 0.01): the KL EMA starts at 0.02, so e = 1.0; with
    an update every call the error EMA is 0.03·1.0 = 0.03 and log β = 0.05·0.03 → β =
    exp(0.0015). (Seeding the EMA at the target gave e = 0.03, inside the deadzone.)
    Second call KL = 0.0101: KL_ema = 0.97·0.02 + 0.03·0.0101 = 0.019703 → e = 0.9703 → E =
    0.97·0.03 + 0.03·0.9703 = 0.058209 → log β = 0.0015 + 0.05·0.058209."""
    upd = jax.jit(lambda s, kl: ares_kl_update(s, kl, update_every=1))
    s = upd(ares_kl_init(), jnp.array([0.02, 0.01, 0.0101]))
    np.testing.assert_allclose(s.kl_ema, [0.02, 0.01, 0.0101], rtol=1e-6)
    np.testing.assert_allclose(s.err_ema, [0.03, 0.0, 0.0], atol=1e-7)  # |e| = 0, 0.01 < 0.02
    np.testing.assert_allclose(s.beta, [math.exp(0.0015), 1.0, 1.0], rtol=1e-6)
    s = upd(s, jnp.array([0.0101, 0.01, 0.0101]))
    e2 = 0.97 * 0.03 + 0.03 * ((0.97 * 0.02 + 0.03 * 0.0101) / 0.01 - 1)
    np.testing.assert_allclose(s.err_ema[0], e2, rtol=1e-5)
    np.testing.assert_allclose(s.beta[0], math.exp(0.0015 + 0.05 * e2), rtol=1e-6)


def test_dynamic_kl_matches_released_port():
    """A run of 12 micro-batches with absent buckets, a deadzone crossing and interval 3."""
    rng = np.random.default_rng(7)
    rel = RelKLController(interval=3)
    s = ares_kl_init()
    stat = jax.jit(lambda k, m, b: ares_bucket_kl(k, m, b))
    upd = jax.jit(lambda s, kl, p: ares_kl_update(s, kl, p, update_every=3))
    for it in range(12):
        b = rng.integers(0, 3 if it % 4 else 2, 6)  # hard absent every 4th call
        m = (rng.uniform(size=(6, 5)) < 0.8).astype(np.float32)
        m[0] = 0.0  # an empty response: its seq-mean KL is 0 (clamped count)
        kld = rng.exponential([0.03, 0.01, 0.004][it % 3], (6, 5)).astype(np.float32)
        rel.update([NAMES[i] for i in b], rel_seq_mean_kl(kld, m))
        kl, present = stat(kld, m, b)
        s = upd(s, kl, present)
        np.testing.assert_allclose(s.beta, rel.betas(), rtol=1e-5)
        np.testing.assert_allclose(s.err_ema, [rel.e_ema[d] for d in NAMES], rtol=1e-4, atol=1e-6)
        for d, nm in enumerate(NAMES):
            if rel.kl_state[nm]["last_kl"] is not None:
                np.testing.assert_allclose(s.kl_ema[d], rel.kl_state[nm]["last_kl"], rtol=1e-5)
    assert np.any(np.asarray(s.beta) != 1.0)


def test_dynamic_kl_misc():
    s = ares_kl_update(ares_kl_init(), jnp.array([0.1, 0.01, 0.0]), update_every=1)
    s2 = ares_kl_update(s, jnp.array([5.0, 5.0, 5.0]), present=jnp.array([0, 0, 0]))
    np.testing.assert_allclose(s2.kl_ema, s.kl_ema)
    np.testing.assert_allclose(s2.beta, s.beta)
    c = ares_kl_coefficients(s, jnp.array([0, 1, 2]))
    np.testing.assert_allclose(c, 1e-2 * np.asarray(s.beta), rtol=1e-6)
    with pytest.raises(ValueError, match="target_kl"):
        ares_kl_update(s, jnp.zeros(3), target_kl=0.0)
    with pytest.raises(ValueError, match="update_every"):
        ares_kl_update(s, jnp.zeros(3), update_every=0)
