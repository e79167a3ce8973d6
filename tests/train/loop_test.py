"""Tests for entropylab.train.loop: loss vs reference, SFT masking, exact resume."""

import dataclasses
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropylab.models import ModelAux, Transformer, TransformerConfig
from entropylab.train.data import LMBatches, SFTBatches
from entropylab.train.loop import WALL_CLOCK_METRICS, TrainConfig, lm_loss, train
from entropylab.train.metrics import read_jsonl
from entropylab.train.optim import OptimConfig


class FixedLogits(nnx.Module):
    """A 'model' whose logits are a parameter: lets the loss be checked by hand."""

    def __init__(self, z):
        self.z = nnx.Param(jnp.asarray(z, jnp.float32))

    def __call__(self, tokens, *, attention_mask=None, aux=()):
        return self.z[...], ModelAux()


def _ref_loss(z, targets, mask):
    z = np.asarray(z, np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return float((nll * mask).sum() / mask.sum())


def _split(module):
    return nnx.split(module, nnx.Param, ...)


def test_lm_loss_hand_case_uniform_logits():
    g, p, r = _split(FixedLogits(np.zeros((2, 3, 5))))
    batch = {
        "inputs": np.zeros((2, 3), np.int32),
        "targets": np.array([[0, 1, 2], [3, 4, 0]], np.int32),
        "loss_mask": np.ones((2, 3), np.float32),
    }
    loss, m = lm_loss(g, p, r, batch)
    np.testing.assert_allclose(float(loss), np.log(5), rtol=1e-6)
    np.testing.assert_allclose(float(m["entropy"]), np.log(5), rtol=1e-6)


def test_lm_loss_matches_reference_and_ignores_masked_targets():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 4, 7)) * 3
    targets = rng.integers(0, 7, (3, 4)).astype(np.int32)
    mask = (rng.random((3, 4)) > 0.4).astype(np.float32)
    mask[0, 0] = 1
    g, p, r = _split(FixedLogits(z))
    batch = {"inputs": targets, "targets": targets, "loss_mask": mask}
    loss, _ = jax.jit(lambda p: lm_loss(g, p, r, batch))(p)
    np.testing.assert_allclose(float(loss), _ref_loss(z, targets, mask), rtol=1e-5)
    # SFT semantics: targets under a zero mask do not matter, and get zero gradient
    other = dict(batch, targets=np.where(mask > 0, targets, (targets + 1) % 7).astype(np.int32))
    np.testing.assert_allclose(float(lm_loss(g, p, r, other)[0]), float(loss), rtol=1e-6)
    grad = jax.grad(lambda p: lm_loss(g, p, r, batch)[0])(p)
    gz = np.asarray(grad["z"][...])
    assert np.all(gz[mask == 0] == 0) and np.all(np.isfinite(gz))
    assert np.abs(gz[mask == 1]).sum() > 0


def _tokens(n=6000, seed=0):
    # a learnable stream: a noisy repeating pattern over a 64-symbol alphabet
    rng = np.random.default_rng(seed)
    base = np.tile(np.arange(64), n // 64 + 1)[:n]
    noise = rng.random(n) < 0.1
    return np.where(noise, rng.integers(0, 64, n), base).astype(np.int32)


def _model(seed=0):
    cfg = TransformerConfig.smoke(vocab_size=64)
    return Transformer(cfg, rngs=nnx.Rngs(seed))


def _cfg(**kw):
    base = dict(
        steps=8,
        optim=OptimConfig(learning_rate=3e-3, warmup_steps=2, total_steps=8),
        eval_every=4,
        eval_batches=2,
        save_every=3,
        keep=2,
        attn_entropy=True,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def _strip(records):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_METRICS} for r in records]


def test_resumed_run_reproduces_uninterrupted_run_exactly(tmp_path):
    tokens, held = _tokens(), _tokens(2000, seed=1)

    def batches():
        return LMBatches(tokens, batch_size=4, seq_len=16, seed=5)

    def evals():
        return LMBatches(held, batch_size=4, seq_len=16, shuffle=False)

    full = train(_model(0), batches(), _cfg(), eval_batches=evals(), workdir=tmp_path / "a")
    part = train(
        _model(0), batches(), _cfg(), eval_batches=evals(), workdir=tmp_path / "b", stop_after=5
    )
    assert [r["step"] for r in part.history] == [1, 2, 3, 4, 5] and part.resumed_from is None
    # a different init and a fresh iterator: everything must come from the checkpoint at step 3
    resumed = train(_model(99), batches(), _cfg(), eval_batches=evals(), workdir=tmp_path / "b")
    assert resumed.resumed_from == 3
    assert [r["step"] for r in resumed.history] == [4, 5, 6, 7, 8]

    rec_a = read_jsonl(tmp_path / "a/metrics.jsonl")
    rec_b = read_jsonl(tmp_path / "b/metrics.jsonl")
    assert [r["step"] for r in rec_b] == list(range(1, 9))
    assert _strip(rec_a) == _strip(rec_b)  # bit-identical losses, grad norms, lr, entropies
    assert {"loss", "ppl", "entropy", "grad_norm", "lr", "tokens_per_s", "attn_entropy"} <= set(
        rec_a[0]
    )
    assert len(rec_a[0]["attn_entropy"]) == 2 and "eval_loss" in rec_a[3] and "eval_ppl" in rec_a[7]
    for x, y in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert rec_a[-1]["loss"] < rec_a[0]["loss"]
    # checkpoint every 3 steps + the last, keep 2
    assert sorted(int(p.name) for p in (tmp_path / "a/checkpoints").iterdir()) == [6, 8]
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(_model(0), batches(), _cfg(), workdir=tmp_path / "a", resume=False)

    # determinism: a second uninterrupted run gives an identical metrics file
    train(_model(0), batches(), _cfg(), eval_batches=evals(), workdir=tmp_path / "c")
    assert _strip(read_jsonl(tmp_path / "c/metrics.jsonl")) == _strip(rec_a)

    # preemption: SIGTERM during step 4 -> checkpoint at step 4, clean return; resume == full
    sig = SignalAt(batches(), 4)
    part = train(_model(0), sig, _cfg(), eval_batches=evals(), workdir=tmp_path / "d")
    assert part.interrupted == signal.SIGTERM and [r["step"] for r in part.history] == [1, 2, 3, 4]
    assert sorted(int(p.name) for p in (tmp_path / "d/checkpoints").iterdir()) == [3, 4]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    resumed = train(_model(0), batches(), _cfg(), eval_batches=evals(), workdir=tmp_path / "d")
    assert resumed.resumed_from == 4 and resumed.interrupted is None
    assert _strip(read_jsonl(tmp_path / "d/metrics.jsonl")) == _strip(rec_a)

    # a metrics file cut mid-line after step 6 with a complete checkpoint at step 8: the run
    # resumes from the checkpoint the history covers (6) instead of truncating the history
    metrics = tmp_path / "a/metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines[:6]) + "\n" + lines[6][:20])
    with pytest.warns(UserWarning, match="resuming from the checkpoint at step 6"):
        again = train(_model(0), batches(), _cfg(), eval_batches=evals(), workdir=tmp_path / "a")
    assert again.resumed_from == 6 and [r["step"] for r in again.history] == [7, 8]
    assert _strip(read_jsonl(metrics)) == _strip(rec_a)
    # a torn line in the middle is an error naming the line; nothing is rewritten
    broken = "\n".join(lines[:3] + [lines[3][:15]] + lines[4:]) + "\n"
    metrics.write_text(broken)
    with pytest.raises(ValueError, match=r"metrics.jsonl:4: invalid record in the middle"):
        train(_model(0), batches(), _cfg(), eval_batches=evals(), workdir=tmp_path / "a")
    assert metrics.read_text() == broken
    # a gap in the history (steps 1..2 only, checkpoints at 6 and 8) is an error
    metrics.write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(ValueError, match="ends at step 2 but the oldest checkpoint"):
        train(_model(0), batches(), _cfg(), eval_batches=evals(), workdir=tmp_path / "a")
    # a checkpoint of another config (seed) is refused, naming the field
    with pytest.raises(ValueError, match=r"different TrainConfig: config differs \(seed: 0 -> 1"):
        train(_model(0), batches(), _cfg(seed=1), workdir=tmp_path / "d")


class SignalAt:
    """Batches that deliver a real SIGTERM to this process while producing batch ``at``."""

    def __init__(self, inner, at):
        self.inner, self.at, self.n = inner, at, 0

    def __next__(self):
        self.n += 1
        if self.n == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return next(self.inner)

    def state(self):
        return self.inner.state()

    def restore(self, state):
        self.inner.restore(state)


class NaNAt(SignalAt):
    """Batches whose loss mask holds a NaN in batch ``at`` (an injected non-finite loss)."""

    def __next__(self):
        self.n += 1
        batch = dict(next(self.inner))
        if self.n == self.at:
            batch["loss_mask"] = batch["loss_mask"].copy()
            batch["loss_mask"][0, 0] = np.nan
        return batch


def test_nan_guard_skip_and_stop():
    tokens = _tokens()

    def batches():
        return LMBatches(tokens, batch_size=4, seq_len=16, seed=5)

    cfg = _cfg(eval_every=0, save_every=0)
    clean = train(_model(0), batches(), cfg, stop_after=2)
    with pytest.warns(UserWarning, match=r"step 3: non-finite training metrics \[.*'loss=nan'"):
        skip = train(
            _model(0),
            NaNAt(batches(), 3),
            dataclasses.replace(cfg, nan_policy="skip"),
            stop_after=3,
        )
    assert skip.skipped_steps == (3,)
    rec = skip.history[-1]
    assert rec["nonfinite"] == 1.0 and np.isnan(rec["loss"]) and np.isnan(rec["grad_norm"])
    assert [r["nonfinite"] for r in skip.history[:2]] == [0.0, 0.0]
    # the non-finite update was not applied: params and optimizer state as after step 2
    for key in ("params", "opt_state"):
        for x, y in zip(jax.tree.leaves(clean.state[key]), jax.tree.leaves(skip.state[key])):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(FloatingPointError, match=r"step 3: non-finite .*'loss=nan'.*stopping"):
        train(_model(0), NaNAt(batches(), 3), cfg)


def test_sft_trains_on_responses_only():
    """Same shapes and optimizer as the resume test, so the compiled step is reused."""
    pairs = [(list(range(i % 8, i % 8 + 12)), [40 + i % 8] * 4) for i in range(16)]
    it = SFTBatches(pairs, batch_size=4, seq_len=16, seed=0)
    res = train(_model(0), it, _cfg(eval_every=0, save_every=0))
    first, last = res.history[0]["loss"], res.history[-1]["loss"]
    assert last < 0.9 * first, (first, last)
    assert res.history[0]["entropy"] > 0
    batch = it.batch_at(0)
    assert batch["loss_mask"].sum() == 4 * 4 and batch["attention_mask"].sum() == 4 * 15


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"steps": 0}, "steps"),
        ({"eval_every": -1}, "eval_every"),
        ({"keep": 0}, "keep"),
        ({"eval_batches": 0}, "eval_batches"),
        ({"optim": {"lr": 1}}, "optim"),
        ({"nan_policy": "ignore"}, "nan_policy"),
        ({"seed": -1}, "seed"),
    ],
)
def test_train_config_validation(kw, field):
    with pytest.raises(ValueError, match=field):
        _cfg(**kw)


def test_dataclass_replace_keeps_validation():
    with pytest.raises(ValueError, match="steps"):
        dataclasses.replace(_cfg(), steps=-3)
