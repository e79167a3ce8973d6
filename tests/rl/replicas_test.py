"""Seeds as vmapped replicas: replica k of a K-replica update equals the single run with seed k
(own init, own batches, own root key) for several steps."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from entropylab.losses.objective import ObjectiveConfig, build_objective
from entropylab.models import Transformer, TransformerConfig
from entropylab.rl import step as S
from entropylab.rl.trainer import RLConfig, rl_optimizer

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
