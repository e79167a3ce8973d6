"""Every registered objective component runs through the GRPO trainer (2 smoke steps each).

A newly registered policy loss, regularizer or advantage shaper that the trainer cannot feed
(an input no extras provider fills, a required keyword argument this file does not know) fails
here. The model, batch shape and sampler are shared, so each name costs one update compile.
"""

import dataclasses
import time

import jax
import numpy as np
import pytest
from flax import nnx

from entropylab.losses import registry
from entropylab.losses.objective import ObjectiveConfig
from entropylab.models import Transformer, TransformerConfig
from entropylab.rl import tasks as T
from entropylab.rl.trainer import GRPOTrainer, RLConfig

# values for required keyword arguments, by argument name (group-based shapers)
REQUIRED = {"group_size": 4}

BASE = RLConfig(
    difficulties=(1,),
    steps=2,
    prompts_per_step=2,
    group_size=4,
    minibatches=1,  # one compile per name; step_test covers minibatch statistics
    eval_every=0,
    prompt_width=8,
    max_new_tokens=3,
    checkpoint_every=0,
    aepo_target_entropy=10.0,
)


@pytest.fixture(scope="module")
def model_tok():
    tok = T.CharTokenizer()
    cfg = dataclasses.replace(
        TransformerConfig.smoke(vocab_size=tok.vocab_size, max_seq_len=16), n_layers=1
    )
    return Transformer(cfg, rngs=nnx.Rngs(0)), tok


def _objective(kind, name):
    spec = registry.get_component(kind, name)
    missing = sorted(set(spec.required) - set(REQUIRED))
    assert not missing, f"{kind} {name!r}: add a test value for required argument(s) {missing}"
    kw = {k: REQUIRED[k] for k in spec.required}
    if kind == "policy_loss":
        return ObjectiveConfig(policy_loss=name, policy_kwargs=kw)
    if kind == "regularizer":
        return ObjectiveConfig(regularizers=((name, kw),))
    return ObjectiveConfig(advantage_shapers=((name, kw),))


CASES = [(k, n) for k, names in registry.registered_names().items() for n in names]


def test_every_registered_component_runs_through_the_trainer(model_tok, tmp_path):
    model, tok = model_tok
    t0 = time.perf_counter()
    times = {}
    for kind, name in CASES:
        t = time.perf_counter()
        cfg = dataclasses.replace(BASE, objective=_objective(kind, name))
        tr = GRPOTrainer(cfg, model, tok, tmp_path / f"{kind}-{name}")
        recs = [tr.step(s) for s in range(2)]
        assert int(tr.state["step"]) == 2, (kind, name)
        for r in recs:
            bad = [k for k, v in r.items() if isinstance(v, float) and not np.isfinite(v)]
            assert not bad, (kind, name, bad)
            assert "loss/total" in r and "cov/predicted_dH" in r, (kind, name)
        if kind == "regularizer":
            assert f"loss/{name}" in recs[0], (kind, name, sorted(recs[0]))
        for leaf in jax.tree.leaves(tr.state["params"]):
            assert np.all(np.isfinite(np.asarray(leaf))), (kind, name)
        times[f"{kind}/{name}"] = round(time.perf_counter() - t, 2)
    print(f"\n{len(CASES)} components in {time.perf_counter() - t0:.1f} s: {times}")
    assert len(CASES) >= 15


def test_an_input_no_provider_fills_is_a_clear_error(model_tok, tmp_path, monkeypatch):
    model, tok = model_tok
    spec = dataclasses.replace(
        registry.get_component("regularizer", "entropy_bonus"),
        name="needs_unknown",
        needs=("extras.unknown_input",),
    )
    monkeypatch.setitem(registry._REGISTRY["regularizer"], "needs_unknown", spec)
    cfg = dataclasses.replace(BASE, objective=ObjectiveConfig(regularizers=("needs_unknown",)))
    with pytest.raises(ValueError, match="unknown_input"):
        GRPOTrainer(cfg, model, tok, tmp_path)
