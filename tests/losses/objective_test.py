"""Tests for entropylab.losses.objective: registries, config, composition, state, shard_map."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from entropylab.losses.covariance import clip_cov_loss, kl_cov_loss
from entropylab.losses.entropy import entropy_bonus
from entropylab.losses.kl import kl_loss
from entropylab.losses.objective import ObjectiveConfig, ObjectiveInputs, build_objective
from entropylab.losses.policy import ppo_clip_loss
from entropylab.losses.registry import (
    register_advantage_shaper,
    register_policy_loss,
    register_regularizer,
    registered_names,
)

B, T, V = 16, 6, 11
GROUP = 4


def _inputs(seed=0, b=B, t=T, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, t, V)) * 2.0
    lsm = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    tok = rng.integers(0, V, (b, t))
    logp = np.take_along_axis(lsm, tok[..., None], -1)[..., 0]
    p = np.exp(lsm)
    ent = -(p * lsm).sum(-1)
    mask = rng.uniform(size=(b, t)) < 0.8
    mask[:, 0] = True
    mask[3] = False  # an empty response
    extras = {
        "temp_logp": jnp.asarray(logp[: b // 2] - 0.1, dtype),
        "temp_rewards": jnp.asarray(rng.integers(0, 2, b // 2), dtype),
        "temp_mask": jnp.asarray(mask[: b // 2]),
        "rewards": jnp.asarray(rng.integers(0, 2, b), dtype),
        "difficulty": jnp.asarray(rng.integers(0, 3, b), jnp.int32),
        "planning_mask": jnp.asarray(rng.uniform(size=(b, t)) < 0.3),
    }
    a = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    return ObjectiveInputs(
        logp=a(logp),
        old_logp=a(logp + 0.15 * rng.normal(size=(b, t))),
        advantages=a(np.repeat(rng.normal(size=(b, 1)), t, 1) + 0.1 * rng.normal(size=(b, t))),
        mask=jnp.asarray(mask),
        entropy=a(ent),
        old_entropy=a(ent + 0.05 * rng.normal(size=(b, t))),
        ref_logp=a(logp + 0.2 * rng.normal(size=(b, t))),
        logits=a(logits),
        key=jax.random.key(seed),
        step=jnp.int32(5),
        group_ids=jnp.arange(b) // GROUP,
        extras=extras,
    )


_NAMES = registered_names()

# Keyword arguments each built-in needs to run on the test batch (the rest use defaults).
_POLICY_KW = {"clip_cov": {"clip_cov_ratio": 0.05, "clip_cov_lb": -1.0}, "kl_cov": {}}
_REG_KW = {"entropy_bonus": {"coef": 1e-2}, "adaptive_entropy": {"init_coef": 1e-3}}
_SHAPER_KW = {"ettrl": {"group_size": GROUP}, "hapo_advantages": {"group_size": GROUP}}


def _loss_and_grads(obj, inputs, state):
    def f(logp, ent, logits):
        inp = dataclasses.replace(inputs, logp=logp, entropy=ent, logits=logits)
        return obj.loss(inp, state)

    vg = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))
    return vg(inputs.logp, inputs.entropy, inputs.logits)


def _check_runs(cfg, inputs, diag=True):
    obj = build_objective(cfg)
    state = obj.init_state()
    (loss, met), grads = _loss_and_grads(obj, inputs, state)
    assert np.isfinite(loss), cfg
    for k, v in met.items():
        assert np.all(np.isfinite(np.asarray(v))), (k, v)
    for k in ("loss/total", "loss/policy", "pg/loss"):
        assert k in met, k
    for k in (
        ()
        if not diag
        else (
            "loss/policy",
            "entropy/mean",
            "entropy/p50",
            "entropy/p80",
            "entropy/p95",
            "cov/mean",
            "kl/k3",
        )
    ):
        assert k in met, k
    np.testing.assert_allclose(met["loss/total"], loss, rtol=1e-6)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    new, info = obj.update_state(state, met)
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(state)
    return loss, met


_BUILTIN = {k: tuple(n for n in v if not n.startswith("test_")) for k, v in _NAMES.items()}


@pytest.mark.parametrize("name", _BUILTIN["policy_loss"])
def test_every_policy_loss_runs_under_jit(name):
    cfg = ObjectiveConfig(
        policy_loss=name, policy_kwargs=_POLICY_KW.get(name, {}), diagnostics=False
    )
    _check_runs(cfg, _inputs(1), diag=False)


def test_every_regularizer_and_shaper_runs_under_jit():
    """All regularizers together and all shapers in sequence, in one composed objective."""
    regs = tuple((n, _REG_KW.get(n, {})) for n in _BUILTIN["regularizer"])
    shapers = tuple((n, _SHAPER_KW.get(n, {})) for n in _BUILTIN["advantage_shaper"])
    cfg = ObjectiveConfig(regularizers=regs, advantage_shapers=shapers, kl_coef=0.01)
    loss, met = _check_runs(cfg, _inputs(2))
    parts = met["loss/policy"] + met["loss/kl"] + sum(met[f"loss/{n}"] for n, _ in regs)
    np.testing.assert_allclose(loss, parts, rtol=1e-5)


@pytest.mark.parametrize("kind", ["regularizer", "advantage_shaper"])
def test_each_regularizer_and_shaper_alone_builds(kind):
    """Each name alone builds and traces (eval_shape: no compile) to a finite-shaped scalar."""
    inp = _inputs(3)
    for name in _BUILTIN[kind]:
        kw = {**_REG_KW, **_SHAPER_KW}.get(name, {})
        field = "regularizers" if kind == "regularizer" else "advantage_shapers"
        obj = build_objective(ObjectiveConfig(**{field: ((name, kw),)}))
        out = jax.eval_shape(obj.loss, inp, obj.init_state())
        assert out[0].shape == (), name


# ----------------------------------------------------------------------------- equalities
def test_ppo_clip_objective_equals_ppo_clip_loss():
    inp = _inputs(4)
    kw = {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "clip_ratio_c": 3.0}
    cfg = ObjectiveConfig(
        policy_loss="ppo_clip", policy_kwargs=kw, loss_agg_mode="seq-mean-token-mean"
    )
    obj = build_objective(cfg)
    vg = jax.value_and_grad(
        lambda lp: obj.loss(dataclasses.replace(inp, logp=lp), {}), has_aux=True
    )
    (loss, met), g1 = jax.jit(vg)(inp.logp)
    direct = lambda lp: ppo_clip_loss(  # noqa: E731
        lp, inp.old_logp, inp.advantages, inp.mask, loss_agg_mode="seq-mean-token-mean", **kw
    )
    (want, wmet), g2 = jax.jit(jax.value_and_grad(direct, has_aux=True))(inp.logp)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    for k, v in wmet.items():
        np.testing.assert_allclose(met[k], v, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-8)


def _np_reference(inp, eps_l, eps_h, kl_coef, ent_coef):
    """float64 NumPy: token-mean PPO-clip + kl_coef·token-mean k3 − ent_coef·token-mean H."""
    f = lambda x: np.asarray(x, np.float64)  # noqa: E731
    lp, old, adv, ref, h = map(
        f, (inp.logp, inp.old_logp, inp.advantages, inp.ref_logp, inp.entropy)
    )
    m = np.asarray(inp.mask, bool)
    r = np.exp(np.clip(lp - old, -20, 20))
    pg = np.maximum(-adv * r, -adv * np.clip(r, 1 - eps_l, 1 + eps_h))
    d = np.clip(ref - lp, -20, 20)
    k3 = np.clip(np.exp(d) - d - 1, -10, 10)
    mean = lambda x: x[m].sum() / m.sum()  # noqa: E731
    return mean(pg), mean(k3), mean(h), mean(pg) + kl_coef * mean(k3) - ent_coef * mean(h)


def test_composed_total_is_sum_of_parts(x64):
    inp = _inputs(5, dtype=jnp.float64)
    cfg = ObjectiveConfig(
        policy_loss="ppo_clip",
        policy_kwargs={"clip_ratio_low": 0.2, "clip_ratio_high": 0.28},
        kl_coef=0.05,
        kl_kind="low_var_kl",
        regularizers=(("entropy_bonus", {"coef": 0.01}),),
    )
    loss, met = jax.jit(build_objective(cfg).loss)(inp, {})
    pg, k3, h, total = _np_reference(inp, 0.2, 0.28, 0.05, 0.01)
    np.testing.assert_allclose(loss, total, rtol=1e-10)
    np.testing.assert_allclose(met["loss/policy"], pg, rtol=1e-10)
    np.testing.assert_allclose(met["kl/k3"], k3, rtol=1e-10)
    np.testing.assert_allclose(met["loss/kl"], 0.05 * k3, rtol=1e-10)
    np.testing.assert_allclose(met["loss/entropy_bonus"], -0.01 * h, rtol=1e-10)
    np.testing.assert_allclose(met["entropy/mean"], h, rtol=1e-10)
    # and the same from the library functions directly
    lib = (
        ppo_clip_loss(inp.logp, inp.old_logp, inp.advantages, inp.mask, clip_ratio_high=0.28)[0]
        + 0.05 * kl_loss(inp.logp, inp.ref_logp, inp.mask)[0]
        + entropy_bonus(inp.entropy, inp.mask, coef=0.01)[0]
    )
    np.testing.assert_allclose(loss, lib, rtol=1e-12)


def test_covariance_policies_match_direct():
    inp = _inputs(6)
    mode = "seq-mean-token-sum-norm"
    kw = {"clip_cov_ratio": 0.05, "clip_cov_lb": -1.0, "clip_cov_ub": 5.0}
    cfgs = (
        ObjectiveConfig(policy_loss="clip_cov", policy_kwargs=kw, loss_agg_mode=mode),
        ObjectiveConfig(
            policy_loss="kl_cov", policy_kwargs={"kl_cov_ratio": 0.1}, loss_agg_mode=mode
        ),
    )

    @jax.jit
    def both(i):
        got = [
            build_objective(dataclasses.replace(c, diagnostics=False)).loss(i, {})[0] for c in cfgs
        ]
        args = (i.logp, i.old_logp, i.advantages, i.mask)
        want = [
            clip_cov_loss(*args, key=i.key, loss_agg_mode=mode, **kw)[0],
            kl_cov_loss(*args, kl_cov_ratio=0.1, loss_agg_mode=mode)[0],
        ]
        return got, want

    got, want = both(inp)
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ----------------------------------------------------------------------------- errors
def test_unknown_names_raise_listing_valid():
    with pytest.raises(ValueError, match="unknown policy_loss 'ppo'.*ppo_clip"):
        build_objective(ObjectiveConfig(policy_loss="ppo"))
    with pytest.raises(ValueError, match="unknown regularizer 'entropy'.*entropy_bonus"):
        build_objective(ObjectiveConfig(regularizers=("entropy",)))
    with pytest.raises(ValueError, match="unknown advantage_shaper"):
        build_objective(ObjectiveConfig(advantage_shapers=(("nope", {}),)))


def test_duplicate_names_raise():
    with pytest.raises(ValueError, match="duplicate name 'entropy_bonus'"):
        ObjectiveConfig(regularizers=(("entropy_bonus", {"coef": 1e-3}), "entropy_bonus"))
    with pytest.raises(ValueError, match="already registered"):
        register_policy_loss("ppo_clip", lambda inputs, ctx: (0.0, {}))
    with pytest.raises(ValueError, match="already registered"):
        register_regularizer("entropy_bonus", lambda inputs, ctx: (0.0, {}))


def test_unknown_and_bad_kwargs_raise():
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['clip_ratio'\].*accepted"):
        build_objective(ObjectiveConfig(policy_kwargs={"clip_ratio": 0.2}))
    with pytest.raises(ValueError, match="unknown argument"):
        build_objective(ObjectiveConfig(regularizers=(("entropy_bonus", {"coeff": 1.0}),)))
    with pytest.raises(ValueError, match="rule must be one of"):
        build_objective(ObjectiveConfig(regularizers=(("adaptive_entropy", {"rule": "pid"}),)))
    with pytest.raises(ValueError, match="loss_agg_mode"):
        ObjectiveConfig(loss_agg_mode="mean")
    with pytest.raises(ValueError, match="kl_kind"):
        ObjectiveConfig(kl_kind="full")
    with pytest.raises(ValueError, match="not hashable|Python scalars"):
        ObjectiveConfig(policy_kwargs={"clip_ratio_low": jnp.float32(0.2)})


def test_missing_inputs_raise():
    inp = _inputs(7)
    obj = build_objective(ObjectiveConfig(kl_coef=0.1, diagnostics=False))
    with pytest.raises(ValueError, match="ref_logp"):
        obj.loss(dataclasses.replace(inp, ref_logp=None), {})
    obj = build_objective(ObjectiveConfig(policy_loss="forking"))
    with pytest.raises(ValueError, match="needs inputs.entropy"):
        obj.loss(dataclasses.replace(inp, entropy=None), {})
    obj = build_objective(ObjectiveConfig(policy_loss="steer"))
    with pytest.raises(ValueError, match="needs inputs.old_entropy"):
        obj.loss(dataclasses.replace(inp, old_entropy=None), {})
    obj = build_objective(
        ObjectiveConfig(policy_loss="forking", policy_kwargs={"entropy_source": "old"})
    )
    with pytest.raises(ValueError, match="needs inputs.old_entropy"):
        obj.loss(dataclasses.replace(inp, old_entropy=None), {})
    obj = build_objective(ObjectiveConfig(policy_loss="aepo"))
    with pytest.raises(ValueError, match="temp_logp"):
        obj.loss(dataclasses.replace(inp, extras={}), {})


def test_config_hashable_and_static_under_jit():
    mk = lambda: ObjectiveConfig(  # noqa: E731
        policy_kwargs={"clip_ratio_low": 0.2, "clip_ratio_high": 0.28},
        regularizers=(("entropy_bonus", {"coef": 1e-3}),),
        advantage_shapers=[("ettrl", {"group_size": 4})],
    )
    a, b = mk(), mk()
    assert a == b and hash(a) == hash(b)
    assert dict(a.policy_kwargs) == {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28}
    assert a != dataclasses.replace(a, kl_coef=0.1)
    inp = _inputs(8)
    f = jax.jit(lambda cfg, i: build_objective(cfg).loss(i, {})[0], static_argnums=0)
    a, b = (dataclasses.replace(x, diagnostics=False) for x in (a, b))
    np.testing.assert_allclose(f(a, inp), f(b, inp), rtol=0)
    assert f._cache_size() == 1  # equal configs hit the same compiled function
    assert hash(build_objective(a)) == hash(build_objective(b))


# ----------------------------------------------------------------------------- state
def test_adaptive_entropy_state_moves_toward_target():
    inp = _inputs(9)
    h = float(np.asarray(inp.entropy)[np.asarray(inp.mask)].mean())
    for target, sign in ((h + 1.0, +1), (h - 1.0, -1)):
        cfg = ObjectiveConfig(
            regularizers=(
                (
                    "adaptive_entropy",
                    {"target": target, "init_coef": 5e-3, "delta": 1e-3, "gate": False},
                ),
            ),
            diagnostics=False,
        )
        obj = build_objective(cfg)
        st0 = obj.init_state()
        _, met = jax.jit(obj.loss)(inp, st0)
        np.testing.assert_allclose(met["entropy/adaptive_measured"], h, rtol=1e-5)
        st1, info = jax.jit(obj.update_state)(st0, met)
        c0 = float(st0["regularizers"]["adaptive_entropy"].coef)
        c1 = float(st1["regularizers"]["adaptive_entropy"].coef)
        assert np.sign(c1 - c0) == sign, (target, c0, c1)
        np.testing.assert_allclose(c1, c0 + sign * 1e-3, rtol=1e-5)
        # the coefficient used in the loss is the state's: bonus = −c·mean(H)
        np.testing.assert_allclose(met["loss/adaptive_entropy"], -c0 * h, rtol=1e-5)


def test_adaptive_kl_controller():
    inp = _inputs(10)
    cfg = ObjectiveConfig(
        kl_coef=0.1, kl_controller="adaptive", kl_target=1e-6, kl_horizon=10.0, diagnostics=False
    )
    obj = build_objective(cfg)
    st0 = obj.init_state()
    _, met = obj.loss(inp, st0)
    st1, _ = obj.update_state(st0, met)
    # KL far above target → e = +0.2 → β·(1 + 0.2·B/horizon)
    np.testing.assert_allclose(st1["kl"], 0.1 * (1 + 0.2 * B / 10.0), rtol=1e-6)


# ----------------------------------------------------------------------------- user components
def test_user_registered_components():
    @register_regularizer("test_l2_logp", needs=())
    def l2(inputs, ctx, *, coef=1.0):
        m = inputs.mask
        v = jnp.sum(jnp.where(m, inputs.logp**2, 0.0))
        return coef * v, {"test_l2/value": v}

    @register_advantage_shaper("test_double")
    def double(inputs, ctx, *, factor=2.0):
        return inputs.advantages * factor, {}

    inp = _inputs(11)
    cfg = ObjectiveConfig(
        regularizers=(("test_l2_logp", {"coef": 0.5}),), advantage_shapers=("test_double",)
    )
    loss, met = build_objective(cfg).loss(inp, {})
    want = ppo_clip_loss(inp.logp, inp.old_logp, 2.0 * inp.advantages, inp.mask)[0]
    want = want + 0.5 * np.sum(np.where(inp.mask, np.asarray(inp.logp) ** 2, 0.0))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown argument"):
        build_objective(ObjectiveConfig(regularizers=(("test_l2_logp", {"c": 1.0}),)))


# ----------------------------------------------------------------------------- distributed
def test_composed_objective_shard_map_matches_one_device():
    inp = _inputs(12)
    cfg = ObjectiveConfig(
        policy_loss="clip_cov",
        policy_kwargs={"clip_cov_ratio": 0.05, "clip_cov_lb": -1.0},
        kl_coef=0.05,
        regularizers=(
            ("entropy_bonus", {"coef": 1e-2}),
            ("adaptive_entropy", {"init_coef": 1e-3, "target": 5.0}),
        ),
        advantage_shapers=(("ettrl", {"group_size": 2}),),
    )
    obj = build_objective(cfg)
    state = obj.init_state()

    def fn(logp, old_logp, adv, mask, ent, old_ent, ref, *, axis_name):
        i = ObjectiveInputs(
            logp=logp,
            old_logp=old_logp,
            advantages=adv,
            mask=mask,
            entropy=ent,
            old_entropy=old_ent,
            ref_logp=ref,
            key=inp.key,
            step=inp.step,
        )
        return obj.loss(i, state, axis_name=axis_name)

    args = (
        inp.logp,
        inp.old_logp,
        inp.advantages,
        inp.mask,
        inp.entropy,
        inp.old_entropy,
        inp.ref_logp,
    )
    assert_matches_distributed(fn, args, atol=2e-6, rtol=2e-5, methods=("shard_map",))


_PROP_CFG = ObjectiveConfig(
    kl_coef=0.3, regularizers=(("entropy_bonus", {"coef": 0.05}),), diagnostics=False
)
_prop_loss = jax.jit(build_objective(_PROP_CFG).loss)


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 1.0))
def test_property_total_is_parts(seed, adv_scale):
    inp = _inputs(seed, b=8, t=5)
    inp = dataclasses.replace(inp, advantages=inp.advantages * adv_scale)
    loss, met = _prop_loss(inp, {})
    parts = met["loss/policy"] + met["loss/kl"] + met["loss/entropy_bonus"]
    np.testing.assert_allclose(loss, parts, rtol=1e-5, atol=1e-6)
    _, _, _, total = _np_reference(inp, 0.2, 0.2, 0.3, 0.05)
    np.testing.assert_allclose(loss, total, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- gradients
def test_check_grads_composed(x64):
    inp = _inputs(13, b=4, t=4, dtype=jnp.float64)
    cfg = ObjectiveConfig(
        policy_loss="ppo_clip",
        policy_kwargs={"clip_ratio_low": 10.0, "clip_ratio_high": 10.0},
        kl_coef=0.1,
        kl_kind="k2",
        regularizers=(("entropy_bonus", {"coef": 0.05}),),
        diagnostics=False,
    )
    obj = build_objective(cfg)
    f = jax.jit(lambda lp, h: obj.loss(dataclasses.replace(inp, logp=lp, entropy=h), {})[0])
    check_grads(f, (inp.logp, inp.entropy), order=1, modes=["rev"], eps=1e-6)


def test_finite_under_masked_neg_inf():
    """−inf log-probs / NaN entropies on padding give finite loss, metrics and gradients."""
    inp = _inputs(14)
    pad = ~np.asarray(inp.mask)
    inp = dataclasses.replace(
        inp,
        logp=jnp.where(pad, -jnp.inf, inp.logp),
        old_logp=jnp.where(pad, -jnp.inf, inp.old_logp),
        ref_logp=jnp.where(pad, -jnp.inf, inp.ref_logp),
        entropy=jnp.where(pad, jnp.nan, inp.entropy),
    )
    cfg = ObjectiveConfig(
        policy_loss="ppo_clip",
        kl_coef=0.1,
        regularizers=(("entropy_bonus", {"coef": 1e-2}),),
    )
    _check_runs(cfg, inp)


# ----------------------------------------------------------------------------- SIREN anchor
def test_siren_anchor_is_set_once_then_frozen():
    inp = _inputs(15)
    obj = build_objective(
        ObjectiveConfig(regularizers=(("siren", {"coef": 0.5, "top_k": 8}),), diagnostics=False)
    )
    loss_fn = jax.jit(obj.loss)
    st0 = obj.init_state()
    _, m0 = loss_fn(inp, st0)
    # first step: anchor = H_sel of the (detached) current top-p entropies → zero penalty
    np.testing.assert_allclose(m0["entropy/siren_mse"], 0.0, atol=1e-12)
    st1, _ = obj.update_state(st0, m0)
    assert bool(st1["regularizers"]["siren"]["initialized"])
    a1 = float(st1["regularizers"]["siren"]["anchor"])
    np.testing.assert_allclose(a1, m0["entropy/siren_sel"], rtol=1e-6)
    # a later batch uses the frozen anchor: loss = c·(H_sel − a1)²
    inp2 = _inputs(16)
    _, m2 = loss_fn(inp2, st1)
    np.testing.assert_allclose(m2["entropy/siren_anchor"], a1, rtol=1e-6)
    np.testing.assert_allclose(
        m2["loss/siren"], 0.5 * (float(m2["entropy/siren_sel"]) - a1) ** 2, rtol=1e-5
    )
    st2, _ = obj.update_state(st1, m2)
    np.testing.assert_allclose(st2["regularizers"]["siren"]["anchor"], a1)


# ----------------------------------------------------------------------------- stats API
_STATS_CFG = ObjectiveConfig(
    kl_coef=0.1,
    kl_controller="adaptive",
    kl_target=0.05,
    kl_horizon=40.0,
    regularizers=(
        ("adaptive_entropy", {"target": 1.0, "init_coef": 5e-3, "delta": 1e-3, "gate": False}),
        ("siren", {"coef": 0.5, "top_k": 8}),
        ("ares_kl", {"kl_coef": 0.01, "update_every": 1}),
    ),
    diagnostics=False,
)


def _np_k3(lp, ref):
    d = np.clip(ref - lp, -20, 20)
    return np.clip(np.exp(d) - d - 1, -10, 10)


def test_stats_two_minibatches_then_one_update_under_jit():
    """Stats of 2 mini-batches added in a lax.scan, then one update, equal the documented
    whole-batch semantics (NumPy float64 for the KL controller and the adaptive entropy)."""
    from entropylab.losses.ares import ares_kl_init, ares_kl_update
    from entropylab.losses.siren import siren_anchor

    inp = _inputs(20)
    obj = build_objective(_STATS_CFG)
    st0 = obj.init_state()
    per_row = dataclasses.replace(
        inp, key=None, step=None, group_ids=None, extras={"difficulty": inp.extras["difficulty"]}
    )
    halves = jax.tree.map(lambda x: x.reshape(2, B // 2, *x.shape[1:]), per_row)
    zero = obj.zero_stats()

    @jax.jit
    def run(st, hs):
        def body(acc, mb):
            _, _, s = obj.loss_and_stats(mb, st)
            return obj.add_stats(acc, s), None

        acc, _ = jax.lax.scan(body, obj.zero_stats(), hs)
        return acc, obj.update_state_from_stats(st, acc)

    acc, (st1, info) = run(st0, halves)
    # the carry has zero_stats' exact structure, shapes and dtypes
    assert jax.tree.structure(acc) == jax.tree.structure(zero)
    for a, z in zip(jax.tree.leaves(acc), jax.tree.leaves(zero)):
        assert a.shape == z.shape and a.dtype == z.dtype == jnp.float32

    f = lambda x: np.asarray(x, np.float64)  # noqa: E731
    lp, ref, h, m = f(inp.logp), f(inp.ref_logp), f(inp.entropy), np.asarray(inp.mask, bool)
    # adaptive entropy: one step on the token mean over all 16 rows (target above → +delta)
    h_all = h[m].mean()
    np.testing.assert_allclose(info["entropy/adaptive_measured"], h_all, rtol=1e-6)
    np.testing.assert_allclose(acc["regularizers"]["adaptive_entropy"]["entropy"].count, m.sum())
    c1 = float(st1["regularizers"]["adaptive_entropy"].coef)
    np.testing.assert_allclose(c1, 5e-3 + 1e-3 * np.sign(1.0 - h_all), rtol=1e-6)
    # adaptive KL: current_kl = mean over ALL sequences of the per-sequence mean k3; n = 16
    k3 = _np_k3(lp, ref)
    seq = np.array([k3[i][m[i]].mean() if m[i].any() else 0.0 for i in range(B)])
    err = np.clip(seq.mean() / 0.05 - 1.0, -0.2, 0.2)
    np.testing.assert_allclose(info["kl/current"], seq.mean(), rtol=1e-5)
    np.testing.assert_allclose(st1["kl"], 0.1 * (1 + err * B / 40.0), rtol=1e-6)
    # ARES: one controller call on each bucket's KL over the whole batch, the release's statistic
    # (mean over the bucket's responses of each response's token-mean KL; empty response → 0)
    b = np.asarray(inp.extras["difficulty"])
    rows = [np.flatnonzero(b == d) for d in range(3)]
    kl_b = np.array([seq[r].mean() if len(r) else 0.0 for r in rows])
    want = ares_kl_update(
        ares_kl_init(target_kl=0.01), kl_b, [len(r) > 0 for r in rows], update_every=1
    )
    np.testing.assert_allclose(st1["regularizers"]["ares_kl"].beta, want.beta, rtol=1e-5)
    # SIREN: the anchor is the row-weighted mean of the two mini-batches' candidates
    from entropylab.losses.siren import top_p_entropy

    ep = top_p_entropy(inp.logits, top_k=8)
    rows = [m[:8].any(1).sum(), m[8:].any(1).sum()]
    cand = [float(siren_anchor(ep[s], inp.mask[s])) for s in (slice(0, 8), slice(8, 16))]
    want_anchor = (rows[0] * cand[0] + rows[1] * cand[1]) / sum(rows)
    np.testing.assert_allclose(st1["regularizers"]["siren"]["anchor"], want_anchor, rtol=1e-5)
    assert bool(st1["regularizers"]["siren"]["initialized"])
    # a second update from fresh stats leaves the SIREN anchor frozen
    st2, _ = obj.update_state_from_stats(st1, acc)
    np.testing.assert_allclose(st2["regularizers"]["siren"]["anchor"], want_anchor, rtol=1e-5)


def test_update_from_zero_stats_keeps_state():
    obj = build_objective(_STATS_CFG)
    st0 = obj.init_state()
    st1, _ = obj.update_state_from_stats(st0, obj.zero_stats())
    for a, b in zip(jax.tree.leaves(st0), jax.tree.leaves(st1)):
        np.testing.assert_array_equal(a, b)


def test_stats_of_stateless_objective_is_empty_and_legacy_hook_raises():
    obj = build_objective(ObjectiveConfig(kl_coef=0.1))
    assert obj.zero_stats() == {} and obj.init_state() == {}
    assert obj.update_state_from_stats({}, {}) == ({}, {})

    @register_regularizer(
        "test_legacy_state",
        init_state=lambda kw: jnp.zeros(()),
        update_state=lambda slot, met, kw: (slot + 1, {}),
    )
    def legacy(inputs, ctx):
        return jnp.zeros(()), {}

    obj = build_objective(ObjectiveConfig(regularizers=("test_legacy_state",)))
    with pytest.raises(ValueError, match="test_legacy_state.*update_from_stats"):
        obj.update_state_from_stats(obj.init_state(), obj.zero_stats())
    with pytest.raises(ValueError, match="`stats` and `zero_stats` go together"):
        register_regularizer("test_half_stats", lambda inputs, ctx: (0.0, {}), stats=lambda *a: {})


def test_needs_and_needs_logits():
    base = {"logp", "old_logp", "advantages", "mask"}
    need = lambda **kw: build_objective(ObjectiveConfig(**kw)).needs  # noqa: E731
    assert need() == base
    assert need(kl_coef=0.1) == base | {"ref_logp"}
    assert need(policy_loss="forking") == base | {"entropy"}
    assert need(policy_loss="forking", policy_kwargs={"entropy_source": "old"}) == base | {
        "old_entropy"
    }
    assert need(policy_loss="steer") == base | {"old_entropy"}
    assert need(policy_loss="aepo") == base | {
        "extras.temp_logp",
        "extras.temp_rewards",
        "extras.temp_mask",
    }
    assert need(regularizers=(("entropy_bonus", {"schedule": "linear"}),)) == base | {
        "entropy",
        "step",
    }
    assert need(advantage_shapers=("hicra",)) == base | {"old_entropy"}
    sir = build_objective(ObjectiveConfig(regularizers=("siren",)))
    assert sir.needs == base | {"logits"} and sir.needs_logits
    assert not build_objective(ObjectiveConfig(policy_loss="forking")).needs_logits


def test_diagnostics_once_and_loss_without_them():
    inp = _inputs(21)
    obj = build_objective(
        ObjectiveConfig(kl_coef=0.1, advantage_shapers=("entropy_aware_advantages",))
    )

    @jax.jit
    def both(i):
        return obj.loss(i, {}), obj.loss(i, {}, diagnostics=False), obj.diagnostics(i)

    (l1, m1), (l2, m2), diag = both(inp)
    np.testing.assert_allclose(l1, l2, rtol=0)
    assert not any(k.startswith(("cov/", "entropy/")) for k in m2), sorted(m2)
    for k in ("cov/mean", "cov/p95", "cov/top_mean", "entropy/mean", "entropy/p95", "kl/k3"):
        np.testing.assert_allclose(diag[k], m1[k], rtol=1e-6, err_msg=k)
    # predicted entropy change (natural PG, η = 1) = −Cov(log π, Ã) on the shaped advantages
    np.testing.assert_allclose(diag["cov/predicted_dH"], -diag["cov/mean"], rtol=1e-6)
    # independent check of cov/mean against NumPy on the shaped advantages
    m = np.asarray(inp.mask, bool)
    h = np.asarray(inp.entropy, np.float64)
    z = (h - h[m].mean()) / h[m].std(ddof=1)
    adv = np.asarray(inp.advantages, np.float64) * (1 + 0.2 * np.where(m, z, 0.0))
    lp = np.asarray(inp.logp, np.float64)
    cov = (lp[m] - lp[m].mean()) * (adv[m] - adv[m].mean())
    np.testing.assert_allclose(diag["cov/mean"], cov.mean(), rtol=1e-4)


# ----------------------------------------------------------------------------- registry
def test_registered_names_are_unique_and_documented():
    """The built-in names (one per method, unique across kinds; 'aepo' means one thing)."""
    assert _BUILTIN == {
        "policy_loss": (
            "aepo",
            "aepo_agentic",
            "cispo",
            "clip_cov",
            "erc",
            "forking",
            "gspo",
            "hapo",
            "kl_cov",
            "ppo_clip",
            "reinforce",
            "steer",
        ),
        "regularizer": (
            "adaptive_entropy",
            "aepo_reinforce",
            "ares_kl",
            "entropic",
            "entropy_bonus",
            "siren",
            "tea_rl",
        ),
        "advantage_shaper": (
            "entropy_advantage",
            "entropy_aware_advantages",
            "ettrl",
            "hapo_advantages",
            "hicra",
        ),
    }
    with pytest.raises(ValueError, match="already registered.*unique across kinds"):
        register_regularizer("ppo_clip", lambda inputs, ctx: (0.0, {}))


def test_library_function_bound_by_name():
    """A plain loss function registers as is; the objective binds inputs to its parameters by
    name (fields, extras, entropy source, aggregation) and the rest are hyper-parameters."""

    @register_policy_loss("test_bound_ppo", extras=("scale",), entropy_source="old")
    def my_loss(
        logp, old_logp, advantages, mask, *, entropy, scale, eps=0.2, loss_agg_mode, axis_name=None
    ):
        loss, met = ppo_clip_loss(
            logp,
            old_logp,
            advantages * scale,
            mask,
            clip_ratio_low=eps,
            loss_agg_mode=loss_agg_mode,
            axis_name=axis_name,
        )
        return loss + 0.0 * jnp.sum(entropy), met

    assert my_loss.__name__ == "my_loss"  # the decorator returns the function itself
    inp = _inputs(17)
    inp = dataclasses.replace(inp, extras={**inp.extras, "scale": jnp.float32(2.0)})
    cfg = ObjectiveConfig(
        policy_loss="test_bound_ppo",
        policy_kwargs={"eps": 0.1},
        loss_agg_mode="seq-mean-token-mean",
        diagnostics=False,
    )
    obj = build_objective(cfg)
    assert obj.needs == {"logp", "old_logp", "advantages", "mask", "old_entropy", "extras.scale"}
    loss, _ = obj.loss(inp, {})
    want, _ = ppo_clip_loss(
        inp.logp,
        inp.old_logp,
        2.0 * inp.advantages,
        inp.mask,
        clip_ratio_low=0.1,
        loss_agg_mode="seq-mean-token-mean",
    )
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    with pytest.raises(ValueError, match="needs inputs.old_entropy"):
        obj.loss(dataclasses.replace(inp, old_entropy=None), {})
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['loss_agg_mode'\]"):
        build_objective(
            ObjectiveConfig(
                policy_loss="test_bound_ppo", policy_kwargs={"loss_agg_mode": "token-mean"}
            )
        )
    with pytest.raises(ValueError, match="entropy_source must be one of"):
        build_objective(
            ObjectiveConfig(policy_loss="test_bound_ppo", policy_kwargs={"entropy_source": "new"})
        )


def test_objective_seq_advantages_old_none_and_token_weights():
    inp = _inputs(18)
    obj = build_objective(ObjectiveConfig(diagnostics=False))
    seq_adv = inp.advantages[:, 0]
    on_policy = dataclasses.replace(inp, old_logp=None, advantages=seq_adv)
    w = jnp.linspace(0.5, 1.5, B)
    got, _ = obj.loss(dataclasses.replace(on_policy, token_weights=w), {})
    want, _ = ppo_clip_loss(inp.logp, inp.logp, seq_adv, inp.mask, token_weights=w)
    np.testing.assert_allclose(got, want, rtol=1e-6)
