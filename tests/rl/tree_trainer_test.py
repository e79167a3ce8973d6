"""The trainer draws its training groups with the tree sampler when ``RLConfig.tree_sampler`` is
set: one tree per prompt, S = group_size responses, the same rows as a direct tree-sampler call,
and a training step on them runs."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropylab.models import Transformer, TransformerConfig
from entropylab.rl import rng
from entropylab.rl import tasks as T
from entropylab.rl import tree_sampling as TS
from entropylab.rl.trainer import GRPOTrainer, RLConfig

TREE = TS.TreeConfig(n_init=2, budget=2, threshold=0.0, init_tokens=1, fill_at=3)


def test_tree_sampler_config_validation():
    with pytest.raises(ValueError, match="group_size"):
        RLConfig(group_size=8, tree_sampler=TREE)
    with pytest.raises(ValueError, match="fill_at"):
        RLConfig(group_size=4, tree_sampler=TS.TreeConfig(n_init=2, budget=2))
    with pytest.raises(TypeError, match="TreeConfig"):
        RLConfig(group_size=4, tree_sampler={"n_init": 2})
    with pytest.raises(ValueError, match="temperature_hook"):
        RLConfig(group_size=4, tree_sampler=TREE, temperature_hook="hapo")


def test_trainer_rollouts_are_trees_and_a_step_runs(tmp_path):
    tok = T.CharTokenizer()
    model = Transformer(
        TransformerConfig.smoke(vocab_size=tok.vocab_size, max_seq_len=24), rngs=nnx.Rngs(0)
    )
    cfg = RLConfig(
        prompts_per_step=2,
        group_size=4,
        max_new_tokens=6,
        minibatches=1,
        steps=1,
        eval_every=0,
        tree_sampler=TREE,
    )
    tr = GRPOTrainer(cfg, model, tok, tmp_path)
    problems = tr.task.sample(T.problem_rng(cfg.seed, 0), 2, cfg.difficulties)
    params = tr.state["params"]
    r, rewards = tr.rollout(params, problems, 0, 4)
    assert rewards.shape == (8,) and np.asarray(r.response_mask).any(1).all()
    # the same rows as a direct tree-sampler call with the trainer's keys (sample index = slot)
    pt, pm = T.encode_fixed(tok, [p.prompt for p in problems], cfg.prompt_width)
    keys = tr._keys(rng.ROLLOUT, 0, 2, 4).reshape(2, 4)
    direct = TS.make_tree_sampler(tr._gd_full, cfg.sampling, TREE)(
        tr._full_state(params), jnp.asarray(pt), jnp.asarray(pm), keys
    )
    np.testing.assert_array_equal(np.asarray(r.response), np.asarray(direct.rollout.response))
    assert np.asarray(direct.allocated).all() and (np.asarray(direct.parent)[:, 2:] >= 0).all()
    rec = tr.step(0)
    assert all(math.isfinite(v) for v in rec.values() if isinstance(v, float))
