"""Decoding rules: NumPy float64 references of each per-step rule, and the rules inside the
compiled decode loop (traced once, per-token log, Mirostat state replay, EAD switch replay)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropylab.models import Transformer, TransformerConfig
from entropylab.rl import decoding as D
from entropylab.rl import sampling as S
from entropylab.rl.tasks import CharTokenizer

LN2 = math.log(2.0)


# ------------------------------------------------------------------ NumPy float64 references
def np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_entropy(z):
    p = np_softmax(z)
    lp = np.log(np.where(p > 0, p, 1.0))
    h = -(p * lp).sum(-1)
    return h, (p * (lp + h[..., None]) ** 2).sum(-1)


def np_mirostat_v1_k(z, mu, m, n_vocab):
    """llama.cpp llama_sampler_mirostat_apply, rewritten in NumPy float64 (one row)."""
    p = np.sort(np_softmax(z))[::-1]
    num = den = 0.0
    for i in range(min(m, len(p)) - 1):
        ti = math.log((i + 2) / (i + 1))
        num += ti * math.log(p[i] / p[i + 1])
        den += ti * ti
    s = num / den
    eps = s - 1
    k = (eps * 2.0**mu / (1 - n_vocab ** (-eps))) ** (1 / s)
    return max(int(k), 1)


def _apply(rule, z, temp, state=()):
    z = jnp.asarray(z, jnp.float32)
    return rule.apply(z, jnp.asarray(temp, jnp.float32), state, 0)


def test_min_p_hand_case_and_random():
    z = np.log([[0.5, 0.3, 0.15, 0.05]])
    zo, _, code, _ = _apply(D.MinP(p_base=0.2), z, [1.0])  # threshold 0.2 * 0.5 = 0.1
    assert np.isfinite(np.asarray(zo)).tolist() == [[True, True, True, False]]
    assert int(code[0]) == 1
    # at T = 2 the probabilities flatten: 0.05 -> p ∝ sqrt, ratio sqrt(0.05/0.5) = 0.316 > 0.2
    zo2, _, code2, _ = _apply(D.MinP(p_base=0.2), z, [2.0])
    assert np.isfinite(np.asarray(zo2)).all() and int(code2[0]) == 0
    rng = np.random.default_rng(0)
    zr = rng.normal(size=(6, 30)) * 2
    temps = rng.uniform(0.5, 2.0, 6)
    zo, _, _, _ = _apply(D.MinP(p_base=0.1), zr, temps)
    p = np_softmax(zr / temps[:, None])
    ref = p >= 0.1 * p.max(-1, keepdims=True)
    np.testing.assert_array_equal(np.isfinite(np.asarray(zo)), ref)
    # plain-sampler processor form = the rule at T = 1
    np.testing.assert_array_equal(
        np.isfinite(np.asarray(D.MinP(p_base=0.1)(jnp.asarray(zr, jnp.float32), 0))),
        np_softmax(zr) >= 0.1 * np_softmax(zr).max(-1, keepdims=True),
    )


def test_edt_and_dynatemp_formulas():
    uniform4 = np.zeros((1, 4))
    _, t, _, _ = _apply(D.EDT(t0=1.0, theta=1.0, n=0.8), uniform4, [1.0])
    # T = 0.8 ** (1 / ln 4) = 0.85127
    np.testing.assert_allclose(float(t[0]), 0.8 ** (1 / math.log(4)), rtol=1e-6)
    assert abs(float(t[0]) - 0.85127) < 1e-4
    # one-hot logits: H = 0 -> T -> 0, floored at t_min
    _, t0, _, _ = _apply(D.EDT(t_min=0.05), np.array([[0.0, -np.inf, -np.inf]]), [1.0])
    assert float(t0[0]) == pytest.approx(0.05)
    _, td, _, _ = _apply(D.DynaTemp(temp=1.0, delta=0.5), uniform4, [1.0])
    assert float(td[0]) == pytest.approx(1.5)  # H / ln n = 1 -> T_max
    rng = np.random.default_rng(1)
    zr = rng.normal(size=(5, 40)) * 3
    zr[0, :10] = -np.inf  # masked candidates: n counts finite logits (llama.cpp cur_p->size)
    h, _ = np_entropy(zr)
    rule = D.DynaTemp(temp=0.9, delta=0.4, exponent=1.7)
    _, td, _, _ = _apply(rule, zr, np.ones(5))
    n = np.isfinite(zr).sum(-1)
    ref = 0.5 + 0.8 * (h / np.log(n)) ** 1.7
    np.testing.assert_allclose(np.asarray(td), ref, rtol=2e-5)
    _, te, _, _ = _apply(D.EDT(t0=0.7, theta=0.5, n=0.8), zr, np.ones(5))
    np.testing.assert_allclose(np.asarray(te), 0.7 * 0.8 ** (0.5 / h), rtol=2e-5)
    # temperature_fn forms used by the plain sampler
    np.testing.assert_allclose(
        np.asarray(D.EDT(t0=0.7, theta=0.5)(jnp.asarray(h))),
        0.7 * 0.8 ** (0.5 / h),
        rtol=2e-5,
    )
    dyn = D.DynaTemp(temp=0.9, delta=0.4, exponent=1.7, vocab_size=40)
    np.testing.assert_allclose(
        np.asarray(dyn(jnp.asarray(h[1:]))), 0.5 + 0.8 * (h[1:] / np.log(40)) ** 1.7, rtol=2e-5
    )
    with pytest.raises(ValueError, match="temp - delta"):
        D.DynaTemp(temp=0.5, delta=0.5)
    with pytest.raises(ValueError, match="n must"):
        D.EDT(n=1.2)


def test_mirostat_v2_hand_case():
    rule = D.Mirostat(version=2, tau=1.0, eta=0.1)
    z = np.log([[0.5, 0.25, 0.125, 0.125]])  # surprises 1, 2, 3, 3 bits
    zo, _, code, st = _apply(rule, z, [1.0], {"mu": jnp.array([2.5])})
    assert np.isfinite(np.asarray(zo)).tolist() == [[True, True, False, False]]
    assert int(code[0]) == 1
    # draw token 1 from the renormalised [2/3, 1/3]: surprise log2 3 = 1.585 bits
    st = rule.observe(st, jnp.log(jnp.array([1 / 3])))
    assert float(st["mu"][0]) == pytest.approx(2.5 - 0.1 * (math.log2(3) - 1.0), abs=1e-6)
    assert float(rule.init(3)["mu"][1]) == 2.0  # μ₀ = 2τ
    # μ below every surprise still keeps the top token
    zo, _, _, _ = _apply(rule, z, [1.0], {"mu": jnp.array([0.1])})
    assert np.isfinite(np.asarray(zo)).tolist() == [[True, False, False, False]]


def test_mirostat_v1_matches_llama_cpp_port():
    rng = np.random.default_rng(2)
    v = 64
    zr = rng.normal(size=(6, v)) * rng.uniform(0.5, 4, (6, 1))
    mu = rng.uniform(1.0, 8.0, 6)
    rule = D.Mirostat(version=1, tau=3.0, eta=0.1, m=20)
    zo, _, _, _ = _apply(rule, zr, np.ones(6), {"mu": jnp.asarray(mu, jnp.float32)})
    kept = np.isfinite(np.asarray(zo)).sum(-1)
    ref = [min(np_mirostat_v1_k(zr[i], mu[i], 20, v), v) for i in range(6)]
    np.testing.assert_array_equal(kept, ref)
    assert len(set(ref)) > 2  # the cases exercise different k


def test_entropix_quadrants():
    rule = D.Entropix(
        low_entropy=0.2, low_varentropy=0.2, high_entropy=2.0, high_varentropy=0.2, hot_factor=1.5
    )
    peaked = np.array([0.0, -9.0, -9.0, -9.0])
    flat = np.zeros(4) + np.array([0.0, 0.0, 0.0, -0.5])
    mid = np.array([0.0, -1.0, -2.0, -3.0])
    zo, t, code, _ = _apply(rule, np.stack([peaked, flat, mid]), [1.0, 1.0, 1.0])
    h, v = np_entropy(np.stack([peaked, flat, mid]))
    assert h[0] < 0.2 and v[0] < 0.2 and h[1] > 2.0 / 1.5  # hand check of the cases
    np.testing.assert_array_equal(np.asarray(code), [1, 0, 0])
    assert np.isfinite(np.asarray(zo)[0]).sum() == 1
    rule2 = D.Entropix(
        low_entropy=0.0, low_varentropy=0.0, high_entropy=1.3, high_varentropy=0.0, hot_factor=1.5
    )
    _, t, code, _ = _apply(rule2, np.stack([peaked, flat, mid]), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(np.asarray(code), [0, 2, 0])  # ln 4 > 1.3 only for "flat"
    np.testing.assert_allclose(np.asarray(t), [1.0, 1.5, 1.0])
    hj, vj = D.entropy_varentropy(jnp.asarray(np.stack([peaked, flat, mid]), jnp.float32))
    np.testing.assert_allclose(np.asarray(hj), h, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(vj), v, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------ inside the decode loop
TRACES = {"n": 0}


class CountingMinP(D.MinP):
    def apply(self, z, temp, state, t):
        TRACES["n"] += 1  # a Python side effect: runs once per trace, never per step
        return super().apply(z, temp, state, t)


class Counted:
    """Wraps any rule and counts how often its apply is traced (hashable: static under jit)."""

    def __init__(self, rule):
        self.rule = rule

    def __hash__(self):
        return hash(("Counted", self.rule))

    def __eq__(self, other):
        return isinstance(other, Counted) and other.rule == self.rule

    def init(self, batch):
        return self.rule.init(batch)

    def apply(self, z, temp, state, t):
        TRACES[type(self.rule).__name__] = TRACES.get(type(self.rule).__name__, 0) + 1
        return self.rule.apply(z, temp, state, t)

    def observe(self, state, logp):
        return self.rule.observe(state, logp)


@pytest.fixture(scope="module")
def setup():
    tok = CharTokenizer()
    model = Transformer(TransformerConfig.smoke(vocab_size=tok.vocab_size), rngs=nnx.Rngs(0))
    gd, st = nnx.split(model)
    pt, pm = tok.encode_prompts(["1+2=", "12+34=", "7+88="])
    return gd, st, jnp.asarray(pt), jnp.asarray(pm)


def _keys(n, step=0):
    return S.sample_keys(0, step, jnp.arange(n), jnp.zeros(n, jnp.int32))


def test_rules_in_compiled_loop_traced_once_and_logged(setup):
    gd, st, pt, pm = setup
    cfg = S.SamplingConfig(max_new_tokens=6, eos_id=-1)
    miro = D.Mirostat(version=2, tau=2.0, eta=0.3)
    rules = (CountingMinP(p_base=0.02), D.DynaTemp(temp=1.0, delta=0.5), miro)
    sampler = D.make_rule_sampler(gd, cfg, rules)
    TRACES["n"] = 0
    a = sampler(st, pt, pm, _keys(3))
    b = sampler(st, pt, pm, _keys(3, step=1))
    assert TRACES["n"] == 1  # traced once for 2 calls x 6 decode steps
    assert not np.array_equal(a.rollout.response, b.rollout.response)
    r = a.rollout
    m = np.asarray(r.response_mask)
    assert m.all() and a.codes.shape == (3, 6, 3)
    # DynaTemp sets the logged temperature from the logged model entropy (V = 25 candidates
    # unless min-p dropped some, which code 1 of rule 0 says)
    h = np.asarray(a.model_entropy, np.float64)
    dropped = np.asarray(a.codes)[..., 0] == 1
    assert (~dropped).any()
    ref_t = 0.5 + 1.0 * h / math.log(CharTokenizer().vocab_size)
    np.testing.assert_allclose(np.asarray(r.temperature)[~dropped], ref_t[~dropped], rtol=1e-5)
    # Mirostat μ: replay μ ← μ − η(−log2 π(x) − τ) from the logged log-probs
    mu = np.full(3, 4.0)
    for t in range(6):
        mu = mu - 0.3 * (-np.asarray(r.logp, np.float64)[:, t] / LN2 - 2.0)
    np.testing.assert_allclose(np.asarray(a.states[2]["mu"]), mu, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(a.codes)[..., 1], 1)
    assert np.all(np.asarray(a.varentropy) > 0)


def test_mirostat_v1_edt_entropix_in_compiled_loop(setup):
    gd, st, pt, pm = setup
    cfg = S.SamplingConfig(max_new_tokens=6, eos_id=-1)
    ent = D.Entropix(low_entropy=2.0, low_varentropy=1.0, high_entropy=2.0, high_varentropy=1.0)
    rules = (Counted(D.Mirostat(version=1, tau=2.5, eta=0.2, m=10)), Counted(D.EDT()), Counted(ent))
    sampler = D.make_rule_sampler(gd, cfg, rules)
    for k in ("Mirostat", "EDT", "Entropix"):
        TRACES[k] = 0
    a = sampler(st, pt, pm, _keys(3))
    sampler(st, pt, pm, _keys(3, step=2))
    assert [TRACES[k] for k in ("Mirostat", "EDT", "Entropix")] == [1, 1, 1]
    r, codes = a.rollout, np.asarray(a.codes)
    mu = np.full(3, 5.0)
    for t in range(6):
        mu = mu - 0.2 * (-np.asarray(r.logp, np.float64)[:, t] / LN2 - 2.5)
    np.testing.assert_allclose(np.asarray(a.states[0]["mu"]), mu, rtol=1e-5)
    assert set(np.unique(codes[..., 2])) <= {0, 1, 2} and (codes[..., 1] == 1).all()
    # Entropix argmax (code 1) leaves one token: log-prob 0 and entropy 0 are recorded
    cold = codes[..., 2] == 1
    assert cold.any() and (codes[..., 0] == 1).any()  # both rules fired somewhere
    np.testing.assert_array_equal(np.asarray(r.logp)[cold], 0.0)
    np.testing.assert_array_equal(np.asarray(r.entropy)[cold], 0.0)
    # EDT's temperature is below T0 = 1 (N = 0.8 < 1) except where Entropix heated it
    t_log = np.asarray(r.temperature)
    assert (t_log[codes[..., 2] != 2] < 1.0).all()


def test_no_rules_equals_plain_sampler_and_ead_switch(setup):
    gd, st, pt, pm = setup
    cfg = S.SamplingConfig(max_new_tokens=5, eos_id=-1)
    plain = S.make_sampler(gd, cfg)(st, pt, pm, _keys(3))
    tok = CharTokenizer()
    large = Transformer(
        TransformerConfig.tiny(vocab_size=tok.vocab_size, n_layers=2), rngs=nnx.Rngs(1)
    )
    gl, sl = nnx.split(large)
    ead = D.EAD(threshold=3.2125, window=2)
    e = D.make_rule_sampler(gd, cfg, (), large_graphdef=gl, ead=ead)(st, pt, pm, _keys(3), sl)
    # rolling-window replay of the switch on the logged small-model entropies
    hs = np.asarray(e.small_entropy, np.float64)
    roll = np.stack([hs[:, max(0, t - 1) : t + 1].mean(1) for t in range(5)], 1)
    np.testing.assert_array_equal(np.asarray(e.large), roll > 3.2125)
    frac = float(e.large_fraction)
    assert frac == pytest.approx((roll > 3.2125).mean())
    # where the small model was used, the rollout is the plain sampler's until the first switch
    first = np.argmax(np.asarray(e.large), axis=1)
    never = ~np.asarray(e.large).any(1)
    for i in range(3):
        upto = 5 if never[i] else first[i]
        np.testing.assert_array_equal(
            np.asarray(e.rollout.response)[i, :upto], np.asarray(plain.response)[i, :upto]
        )
    print(f"EAD large-model fraction {frac:.3f}")
    with pytest.raises(ValueError, match="together"):
        D.make_rule_sampler(gd, cfg, (), ead=ead)
