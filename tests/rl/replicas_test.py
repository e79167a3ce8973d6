"""Seeds as vmapped replicas: replica k of a K-replica update equals the single run with seed k
(own init, own batches, own root key) for several steps; the same for the whole RL step
(rollout, scoring, prepare, update: ``ReplicatedGRPO`` vs ``GRPOTrainer``)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropylab.losses.objective import ObjectiveConfig, build_objective
from entropylab.models import Transformer, TransformerConfig
from entropylab.rl import step as S
from entropylab.rl import tasks as T
from entropylab.rl.replicas import ReplicatedGRPO
from entropylab.rl.trainer import GRPOTrainer, RLConfig, rl_optimizer

V, P, N, B, K, STEPS = 24, 4, 4, 8, 3, 3


def _batch(seed, step):
    rng = np.random.default_rng([seed, step])
    rmask = np.arange(N)[None, :] < rng.integers(1, N + 1, B)[:, None]
    rewards = rng.integers(0, 2, B).astype(np.float32)
    return S.RLBatch(
        tokens=jnp.asarray(rng.integers(3, V, (B, P + N)), jnp.int32),
        mask=jnp.asarray(np.concatenate([np.ones((B, P), bool), rmask], 1)),
        response_mask=jnp.asarray(rmask),
        advantages=S.compute_advantages(rewards, rmask, group_size=4),
        old_entropy=jnp.ones((B, N), jnp.float32),
        sample_logp=jnp.zeros((B, N), jnp.float32),
        rewards=jnp.asarray(rewards),
        group_ids=jnp.arange(B, dtype=jnp.int32) // 4,
    )


def test_replica_k_equals_single_seed_run():
    mcfg = dataclasses.replace(TransformerConfig.smoke(vocab_size=V, max_seq_len=16), n_layers=1)
    # Clip-Cov draws its random subset from the loss key: replicas must use their own keys
    obj = build_objective(
        ObjectiveConfig(
            policy_loss="clip_cov",
            policy_kwargs={"clip_cov_ratio": 0.3},
            regularizers=(("adaptive_entropy", {"target": 2.0}),),
        )
    )
    tx = rl_optimizer(RLConfig(learning_rate=1e-2))
    cfg = S.StepConfig(prompt_width=P, epochs=1, minibatches=2, group_size=4)
    states, gd, rest = [], None, None
    for k in range(K):
        gd, params, rest = nnx.split(Transformer(mcfg, rngs=nnx.Rngs(k)), nnx.Param, ...)
        states.append(
            {
                "params": params,
                "opt_state": tx.init(params),
                "obj_state": obj.init_state(),
                "step": jnp.zeros((), jnp.int32),
            }
        )
    single = S.make_update(obj, tx, gd, rest, cfg, donate=False)
    multi = S.make_replicated_update(obj, tx, gd, rest, cfg, donate=False)
    keys = jnp.stack([jax.random.key(k) for k in range(K)])
    stacked = S.stack_replicas(states)
    singles = list(states)
    for step in range(STEPS):
        batches = [_batch(k, step) for k in range(K)]
        stacked, m_all, _ = multi(stacked, S.stack_replicas(batches), keys)
        for k in range(K):
            singles[k], m, _ = single(singles[k], batches[k], jax.random.key(k))
            got = S.unstack_replica(m_all, k)
            for name in m:
                np.testing.assert_allclose(got[name], m[name], rtol=1e-4, atol=1e-6, err_msg=name)
    for k in range(K):
        got = S.unstack_replica(stacked, k)
        for a, b in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(singles[k]["params"])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
        for a, b in zip(
            jax.tree.leaves(got["obj_state"]), jax.tree.leaves(singles[k]["obj_state"])
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the replicas really differ (different seeds, different keys)
    p0 = jax.tree.leaves(S.unstack_replica(stacked, 0)["params"])[0]
    p1 = jax.tree.leaves(S.unstack_replica(stacked, 1)["params"])[0]
    assert not np.allclose(p0, p1)


# ------------------------------------------------------------------ the whole step (rollout too)
WS_SEEDS, WS_STEPS = (3, 5), 3
WS_CFG = RLConfig(
    difficulties=(1, 2),
    steps=WS_STEPS,
    prompts_per_step=2,
    group_size=4,
    minibatches=2,
    eval_every=0,
    prompt_width=8,
    max_new_tokens=4,
    learning_rate=1e-3,
    # Clip-Cov draws from the loss key; the adaptive entropy coefficient is component state
    objective=ObjectiveConfig(
        policy_loss="clip_cov",
        policy_kwargs={"clip_cov_ratio": 0.3},
        regularizers=(("adaptive_entropy", {"target": 2.0}),),
    ),
)


EXACT = ("reward/", "groups/", "response/finished", "rollout/temperature")


def _ws_model(seed):
    tok = T.CharTokenizer()
    mcfg = TransformerConfig.smoke(vocab_size=tok.vocab_size, max_seq_len=16)
    return Transformer(dataclasses.replace(mcfg, n_layers=1), rngs=nnx.Rngs(seed)), tok


def test_whole_step_replica_k_equals_single_seed_trainer(tmp_path):
    """Rollout, scoring, prepare and update of K = 2 seeds as replicas (ReplicatedGRPO.run) ==
    GRPOTrainer with each seed (own init) for 3 steps: every record value and the final params."""
    models = [_ws_model(s)[0] for s in WS_SEEDS]
    tok = T.CharTokenizer()
    rep = ReplicatedGRPO(WS_CFG, models, tok, tmp_path / "rep", seeds=WS_SEEDS)
    got = rep.run()
    assert [[r["step"] for r in recs] for recs in got] == [[1, 2, 3]] * 2
    for k, seed in enumerate(WS_SEEDS):
        lines = (tmp_path / "rep" / f"seed_{seed}" / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == WS_STEPS
        model, _ = _ws_model(seed)
        single = GRPOTrainer(dataclasses.replace(WS_CFG, seed=seed), model, tok, tmp_path / "1")
        worst = {}
        for s in range(WS_STEPS):
            want, have = single.step(s), dict(got[k][s])
            assert have.pop("step") == s + 1
            assert set(have) == set(want), set(have) ^ set(want)
            for name, v in want.items():
                if name.startswith(("time/", "perf/")):
                    continue
                if name.startswith(EXACT):  # host statistics of the same sampled tokens
                    assert have[name] == v, f"seed {seed} step {s} {name}: {have[name]} != {v}"
                    continue
                # float rounding of batched (vmapped) vs unbatched matmuls; near-zero metrics
                # such as pg/ppo_kl (~1e-5) differ by ~4e-5 absolute
                err = abs(have[name] - v) / (1e-4 + 1e-3 * abs(v))
                worst[name] = max(worst.get(name, 0.0), err)
        print(
            f"seed {seed}: largest normalised record errors",
            sorted(worst.items(), key=lambda x: -x[1])[:3],
        )
        bad = {n: e for n, e in worst.items() if not e <= 1.0}
        assert not bad, f"seed {seed}: |replica - single| / (1e-4 + 1e-3 |single|) > 1: {bad}"
        # run() wrote replica k's parameters back into models[k]
        _, p_rep, _ = nnx.split(models[k], nnx.Param, ...)
        dp = max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(jax.tree.leaves(p_rep), jax.tree.leaves(single.state["params"]))
        )
        print(f"seed {seed}: max |params replica - single| = {dp:.2e}")
        assert dp < 1e-4
    # the seeds really differ: different problems, samples and inits
    assert got[0][0]["rollout/entropy"] != got[1][0]["rollout/entropy"]


def test_replicated_grpo_rejects_bad_arguments():
    model, tok = _ws_model(0)
    with pytest.raises(ValueError, match="seeds"):
        ReplicatedGRPO(WS_CFG, model, tok, seeds=())
    with pytest.raises(ValueError, match="distinct"):
        ReplicatedGRPO(WS_CFG, model, tok, seeds=(1, 1))
    with pytest.raises(TypeError, match="seeds"):
        ReplicatedGRPO(WS_CFG, model, tok, seeds=(1, 2.0))
    with pytest.raises(ValueError, match="models"):
        ReplicatedGRPO(WS_CFG, [model], tok, seeds=(1, 2))
    with pytest.raises(ValueError, match="temperature_hook"):
        ReplicatedGRPO(
            dataclasses.replace(WS_CFG, temperature_hook="hapo"), model, tok, seeds=(1, 2)
        )
    with pytest.raises(ValueError, match="checkpoint_every"):
        ReplicatedGRPO(dataclasses.replace(WS_CFG, checkpoint_every=2), model, tok, seeds=(1,))
    with pytest.raises(ValueError, match="out_dir"):
        ReplicatedGRPO(WS_CFG, model, tok, seeds=(1,)).run()
