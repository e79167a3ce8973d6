"""Table-driven bad-input suite: configs, ops, losses, loaders, checkpoints, run dirs and CLIs.

Each case feeds one bad input to a public entry point and states the one acceptable outcome:

* ``raises(Exc, "pattern")``: a clear ``ValueError`` / ``TypeError`` / ``FileNotFoundError``
  whose message matches ``pattern`` (the argument's name, or the file and line);
* ``nan()``: a *documented propagation*: the result (every leaf of the first output, e.g. the
  loss) is NaN; a NaN that comes in is never turned into a finite number;
* ``equals(v)``: a documented non-error answer (e.g. a verifier scoring a foreign-script digit
  answer 0.0).

Cases that write files get a fresh folder and must leave it exactly as it was (no half-written
output). Imports happen inside the cases, so a missing entry point fails its own case only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

NAN = float("nan")
INF = float("inf")


@dataclasses.dataclass(frozen=True)
class Expect:
    kind: str
    exc: type | tuple = ()
    match: str = ""
    value: object = None


def raises(exc, match=""):
    return Expect("raises", exc, match)


def nan():
    return Expect("nan")


def equals(value):
    return Expect("equals", value=value)


# ----------------------------------------------------------------------------------------------
# helpers used by the cases

B, T = 2, 3


def _pg(logp=None, **kw):
    """Policy-gradient inputs [B, T] with an optional override of logp."""
    lp = jnp.full((B, T), -1.0) if logp is None else jnp.asarray(logp, jnp.float32)
    return (lp, jnp.full((B, T), -1.1), jnp.array([[1.0] * T, [-1.0] * T]), jnp.ones((B, T)))


def _nan_logp():
    return np.array([[NAN, -1.0, -1.0], [-1.0, -1.0, -1.0]], np.float32)


def _loss(name, logp, **kw):
    import entropylab.losses as L

    return getattr(L, name)(*_pg(logp), **kw)


def _train_cfg(**kw):
    from entropylab.train import OptimConfig, TrainConfig

    base = dict(steps=2, optim=OptimConfig(warmup_steps=0, total_steps=2), progress=False)
    return TrainConfig(**{**base, **kw})


def _optim(**kw):
    from entropylab.train import OptimConfig

    return OptimConfig(**kw)


def _mesh(**kw):
    from entropylab.parallel import MeshConfig

    return MeshConfig(**kw)


def _lm_batches(tokens, **kw):
    from entropylab.train import LMBatches

    return LMBatches(tokens, **{"batch_size": 2, "seq_len": 4, **kw})


def _tf_cfg(**kw):
    from entropylab.models import TransformerConfig

    base = dict(vocab_size=16, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=8)
    return TransformerConfig(**{**base, **kw})


def _rope(**kw):
    from entropylab.models import TransformerConfig

    return TransformerConfig.smoke(vocab_size=16).with_rope(**kw)


def _rl(**kw):
    from entropylab.rl.trainer import RLConfig

    return RLConfig(**kw)


def _sft(**kw):
    from entropylab.rl.sft import SFTConfig

    return SFTConfig(**kw)


def _sampling(**kw):
    from entropylab.rl.sampling import SamplingConfig

    return SamplingConfig(**kw)


def _verify(answer: str):
    from entropylab.rl import tasks as T

    task = T.AdditionTask()
    p = task.sample(T.problem_rng(0, 0, 0), 1, (2,))[0]
    digits = str(p.answer)[::-1] if task.reverse else str(p.answer)
    foreign = digits.translate(str.maketrans("0123456789", answer))
    return task.verify(p, foreign)


def _manifest(seed=0):
    from entropylab import runs

    return runs.make_manifest({"x": 1}, seed=seed)


def _file(tmp: Path, name="f.txt", text="keep") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def _foreign_dir(tmp: Path) -> Path:
    d = tmp / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    return d


def _run_dir(tmp: Path, seed=0) -> Path:
    from entropylab import runs

    d = tmp / "run"
    runs.prepare_output_dir(d, manifest=_manifest(seed))
    (d / "metrics.jsonl").write_text('{"step": 1}\n')
    return d


def _metrics(tmp: Path, text: str) -> Path:
    p = tmp / "metrics.jsonl"
    p.write_text(text)
    return p


def _writer(path, resume_step):
    from entropylab.train import MetricWriter

    MetricWriter(path, resume_step=resume_step, tensorboard=False).close()


def _ckpt(tmp, **kw):
    from entropylab.train import Checkpointer

    return Checkpointer(tmp / "ck", **kw)


def _restore(tmp, step=None):
    from entropylab.train import Checkpointer, abstract_like

    state = {"w": jnp.ones(3)}
    with Checkpointer(tmp / "ck") as ck:
        ck.save(1, state)
    with Checkpointer(tmp / "ck") as ck:
        return ck.restore(abstract_like({"w": jnp.ones(4)}) if step is None else state, step=step)


def _lm_cli(tmp, *args):
    from experiments.lm_pretrain import run

    return run.main(["--preset", "smoke", "--no-progress", *args])


def _em_cli(tmp, cmd, *args):
    from experiments.entropy_mechanism import study

    return study.cli(["--preset", "smoke", cmd, *args])


def _em_update_readme(tmp, readme):
    """A finished-looking study folder (study.json of the smoke spec), then analyse --readme."""
    from entropylab.study import Runner
    from experiments.entropy_mechanism import study

    out = tmp / "o"
    Runner(study.build_spec("smoke"), study.job, out).check_out()
    return _em_cli(tmp, "analyse", "--out", str(out), "--no-plots", "--readme", str(readme))


def _transformer_forward(token):
    from flax import nnx

    from entropylab.models import Transformer

    model = Transformer(_tf_cfg(), rngs=nnx.Rngs(0))
    logits, _ = model(jnp.array([[1, token, 2]], jnp.int32))
    return logits[0, 1]


# ----------------------------------------------------------------------------------------------
# the table: (id, fn(tmp) -> result, expectation)

V = jnp.zeros((2, 3, 5))
LABELS = jnp.zeros((2, 3), jnp.int32)
X34 = jnp.arange(12.0).reshape(3, 4)
M34 = jnp.ones((3, 4))

CASES = [
    # ---- TrainConfig / OptimConfig / MeshConfig (entropylab.train, entropylab.parallel)
    ("train.steps=0", lambda t: _train_cfg(steps=0), raises(ValueError, "steps")),
    ("train.steps=-1", lambda t: _train_cfg(steps=-1), raises(ValueError, "steps")),
    ("train.steps=1.5", lambda t: _train_cfg(steps=1.5), raises(TypeError, "steps")),
    ("train.steps=True", lambda t: _train_cfg(steps=True), raises(TypeError, "steps")),
    ("train.eval_every=-1", lambda t: _train_cfg(eval_every=-1), raises(ValueError, "eval_every")),
    ("train.save_every=-2", lambda t: _train_cfg(save_every=-2), raises(ValueError, "save_every")),
    ("train.eval_batches=0", lambda t: _train_cfg(eval_batches=0), raises(ValueError, "eval_b")),
    ("train.keep=0", lambda t: _train_cfg(keep=0), raises(ValueError, "keep")),
    ("train.seed=-1", lambda t: _train_cfg(seed=-1), raises(ValueError, "seed")),
    ("train.nan_policy", lambda t: _train_cfg(nan_policy="ignore"), raises(ValueError, "nan_pol")),
    ("train.optim=dict", lambda t: _train_cfg(optim={"lr": 1}), raises(ValueError, "optim")),
    ("train.mesh=str", lambda t: _train_cfg(mesh="data"), raises(TypeError, "mesh")),
    ("train.attn_entropy=1", lambda t: _train_cfg(attn_entropy=1), raises(TypeError, "attn_ent")),
    ("optim.lr=0", lambda t: _optim(learning_rate=0.0), raises(ValueError, "learning_rate")),
    ("optim.lr=-1", lambda t: _optim(learning_rate=-1.0), raises(ValueError, "learning_rate")),
    ("optim.lr=nan", lambda t: _optim(learning_rate=NAN), raises(ValueError, "learning_rate")),
    ("optim.lr=inf", lambda t: _optim(learning_rate=INF), raises(ValueError, "learning_rate")),
    (
        "optim.lr=array",
        lambda t: _optim(learning_rate=np.array([1e-3, 2e-3])),
        raises(TypeError, "learning_rate"),
    ),
    ("optim.total_steps=0", lambda t: _optim(total_steps=0), raises(ValueError, "total_steps")),
    (
        "optim.warmup=total",
        lambda t: _optim(warmup_steps=10, total_steps=10),
        raises(ValueError, "warmup_steps"),
    ),
    ("optim.min_lr_ratio=1.5", lambda t: _optim(min_lr_ratio=1.5), raises(ValueError, "min_lr")),
    ("optim.wd=-0.1", lambda t: _optim(weight_decay=-0.1), raises(ValueError, "weight_decay")),
    ("optim.wd=nan", lambda t: _optim(weight_decay=NAN), raises(ValueError, "weight_decay")),
    ("optim.b1=1", lambda t: _optim(b1=1.0), raises(ValueError, "b1")),
    ("optim.eps=inf", lambda t: _optim(eps=INF), raises(ValueError, "eps")),
    ("optim.clip=0", lambda t: _optim(max_grad_norm=0.0), raises(ValueError, "max_grad_norm")),
    ("optim.clip=nan", lambda t: _optim(max_grad_norm=NAN), raises(ValueError, "max_grad_norm")),
    ("mesh.data=0", lambda t: _mesh(data=0), raises(ValueError, "data")),
    ("mesh.fsdp=-2", lambda t: _mesh(fsdp=-2), raises(ValueError, "fsdp")),
    ("mesh.two -1", lambda t: _mesh(data=-1, fsdp=-1), raises(ValueError, "at most one")),
    ("mesh.tensor=1.5", lambda t: _mesh(tensor=1.5), raises(TypeError, "tensor")),
    ("mesh.too big", lambda t: _mesh(data=1000).resolve(8), raises(ValueError, "needs 1000")),
    # ---- data loaders
    ("lm.tokens 2-D", lambda t: _lm_batches(np.zeros((4, 40), np.int32)), raises(ValueError)),
    ("lm.batch_size=0", lambda t: _lm_batches(np.arange(100), batch_size=0), raises(ValueError)),
    ("lm.seq_len=0", lambda t: _lm_batches(np.arange(100), seq_len=0), raises(ValueError)),
    ("lm.too few tokens", lambda t: _lm_batches(np.arange(5)), raises(ValueError)),
    (
        "lm.restore bad",
        lambda t: _lm_batches(np.arange(100)).restore({"position": -1}),
        raises(ValueError, "position"),
    ),
    (
        "sft.too few pairs",
        lambda t: __import__("entropylab.train", fromlist=["x"]).SFTBatches(
            [([1, 2], [3])], batch_size=2, seq_len=8
        ),
        raises(ValueError, "batch_size"),
    ),
    (
        "token_file.missing",
        lambda t: __import__("entropylab.train", fromlist=["x"]).load_token_file(t / "no.bin"),
        raises(FileNotFoundError, "no.bin"),
    ),
    (
        "token_file.empty",
        lambda t: __import__("entropylab.train", fromlist=["x"]).load_token_file(
            _file(t, "e.bin", "")
        ),
        raises(ValueError, "empty"),
    ),
    (
        "token_file.bad npy",
        lambda t: __import__("entropylab.train", fromlist=["x"]).load_token_file(
            _file(t, "x.npy", "not numpy")
        ),
        raises(ValueError, "x.npy"),
    ),
    (
        "token_file.dtype",
        lambda t: __import__("entropylab.train", fromlist=["x"]).write_token_file(
            t / "w.bin", np.arange(3), dtype="float32"
        ),
        raises(ValueError, "dtype"),
    ),
    (
        "token_file.overflow",
        lambda t: __import__("entropylab.train", fromlist=["x"]).write_token_file(
            t / "w.bin", np.array([70000]), dtype="uint16"
        ),
        raises(ValueError, "fit"),
    ),
    # ---- checkpoints, metrics files, run directories
    ("ckpt.save_every=-1", lambda t: _ckpt(t, save_every=-1), raises(ValueError, "save_every")),
    ("ckpt.keep=0", lambda t: _ckpt(t, keep=0), raises(ValueError, "keep")),
    (
        "ckpt.restore missing",
        lambda t: _ckpt(t).restore({"w": jax.ShapeDtypeStruct((3,), jnp.float32)}),
        raises(FileNotFoundError, "no checkpoint"),
    ),
    ("ckpt.restore wrong step", lambda t: _restore(t, step=7), raises(FileNotFoundError, "step 7")),
    ("ckpt.restore wrong shape", lambda t: _restore(t), raises(ValueError, "ck/1")),
    (
        "metrics.torn middle line",
        lambda t: _writer(_metrics(t, '{"step": 1}\n{"step": 2\n{"step": 3}\n'), 3),
        raises(ValueError, r"metrics.jsonl:2"),
    ),
    (
        "metrics.gap",
        lambda t: _writer(_metrics(t, '{"step": 1}\n{"step": 3}\n'), 3),
        raises(ValueError, r"metrics.jsonl:2: step 3 follows step 1"),
    ),
    (
        "metrics.ends before ckpt",
        lambda t: _writer(_metrics(t, '{"step": 1}\n'), 4),
        raises(ValueError, "ends at step 1 but the checkpoint is at step 4"),
    ),
    (
        "read_jsonl.torn",
        lambda t: __import__("entropylab.train", fromlist=["x"]).read_jsonl(
            _metrics(t, '{"step": 1}\n{"st\n')
        ),
        raises(ValueError, r"metrics.jsonl:2"),
    ),
    (
        "read_jsonl.missing",
        lambda t: __import__("entropylab.train", fromlist=["x"]).read_jsonl(t / "m.jsonl"),
        raises(FileNotFoundError, "m.jsonl"),
    ),
    (
        "runs.out empty",
        lambda t: __import__("entropylab.runs").runs.prepare_output_dir("", manifest=_manifest()),
        raises(ValueError, "--out must be a non-empty path"),
    ),
    (
        "runs.out is a file",
        lambda t: __import__("entropylab.runs").runs.prepare_output_dir(
            _file(t), manifest=_manifest()
        ),
        raises(ValueError, "not a directory"),
    ),
    (
        "runs.foreign dir overwrite",
        lambda t: __import__("entropylab.runs").runs.prepare_output_dir(
            _foreign_dir(t), manifest=_manifest(), mode="overwrite"
        ),
        raises(ValueError, "has no manifest.json"),
    ),
    (
        "runs.other seed",
        lambda t: __import__("entropylab.runs").runs.prepare_output_dir(
            _run_dir(t), manifest=_manifest(seed=1)
        ),
        raises(ValueError, "seed differs: directory has 0, this run 1"),
    ),
    (
        "runs.mode",
        lambda t: __import__("entropylab.runs").runs.prepare_output_dir(
            t / "x", manifest=_manifest(), mode="force"
        ),
        raises(ValueError, "mode"),
    ),
    (
        "runs.manifest truncated",
        lambda t: __import__("entropylab.runs").runs.read_manifest(
            _file(t, "manifest.json", '{"seed": ').parent
        ),
        raises(ValueError, "manifest.json"),
    ),
    # ---- ops
    (
        "ops.entropy int logits",
        lambda t: _ops().token_entropy(jnp.ones((2, 3), jnp.int32)),
        raises(TypeError, "logits"),
    ),
    (
        "ops.entropy bool logits",
        lambda t: _ops().token_entropy(jnp.ones((2, 3), bool)),
        raises(TypeError, "logits"),
    ),
    (
        "ops.entropy T=0",
        lambda t: _ops().token_entropy(V, temperature=0.0),
        raises(ValueError, "temperature"),
    ),
    (
        "ops.entropy T=-1",
        lambda t: _ops().token_entropy(V, temperature=-1.0),
        raises(ValueError, "temperature"),
    ),
    (
        "ops.entropy T=nan",
        lambda t: _ops().token_entropy(V, temperature=NAN),
        raises(ValueError, "temperature"),
    ),
    (
        "ops.entropy scalar",
        lambda t: _ops().token_entropy(jnp.float32(1.0)),
        raises(ValueError, "logits"),
    ),
    ("ops.entropy nan logits", lambda t: _ops().token_entropy(V.at[0, 0, 0].set(NAN))[0, 0], nan()),
    (
        "ops.logprobs shape",
        lambda t: _ops().logprobs_and_entropy(V, LABELS[:, :2]),
        raises(ValueError, "labels shape"),
    ),
    (
        "ops.logprobs float labels",
        lambda t: _ops().logprobs_and_entropy(V, LABELS * 1.0),
        raises(ValueError, "labels"),
    ),
    (
        "ops.logprobs int logits",
        lambda t: _ops().logprobs_and_entropy(LABELS[..., None] + 0, LABELS),
        raises(TypeError, "logits"),
    ),
    (
        "ops.logprobs label=V",
        lambda t: _ops().logprobs_and_entropy(V, LABELS.at[0, 0].set(5))[0][0, 0],
        nan(),
    ),
    (
        "ops.logprobs label=-1",
        lambda t: _ops().logprobs_and_entropy(V, LABELS.at[0, 0].set(-1))[0][0, 0],
        nan(),
    ),
    (
        "ops.fused label=-1",
        lambda t: _ops().fused_logprobs_and_entropy(
            jnp.ones((2, 4)), jnp.ones((4, 5)), jnp.array([0, -1])
        )[0][1],
        nan(),
    ),
    (
        "ops.fused int hidden",
        lambda t: _ops().fused_logprobs_and_entropy(
            jnp.ones((2, 4), jnp.int32), jnp.ones((4, 5)), jnp.array([0, 1])
        ),
        raises((ValueError, TypeError), "hidden"),
    ),
    (
        "ops.fused T=array",
        lambda t: _ops().fused_logprobs_and_entropy(
            jnp.ones((2, 4)), jnp.ones((4, 5)), jnp.array([0, 1]), temperature=jnp.array(1.0)
        ),
        raises((ValueError, TypeError), "temperature"),
    ),
    (
        "ops.fused block=0",
        lambda t: _ops().fused_logprobs_and_entropy(
            jnp.ones((2, 4)), jnp.ones((4, 5)), jnp.array([0, 1]), vocab_block=0
        ),
        raises(ValueError, "vocab_block"),
    ),
    (
        "ops.fused D mismatch",
        lambda t: _ops().fused_logprobs_and_entropy(
            jnp.ones((2, 3)), jnp.ones((4, 5)), jnp.array([0, 1])
        ),
        raises(ValueError, "hidden"),
    ),
    (
        "ops.mask negative",
        lambda t: _ops().masked_mean(X34, M34.at[0, 0].set(-1.0)),
        raises(ValueError, "mask"),
    ),
    (
        "ops.mask nan",
        lambda t: _ops().masked_mean(X34, M34.at[0, 0].set(NAN)),
        raises(ValueError, "mask"),
    ),
    (
        "ops.mask inf",
        lambda t: _ops().masked_sum(X34, M34.at[0, 0].set(INF)),
        raises(ValueError, "mask"),
    ),
    ("ops.masked_mean nan value", lambda t: _ops().masked_mean(X34.at[0, 0].set(NAN), M34), nan()),
    ("ops.masked_var nan value", lambda t: _ops().masked_var(X34.at[1, 1].set(NAN), M34), nan()),
    (
        "ops.quantile q=1.5",
        lambda t: _ops().masked_quantile(X34, M34, 1.5),
        raises(ValueError, "q"),
    ),
    (
        "ops.aggregate mode",
        lambda t: _ops().aggregate(X34, M34, "mean"),
        raises(ValueError, "token-mean"),
    ),
    ("ops.aggregate 1-D", lambda t: _ops().aggregate(X34[0], M34[0]), raises(ValueError, "B, T")),
    (
        "ops.aggregate scale=0",
        lambda t: _ops().aggregate(X34, M34, "seq-mean-token-sum-norm", loss_scale_factor=0),
        raises(ValueError, "loss_scale"),
    ),
    (
        "ops.aggregate nan",
        lambda t: _ops().aggregate(X34.at[2, 3].set(NAN), M34, "seq-mean-token-mean"),
        nan(),
    ),
    (
        "ops.attention_entropy 1-D",
        lambda t: _ops().attention_entropy(jnp.ones(3)),
        raises(ValueError, "Tq, Tk"),
    ),
    (
        "ops.window=0",
        lambda t: _ops().window_entropy(X34, M34, window=0),
        raises(ValueError, "window"),
    ),
    ("ops.window 1-D", lambda t: _ops().window_entropy(X34[0], M34[0]), raises(ValueError, "B, T")),
    # ---- losses: NaN log-probs propagate (never a finite zero), bad hyper-parameters
    ("loss.ppo_clip nan logp", lambda t: _loss("ppo_clip_loss", _nan_logp())[0], nan()),
    ("loss.gspo nan logp", lambda t: _loss("gspo_loss", _nan_logp())[0], nan()),
    ("loss.clip_cov nan logp", lambda t: _loss("clip_cov_loss", _nan_logp())[0], nan()),
    ("loss.kl_cov nan logp", lambda t: _loss("kl_cov_loss", _nan_logp())[0], nan()),
    (
        "loss.reinforce nan logp",
        lambda t: _loss("reinforce_loss", _nan_logp(), importance_sampling=True)[0],
        nan(),
    ),
    ("loss.cispo nan logp", lambda t: _loss("cispo_loss", _nan_logp())[0], nan()),
    (
        "loss.ppo_clip agg",
        lambda t: _loss("ppo_clip_loss", None, loss_agg_mode="sum"),
        raises(ValueError, "loss_agg_mode|token-mean"),
    ),
    (
        "loss.ppo_clip eps<0",
        lambda t: _loss("ppo_clip_loss", None, clip_ratio_low=-0.1),
        raises(ValueError, "clip_ratio_low"),
    ),
    (
        "loss.ppo_clip eps array",
        lambda t: _loss("ppo_clip_loss", None, clip_ratio_low=jnp.array(-0.1)),
        raises((ValueError, TypeError), "clip_ratio_low"),
    ),
    (
        "loss.ppo_clip c<=1",
        lambda t: _loss("ppo_clip_loss", None, clip_ratio_c=0.5),
        raises(ValueError, "clip_ratio_c"),
    ),
    (
        "loss.clip_cov ratio<0",
        lambda t: _loss("clip_cov_loss", None, clip_cov_ratio=-1.0),
        raises(ValueError, "clip_cov_ratio"),
    ),
    (
        "loss.kl_cov units",
        lambda t: _loss("kl_cov_loss", None, ratio_units="permille"),
        raises(ValueError, "ratio_units"),
    ),
    (
        "loss.grpo group",
        lambda t: __import__("entropylab.losses", fromlist=["x"]).grpo_advantages(
            jnp.ones(5), group_size=2
        ),
        raises(ValueError, "group_size"),
    ),
    (
        "loss.kl kind",
        lambda t: __import__("entropylab.losses", fromlist=["x"]).kl_penalty(
            jnp.ones(3), jnp.ones(3), kind="k9"
        ),
        raises(ValueError, "kind"),
    ),
    (
        "loss.objective unknown",
        lambda t: __import__("entropylab.losses", fromlist=["x"]).build_objective(
            __import__("entropylab.losses", fromlist=["x"]).ObjectiveConfig(policy_loss="nope")
        ),
        raises(ValueError, "policy_loss"),
    ),
    # ---- models (TransformerConfig, RoPE)
    ("model.vocab=0", lambda t: _tf_cfg(vocab_size=0), raises(ValueError, "vocab_size")),
    ("model.heads", lambda t: _tf_cfg(d_model=15), raises(ValueError, "d_model|n_heads")),
    ("model.norm", lambda t: _tf_cfg(norm="batchnorm"), raises(ValueError, "norm")),
    ("rope.base=nan", lambda t: _rope(rope_type="default", base=NAN), raises(ValueError, "base")),
    ("rope.base=inf", lambda t: _rope(rope_type="default", base=INF), raises(ValueError, "base")),
    (
        "rope.factor=nan",
        lambda t: _rope(rope_type="linear", factor=NAN),
        raises(ValueError, "factor"),
    ),
    (
        "rope.factor=inf",
        lambda t: _rope(rope_type="linear", factor=INF),
        raises(ValueError, "factor"),
    ),
    (
        "rope.yarn no original",
        lambda t: _rope(rope_type="yarn", factor=4.0),
        raises(ValueError, "original_max_position_embeddings"),
    ),
    # out-of-range token ids: NaN logits (as the dense/fused log-probs give NaN), never a wrap
    ("model.token id = vocab", lambda t: _transformer_forward(16), nan()),
    ("model.token id = -1", lambda t: _transformer_forward(-1), nan()),
    # ---- RL configs and verifiers
    ("rl.temperature=0", lambda t: _rl(temperature=0.0), raises(ValueError, "temperature")),
    ("rl.top_p=0", lambda t: _rl(top_p=0.0), raises(ValueError, "top_p")),
    ("rl.top_p=1.5", lambda t: _rl(top_p=1.5), raises(ValueError, "top_p")),
    ("rl.max_new_tokens=0", lambda t: _rl(max_new_tokens=0), raises(ValueError, "max_new")),
    ("rl.eval_problems=0", lambda t: _rl(eval_problems=0), raises(ValueError, "eval_problems")),
    ("rl.lr=nan", lambda t: _rl(learning_rate=NAN), raises(ValueError, "learning_rate")),
    ("rl.steps=0", lambda t: _rl(steps=0), raises(ValueError, "steps")),
    ("rl.task", lambda t: _rl(task="chess"), raises(ValueError, "task")),
    ("sft.lr<0", lambda t: _sft(learning_rate=-1e-3), raises(ValueError, "learning_rate")),
    ("sft.lr=nan", lambda t: _sft(learning_rate=NAN), raises(ValueError, "learning_rate")),
    ("sft.target=0", lambda t: _sft(target_accuracy=0.0), raises(ValueError, "target_accuracy")),
    ("sft.batch=0", lambda t: _sft(batch_size=0), raises(ValueError, "batch_size")),
    ("sampling.T=0", lambda t: _sampling(temperature=0.0), raises(ValueError, "temperature")),
    ("sampling.top_p=0", lambda t: _sampling(top_p=0.0), raises(ValueError, "top_p")),
    ("verify.arabic-indic digits", lambda t: _verify("٠١٢٣٤٥٦٧٨٩"), equals(0.0)),
    ("verify.fullwidth digits", lambda t: _verify("０１２３４５６７８９"), equals(0.0)),
    ("verify.ascii digits", lambda t: _verify("0123456789"), equals(1.0)),
    # ---- laws
    (
        "laws.too few points",
        lambda t: __import__("entropylab.laws").laws.fit_entropy_law([0.1, 0.2], [0.3, 0.4]),
        raises(ValueError),
    ),
    (
        "laws.length mismatch",
        lambda t: __import__("entropylab.laws").laws.fit_entropy_law(
            [0.1, 0.2, 0.3, 0.4], [0.3, 0.4]
        ),
        raises(ValueError),
    ),
    # ---- CLIs (argparse errors exit with status 2 and a message on stderr)
    ("cli.lm --out ''", lambda t: _lm_cli(t, "--out", ""), raises(SystemExit, "2")),
    ("cli.lm --out file", lambda t: _lm_cli(t, "--out", str(_file(t))), raises(SystemExit, "2")),
    (
        "cli.lm --seed -1",
        lambda t: _lm_cli(t, "--out", str(t / "o"), "--seed", "-1"),
        raises(SystemExit, "2"),
    ),
    ("cli.lm --preset huge", lambda t: _lm_cli(t, "--preset", "huge"), raises(SystemExit, "2")),
    (
        "cli.lm foreign dir",
        lambda t: _lm_cli(t, "--out", str(_foreign_dir(t))),
        raises(SystemExit, "2"),
    ),
    (
        "cli.lm other seed",
        lambda t: _lm_cli(t, "--out", str(_run_dir(t)), "--seed", "1"),
        raises(SystemExit, "2"),
    ),
    (
        "cli.lm resume+overwrite",
        lambda t: _lm_cli(t, "--resume", "--overwrite"),
        raises(SystemExit, "2"),
    ),
    (
        "cli.em --shard 3/2",
        lambda t: _em_cli(t, "run", "--out", str(t / "o"), "--shard", "3/2"),
        raises(SystemExit, "2"),
    ),
    (
        "cli.em --shard x",
        lambda t: _em_cli(t, "run", "--out", str(t / "o"), "--shard", "x"),
        raises(SystemExit, "2"),
    ),
    (
        "cli.em plan --calibration-steps 1",
        lambda t: _em_cli(t, "plan", "--out", str(t / "o"), "--calibration-steps", "1"),
        raises(SystemExit, "2"),
    ),
    (
        "cli.em --out file",
        lambda t: _em_cli(t, "run", "--out", str(_file(t))),
        raises(SystemExit, "2"),
    ),
    ("cli.em --out ''", lambda t: _em_cli(t, "run", "--out", ""), raises(SystemExit, "2")),
    (
        "cli.em foreign dir",
        lambda t: _em_cli(t, "run", "--out", str(_foreign_dir(t))),
        raises(SystemExit, "2"),
    ),
    (
        "cli.em analyse empty",
        lambda t: _em_cli(t, "analyse", "--out", str(t / "o")),
        raises(SystemExit, "2"),
    ),
    (
        "cli.em analyse --readme smoke",
        lambda t: _em_update_readme(t, _file(t, "README.md", "<!-- study-results:begin -->")),
        raises(SystemExit, "2"),
    ),
    (
        "cli.em analyse --readme missing",
        lambda t: _em_cli(t, "analyse", "--out", str(t / "o"), "--readme", str(t / "none.md")),
        raises(SystemExit, "2"),
    ),
]


def _ops():
    import entropylab.ops as ops

    return ops


def _snapshot(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_file():
            out[rel] = (p.read_bytes(), p.stat().st_mode)
        else:
            out[rel] = None
    return out


def test_case_count_and_unique_ids():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(ids) >= 100, len(ids)


@pytest.mark.parametrize("case_id,fn,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case_id, fn, expect, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # anything written to the cwd would show up in the snapshot
    work = tmp_path / "work"
    work.mkdir()
    if expect.kind == "raises":
        with pytest.raises(expect.exc) as info:
            fn(work)
        if info.type is SystemExit:
            assert str(info.value.code) == expect.match, info.value.code
            err = capsys.readouterr().err
            assert "error:" in err and "Traceback" not in err, err
        elif expect.match:
            import re

            assert re.search(expect.match, str(info.value)), (
                f"{case_id}: message {str(info.value)!r} does not name {expect.match!r}"
            )
        # no half-written output: no temp files anywhere, nothing in the cwd but the case folder
        leftovers = [k for k in _snapshot(tmp_path) if Path(k).name.endswith(".tmp")]
        assert not leftovers, leftovers
        assert os.listdir(tmp_path) == ["work"], os.listdir(tmp_path)
    elif expect.kind == "nan":
        out = fn(work)
        leaves = [np.asarray(x) for x in jax.tree.leaves(out)]
        assert leaves and all(np.all(np.isnan(x)) for x in leaves), (case_id, out)
    else:
        assert fn(work) == expect.value


def test_failed_cli_leaves_directories_untouched(tmp_path, monkeypatch, capsys):
    """The refusals above happen before anything is written: the foreign folder, the other-seed
    run folder and the file passed as --out are byte-identical afterwards."""
    from experiments.lm_pretrain import run

    monkeypatch.chdir(tmp_path)
    foreign, target = _foreign_dir(tmp_path), _file(tmp_path)
    rundir = _run_dir(tmp_path)
    before = _snapshot(tmp_path)
    for args in (
        ["--out", str(foreign)],
        ["--out", str(target)],
        ["--out", str(rundir), "--seed", "1"],
        ["--out", ""],
    ):
        with pytest.raises(SystemExit):
            run.main(["--preset", "smoke", "--no-progress", *args])
    assert _snapshot(tmp_path) == before
    assert json.loads((rundir / "manifest.json").read_text())["seed"] == 0
