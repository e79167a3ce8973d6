"""The pure RL update step: 8 simulated devices == 1 device over 3 consecutive steps (loss,
grads → params, component state, statistics), fused == dense log-probs, the on-policy fused old
log-probs == recompute, advantage estimators against NumPy, minibatch plans, the policy log-prob
function."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropylab import parallel
from entropylab.logprobs import policy_logprobs
from entropylab.losses.objective import ObjectiveConfig, build_objective
from entropylab.models import Transformer, TransformerConfig
from entropylab.ops import logprobs_and_entropy
from entropylab.rl import step as S
from entropylab.rl.trainer import RLConfig, rl_optimizer

V, P, N, B = 24, 4, 5, 16


def _model():
    cfg = dataclasses.replace(TransformerConfig.smoke(vocab_size=V, max_seq_len=16), n_layers=1)
    return Transformer(cfg, rngs=nnx.Rngs(0))


def _batch(seed=0, b=B):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, V, (b, P + N)).astype(np.int32)
    pmask = np.ones((b, P), bool)
    pmask[::3, 0] = False  # some left padding
    lens = rng.integers(1, N + 1, b)
    rmask = np.arange(N)[None, :] < lens[:, None]
    rewards = rng.integers(0, 2, b).astype(np.float32)
    adv = S.compute_advantages(rewards, rmask, group_size=4)
    return S.RLBatch(
        tokens=jnp.asarray(tokens),
        mask=jnp.asarray(np.concatenate([pmask, rmask], 1)),
        response_mask=jnp.asarray(rmask),
        advantages=adv,
        old_entropy=jnp.asarray(rng.uniform(0.5, 2.0, (b, N)).astype(np.float32)),
        sample_logp=jnp.asarray(-rng.uniform(0.5, 3.0, (b, N)).astype(np.float32)),
        rewards=jnp.asarray(rewards),
        group_ids=jnp.arange(b, dtype=jnp.int32) // 4,
        ref_logp=jnp.asarray(-rng.uniform(0.5, 3.0, (b, N)).astype(np.float32)),
    )


# batch-global statistics everywhere: adaptive KL (pooled sequence KL), the adaptive entropy
# controller (global token mean), token-mean aggregation. All are continuous in the params, so
# two runs that differ by float rounding stay together over several steps; a discrete global
# selection (KL-Cov's top-k, Clip-Cov's band) can flip a near-tied token after one minibatch
# update (Adam turns rounding of a near-zero gradient entry into ~1e-3 of the step), so those
# are checked on 8 devices at the loss level (tests/losses/covariance_test.py).
OBJ = ObjectiveConfig(
    policy_loss="ppo_clip",
    kl_controller="adaptive",
    kl_coef=0.05,
    regularizers=(("adaptive_entropy", {"target": 4.0}),),
)


def _setup(step_cfg, obj=OBJ):
    model = _model()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    objective = build_objective(obj)
    tx = rl_optimizer(RLConfig(learning_rate=1e-2, steps=2))
    state = {
        "params": params,
        "opt_state": tx.init(params),
        "obj_state": objective.init_state(),
        "step": jnp.zeros((), jnp.int32),
    }
    return objective, tx, graphdef, rest, state


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def _close(a, b, atol, rtol, what):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb), what
    for x, y in zip(la, lb):
        np.testing.assert_allclose(
            np.asarray(x, np.float64), np.asarray(y, np.float64), atol=atol, rtol=rtol, err_msg=what
        )


def test_sharded_eight_devices_equals_one_device():
    """3 consecutive full RL steps (each 2 epochs x 2 minibatches) on a data=8 mesh == one
    device: every step's loss and metrics, statistics, component state and params (grads)."""
    cfg = S.StepConfig(prompt_width=P, epochs=2, minibatches=2, group_size=4, learning_rate=1e-2)
    objective, tx, gd, rest, state = _setup(cfg)
    one = S.make_update(objective, tx, gd, rest, cfg, donate=False)
    mesh = parallel.make_mesh(parallel.MeshConfig(data=8))
    eight = S.make_update(objective, tx, gd, rest, cfg, mesh=mesh)
    key = jax.random.key(3)
    s1 = _copy(state)  # each run carries its own state from step to step
    # placed as the trainer does (an unplaced first state compiles the update a second time)
    s8 = jax.device_put(_copy(state), S.state_shardings(state, mesh))
    kl_coefs = []
    for i in range(3):
        batch = _batch(i)
        s1, m1, st1 = one(s1, batch, key)
        s8, m8, st8 = eight(s8, jax.device_put(batch, parallel.batch_sharding(mesh)), key)
        assert set(m1) == set(m8)
        for k in m1:
            _close(m8[k], m1[k], 2e-5, 2e-4, f"step {i} metric {k}")
        _close(st8, st1, 2e-5, 2e-4, f"step {i} stats")
        _close(s8["obj_state"], s1["obj_state"], 1e-6, 1e-5, f"step {i} component state")
        # Adam normalises each gradient entry, so float-rounding differences of a near-zero
        # gradient entry show up at up to ~1e-3 of the step size lr = 1e-2 per update
        _close(s8["params"], s1["params"], 1e-4, 2e-4, f"step {i} params (grads)")
        kl_coefs.append(float(s1["obj_state"]["kl"]))
    # the component state moved every step (the test would not see a broken update otherwise)
    assert len(set([0.05, *kl_coefs])) == 4, kl_coefs
    assert float(s1["obj_state"]["regularizers"]["adaptive_entropy"].coef) > 0
    assert int(s8["step"]) == 3
    leaf = jax.tree.leaves(s8["params"])[0]
    assert isinstance(leaf.sharding, jax.sharding.NamedSharding)


def test_fused_equals_dense_and_onpolicy_equals_recompute():
    """One on-policy update four ways: fused/dense log-probs × own forward/recompute."""
    obj = ObjectiveConfig(regularizers=(("entropy_bonus", {"coef": 0.1}),))
    outs = []
    for fused in (True, False):
        for recompute in (False, True):
            cfg = S.StepConfig(
                prompt_width=P, fused_logprobs=fused, recompute_old_logp=recompute, vocab_block=7
            )
            assert cfg.on_policy == (not recompute)
            objective, tx, gd, rest, state = _setup(cfg, obj)
            upd = S.make_update(objective, tx, gd, rest, cfg)
            outs.append(upd(state, _batch(1), jax.random.key(0)))
    ref_state, ref_m, _ = outs[0]
    for st, m, _ in outs[1:]:
        _close(st["params"], ref_state["params"], 1e-6, 1e-4, "params")
        for k in ("loss/total", "pg/clipfrac", "train/entropy", "cov/mean", "rollout/logp_gap"):
            _close(m[k], ref_m[k], 1e-6, 1e-4, k)
    assert float(ref_m["pg/clipfrac"]) == 0.0  # ratio exactly 1 on-policy


def test_policy_logprobs_fused_dense_and_model_logits():
    model = _model()
    b = _batch(2)
    fused = policy_logprobs(model, b.tokens, start=P, attention_mask=b.mask, temperature=0.7)
    dense = policy_logprobs(
        model, b.tokens, start=P, attention_mask=b.mask, temperature=0.7, with_logits=True
    )
    pos = jnp.maximum(jnp.cumsum(b.mask.astype(jnp.int32), -1) - 1, 0)
    logits, _ = model(b.tokens, positions=pos, attention_mask=b.mask)
    lp, ent = logprobs_and_entropy(logits[:, P - 1 : -1], b.tokens[:, P:], temperature=0.7)
    for got in (fused, dense):
        np.testing.assert_allclose(got.logp, lp, atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(got.entropy, ent, atol=2e-5, rtol=1e-5)
    assert fused.logits is None and dense.logits.shape == (B, N, V)
    with pytest.raises(ValueError, match="start"):
        policy_logprobs(model, b.tokens, start=P + N)


def test_advantage_estimators_against_numpy():
    r = np.array([1, 0, 0, 1, 1, 1, 1, 0], np.float32)
    g = r.reshape(2, 4)
    mean, std = g.mean(1, keepdims=True), g.std(1, ddof=1, keepdims=True)
    want = {
        "grpo": ((g - mean) / (std + 1e-6)).reshape(-1),
        "dr_grpo": (g - mean).reshape(-1),
        "rloo": (g - (g.sum(1, keepdims=True) - g) / 3).reshape(-1),
        "reinforce": r,
    }
    # hand-checked: group 1 = [1, 0, 0, 1] → mean 0.5, RLOO baseline of row 0 = 1/3
    assert want["rloo"][0] == pytest.approx(2 / 3)
    mask = np.ones((8, 3), bool)
    mask[1, 2] = False
    for name, w in want.items():
        got = np.asarray(S.compute_advantages(r, mask, group_size=4, estimator=name))
        np.testing.assert_allclose(got[:, 0], w, rtol=1e-5, atol=1e-6, err_msg=name)
        assert got[1, 2] == 0.0
    with pytest.raises(ValueError, match="registered"):
        S.advantage_estimator("ppo_gae_typo")
    with pytest.raises(ValueError, match="already registered"):
        S.register_advantage_estimator("grpo", lambda r, *, group_size: r)


def test_minibatch_plan_groups_and_rows():
    key = jax.random.key(0)
    n = 16
    rows = S.StepConfig(prompt_width=P, epochs=2, minibatches=4, group_size=4)
    idx, keys = S._minibatch_plan(key, jnp.int32(5), n, rows)
    assert idx.shape == (8, 4) and keys.shape == (8,)
    for e in range(2):  # each epoch is a permutation of the rows
        assert sorted(np.asarray(idx[4 * e : 4 * e + 4]).reshape(-1).tolist()) == list(range(n))
    assert not np.array_equal(idx[:4], idx[4:])
    grp = dataclasses.replace(rows, shuffle="groups")
    idx, _ = S._minibatch_plan(key, jnp.int32(5), n, grp)
    for mb in np.asarray(idx):  # a minibatch is one whole group in order
        assert mb[0] % 4 == 0 and list(mb) == list(range(mb[0], mb[0] + 4))
    one = dataclasses.replace(rows, minibatches=1)
    idx, _ = S._minibatch_plan(key, jnp.int32(5), n, one)
    assert np.array_equal(idx, np.tile(np.arange(n), (2, 1)))
    with pytest.raises(ValueError, match="shuffle"):
        S.StepConfig(prompt_width=P, shuffle="tokens")
