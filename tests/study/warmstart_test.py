"""Warm-start cache around the real ``sft_warmstart`` (smoke model, 2 SFT steps)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropylab.models import Transformer, TransformerConfig
from entropylab.rl import tasks as T
from entropylab.rl.sft import SFTConfig, sft_warmstart
from entropylab.study import RoutedTask, SplitSpec, make_splits
from entropylab.study.splits import task_id
from entropylab.study.warmstart import WarmStartCache, WarmStartKey, param_hash

SFT = SFTConfig(
    difficulties=(1,),
    batch_size=8,
    seq_len=10,
    max_steps=2,
    eval_every=2,
    eval_problems=4,
    target_accuracy=1.0,
)


class Recording:
    """A split task that remembers every problem it served."""

    def __init__(self, inner):
        self.inner, self.served = inner, []
        self.name = inner.name

    def sample(self, rng, n, difficulties):
        out = self.inner.sample(rng, n, difficulties)
        self.served += out
        return out

    def verify(self, problem, completion, finished=True):
        return self.inner.verify(problem, completion, finished)


def _model(seed):
    vocab = T.CharTokenizer().vocab_size
    cfg = TransformerConfig.smoke(vocab_size=vocab, max_seq_len=16, n_layers=1)
    return cfg, Transformer(cfg, rngs=nnx.Rngs(seed))


def _flat(model):
    _, params, _ = nnx.split(model, nnx.Param, ...)
    return {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(params)}


def test_cache_trains_once_loads_after_and_checks_hashes(tmp_path):
    spec = SplitSpec()
    sp = make_splits(T.AdditionTask(), spec)
    train, sel = Recording(sp["train"]), Recording(sp["selection"])
    task = RoutedTask(train, {99: sel})  # SFT's stop-rule eval draw -> selection split
    tok = T.CharTokenizer()
    cfg, model = _model(0)
    key = WarmStartKey(task=task_id(T.AdditionTask()), split=spec, model=cfg, sft=SFT, seed=0)
    cache = WarmStartCache(tmp_path / "cache")
    calls = []

    def train_fn(m):
        calls.append(1)
        return sft_warmstart(m, task, tok, SFT, prompt_width=6, max_new=3)

    ws = cache.get(model, key, train_fn)
    assert not ws.cached and calls == [1] and ws.history[-1]["step"] == 2
    assert ws.param_hash == param_hash(_flat(model))
    # SFT trained only on the train pool and decided its stop rule on the selection split
    assert len(sel.served) == SFT.eval_problems and all(
        sp["selection"].contains(p) for p in sel.served
    )
    assert len(train.served) == 2 * SFT.batch_size
    assert all(sp["train"].contains(p) for p in train.served)
    man = ws.manifest
    assert man["key"]["seed"] == 0 and man["key"]["code_version"] and man["train_wall_s"] > 0

    other = nnx.clone(model)  # another model (zeroed parameters) gets the cached parameters
    _, params, _ = nnx.split(other, nnx.Param, ...)
    nnx.update(other, jax.tree.map(jnp.zeros_like, params))
    assert param_hash(_flat(other)) != ws.param_hash
    ws2 = cache.get(other, key, train_fn)
    assert ws2.cached and calls == [1] and ws2.path == ws.path
    a, b = _flat(model), _flat(other)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    # the key decides the entry: another seed, SFT config or code version is another entry
    for changed in (dict(seed=1), dict(sft=SFTConfig(max_steps=3)), dict(code_version="x")):
        assert cache.path(WarmStartKey(**{**key.__dict__, **changed})) != ws.path

    # a corrupted entry is refused, not used
    np.savez(ws.path / "params.npz", **{k: v + 1 for k, v in a.items()})
    with pytest.raises(ValueError, match="param_hash"):
        cache.get(other, key, train_fn)


def test_key_validation():
    with pytest.raises(ValueError, match="task"):
        WarmStartKey(task="", split=None, model=None, sft=None, seed=0)
    with pytest.raises(TypeError, match="seed"):
        WarmStartKey(task="t", split=None, model=None, sft=None, seed=1.0)
