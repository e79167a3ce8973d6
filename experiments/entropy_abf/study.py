"""Entropy-ABF context extension (arXiv:2401.07004): a pre-registered study on ``entropylab.study``.

The design, the claims and the verdict rules are in ``README.md`` (written before any result);
this file is their executable form. Commands (``--preset`` first, default ``quick``)::

    python -m experiments.entropy_abf.study --preset quick plan
    python -m experiments.entropy_abf.study --preset quick run --out DIR [--shard i/n]
    python -m experiments.entropy_abf.study --preset quick analyse --out DIR --compress \\
        --readme experiments/entropy_abf/README.md

One initialisation = one byte-level LM pre-trained from scratch at context L on the Python
standard-library code corpus (``entropylab.train``), cached like a warm start
(``entropylab.study.warmstart``; ``ENTROPYLAB_WARMSTARTS`` or ``runs/_warmstarts``). One job =
one (arm, initialisation): the pre-trained weights under the arm's context-extension method
(RoPE scaling / attention-logit scaling), optionally fine-tuned on a few windows of length
``factor``·L (the paper's Table-5 recipe scaled down: AdamW β = (0.9, 0.95), weight decay 0.1,
cosine schedule, no warm-up, 2 epochs), then evaluated on fixed held-out windows at 1×, 4× and
8× L: perplexity by position bucket, teacher-forced passkey retrieval (synthetic filler and real
code, several depths) and per-layer × per-head attention entropy by query position (the
paper's Fig. 1 against the uniform ``ln n`` curve). All arms of an initialisation see the same
fine-tuning windows and the same evaluation sequences (common random numbers).

Methods (``METHODS``; s = the extension factor, L = the pre-training context):

* ``rope``         the pre-trained RoPE, unchanged (the control).
* ``pi``           position interpolation: θ_i / s (HF ``linear``).
* ``ntk_by_parts`` the YaRN ramp without its temperature (HF ``yarn`` with attention_factor 1).
* ``yarn``         NTK-by-parts + logits × (0.1 ln s + 1)².
* ``abf``          RoPE base raised by the paper's ratio (500,000 / 10,000 = 50×).
* ``eabf``         Entropy-ABF as the paper writes it: ``abf`` + logits × max(1, ln i / ln L) in
                   layers ≥ 2 (layers 0 and 1 unscaled).
* ``eabf_code``    Entropy-ABF as the released code runs (GAIR-NLP/Entropy-ABF ``patch/EABF.py``:
                   the layer exemption never takes effect, every layer is scaled).
* ``ssmax``        Scalable-Softmax (arXiv:2501.19399) applied after pre-training: logits ×
                   s·ln n with s = 1 / ln L (factor 1 at n = L, below 1 inside the window).
* ``dynamic``      dynamic NTK (HF ``dynamic``; the base grows with the current length).

The RoPE base of the pre-trained model is scaled to the context so that the longest wavelength
is about the same multiple of L as in LLaMA-2 (base 10,000 at L = 4096, head_dim 128): see
``Preset.rope_base``; ABF multiplies it by the same 50× the paper uses.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from entropylab.models import Transformer, TransformerConfig
from entropylab.study import Arm, Claim, StudySpec, main
from entropylab.study.runner import Runner, format_plan
from entropylab.study.warmstart import WarmStartCache, WarmStartKey
from entropylab.train import LMBatches, OptimConfig, TrainConfig, stdlib_corpus, train

HERE = Path(__file__).parent
EVAL_SEED = 20260401  # fixed evaluation windows and passkeys (the same in every job)
METHODS = ("rope", "pi", "ntk_by_parts", "yarn", "abf", "eabf", "eabf_code", "ssmax", "dynamic")
FACTOR_METHODS = ("pi", "ntk_by_parts", "yarn", "dynamic")  # depend on the target factor s
ABF_RATIO = 50.0  # 500,000 / 10,000 (the paper's Table 1 and released code)
N_EARLY = 2  # layers the paper leaves unscaled; "early" layers in claim (a)
FILLER = (
    b"The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "  # noqa: E501
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    context: int  # L, the pre-training context (bytes)
    rope_base: float
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    pretrain_warmup: int
    max_bytes: int | None  # corpus truncation (smoke only)
    factor: int  # the extension target s (fine-tuning length s·L)
    eval_factors: tuple[int, ...]  # evaluation lengths k·L
    eval_rows: int  # held-out windows per evaluation length
    passkey_depths: tuple[float, ...]
    passkey_keys: int  # keys per (filler, depth)
    passkey_digits: int
    entropy_bins: int
    ft_samples: dict  # size name -> number of fine-tuning windows
    ft_batch: int
    ft_epochs: int
    ft_lr: float
    zero_shot: tuple[str, ...]
    ft_methods: tuple[str, ...]
    inits: tuple[int, ...]
    query_block: int = 256
    jit_eval: bool = True  # smoke: eager evaluation (tiny shapes: compiling costs more)

    @property
    def abf_base(self) -> float:
        return self.rope_base * ABF_RATIO

    def ft_steps(self, size: str) -> int:
        return self.ft_epochs * (self.ft_samples[size] // self.ft_batch)


def _rope_base(context: int, head_dim: int) -> float:
    """Base b with 2π·b^((d−2)/d) = (LLaMA-2's longest wavelength / 4096)·L (≈ 13.2·L)."""
    ratio = 2 * math.pi * 10_000 ** (126 / 128) / 4096
    return float(round((ratio * context / (2 * math.pi)) ** (head_dim / (head_dim - 2))))


PRESETS = {
    "smoke": Preset(
        d_model=32,
        n_layers=3,
        n_heads=2,
        d_ff=64,
        context=48,
        rope_base=_rope_base(48, 16),
        pretrain_steps=6,
        pretrain_batch=4,
        pretrain_lr=3e-3,
        pretrain_warmup=1,
        max_bytes=60_000,
        factor=4,
        eval_factors=(1, 4, 8),
        eval_rows=2,
        passkey_depths=(0.5,),
        passkey_keys=1,
        passkey_digits=3,
        entropy_bins=6,
        ft_samples={"small": 4},
        ft_batch=2,
        ft_epochs=1,
        ft_lr=3e-4,
        zero_shot=("rope", "eabf", "ssmax", "pi"),
        ft_methods=("abf", "eabf"),
        inits=(0, 1),
        query_block=0,
        jit_eval=False,
    ),
    # the realistic run committed here, cut to ~30 min on the shared 2-core machine (README)
    "quick": Preset(
        d_model=64,
        n_layers=4,
        n_heads=4,
        d_ff=256,
        context=128,
        rope_base=_rope_base(128, 16),
        pretrain_steps=200,
        pretrain_batch=16,
        pretrain_lr=3e-3,
        pretrain_warmup=20,
        max_bytes=None,
        factor=4,
        eval_factors=(1, 4, 8),
        eval_rows=4,
        passkey_depths=(0.2, 0.8),
        passkey_keys=1,
        passkey_digits=5,
        entropy_bins=12,
        ft_samples={"small": 8, "large": 32},
        ft_batch=4,
        ft_epochs=2,
        ft_lr=3e-4,
        zero_shot=METHODS,
        ft_methods=("pi", "abf", "eabf"),
        inits=(0, 1, 2, 3, 4),
    ),
}
# the whole design: every paper method (and the released-code Entropy-ABF) fine-tuned on three
# set sizes, 8 initialisations, twice the pre-training
PRESETS["full"] = dataclasses.replace(
    PRESETS["quick"], pretrain_steps=400, pretrain_warmup=40, eval_rows=8, passkey_keys=2,
    passkey_depths=(0.1, 0.5, 0.9),
    ft_samples={"small": 8, "medium": 32, "large": 128},
    ft_methods=("pi", "ntk_by_parts", "yarn", "abf", "eabf", "eabf_code"), inits=tuple(range(8)),
)  # fmt: skip


def arm_names(P: Preset) -> tuple[str, ...]:
    """Fine-tuned arms first (``plan`` calibrates on the first job), then zero-shot ones."""
    ft = tuple(f"{m}-{s}" for s in P.ft_samples for m in P.ft_methods)
    return tuple(reversed(ft)) + P.zero_shot


def parse_arm(name: str) -> tuple[str, str | None]:
    method, _, size = name.partition("-")
    return method, (size or None)


# -- model configs -------------------------------------------------------------------------------


def pretrain_config(P: Preset) -> TransformerConfig:
    return TransformerConfig.tiny(
        vocab_size=256, d_model=P.d_model, n_layers=P.n_layers, n_heads=P.n_heads, d_ff=P.d_ff,
        max_seq_len=P.context, attn_query_block=P.query_block,
    ).with_rope("default", base=P.rope_base)  # fmt: skip


def method_config(P: Preset, method: str, factor: int) -> TransformerConfig:
    """The pre-trained architecture under ``method`` extended to ``factor``·L."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    L, b = P.context, P.rope_base
    cfg = dataclasses.replace(pretrain_config(P), max_seq_len=max(P.eval_factors) * L)
    f = float(factor)
    if method == "rope":
        return cfg.with_rope("default", base=b)
    if method == "pi":
        return cfg.with_rope("linear", base=b, factor=f)
    if method in ("ntk_by_parts", "yarn"):
        extra = {"attention_factor": 1.0} if method == "ntk_by_parts" else {}
        return cfg.with_rope("yarn", base=b, factor=f, original_max_position_embeddings=L, **extra)
    if method == "abf":
        return cfg.with_rope("abf", base=b, abf_base=P.abf_base)
    if method in ("eabf", "eabf_code"):
        return cfg.with_rope("entropy_abf", base=b, abf_base=P.abf_base,
                             original_max_position_embeddings=L,
                             entropy_abf_layer_skip=method == "eabf")  # fmt: skip
    if method == "ssmax":
        cfg = dataclasses.replace(cfg, attn_length_scaling="ssmax", ssmax_init=1.0 / math.log(L))
        return cfg.with_rope("default", base=b)
    return cfg.with_rope("dynamic", base=b, factor=f, original_max_position_embeddings=L)


def _flat(model) -> dict[str, np.ndarray]:
    _, params, _ = nnx.split(model, nnx.Param, ...)
    return {"/".join(str(k) for k in key): np.asarray(v) for key, v in nnx.to_flat_state(params)}


def load_into(model, flat: dict[str, np.ndarray], *, new_ok=("ssmax_s",)):
    """Copy pre-trained ``flat`` params into ``model`` (in place); parameters named in ``new_ok``
    (added by the method, e.g. SSMax's s) keep their initial value; anything else missing or
    mis-shaped raises."""
    _, params, _ = nnx.split(model, nnx.Param, ...)
    new, used = [], set()
    for key, var in nnx.to_flat_state(params):
        name = "/".join(str(k) for k in key)
        if name in flat:
            if flat[name].shape != var.shape:
                raise ValueError(f"parameter {name}: shape {flat[name].shape} != {var.shape}")
            new.append((key, var.replace(jnp.asarray(flat[name]))))
            used.add(name)
        elif not any(str(k) in new_ok for k in key):
            raise ValueError(f"parameter {name} is not in the pre-trained weights")
    if used != set(flat):
        raise ValueError(f"pre-trained parameters unused: {sorted(set(flat) - used)}")
    nnx.update(model, nnx.from_flat_state(new))
    return model


# -- data -----------------------------------------------------------------------------------------


@functools.cache
def corpus(max_bytes: int | None):
    return stdlib_corpus(max_bytes=max_bytes)


def _windows(tokens: np.ndarray, starts) -> np.ndarray:
    return np.stack([np.asarray(tokens[s : s + n]) for s, n in starts]).astype(np.int32)


def passkey_rows(P: Preset, T: int, held: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """``[R, T + 1]`` passkey sequences (inputs = [:, :-1], targets = [:, 1:]) and their specs.

    A row is ``filler… \\npass_key = DDDDD\\n …filler\\npass_key = DDDDD`` with the key
    inserted at ``depth`` of the filler; the last ``digits`` targets are the key. Fillers:
    ``synthetic`` (the passkey literature's repeated sentences) and ``code`` (a held-out window).
    """
    rng = np.random.default_rng([EVAL_SEED, T])
    rows, specs = [], []
    for filler in ("synthetic", "code"):
        for depth in P.passkey_depths:
            for _ in range(P.passkey_keys):
                key = "".join(str(d) for d in rng.integers(0, 10, P.passkey_digits))
                ins = f"\npass_key = {key}\n".encode()
                query, ans = b"\npass_key = ", key.encode()
                n_fill = T + 1 - len(ins) - len(query) - len(ans)
                if n_fill < 4:
                    raise ValueError(f"length {T} is too short for a passkey row")
                if filler == "synthetic":
                    text = (FILLER * (n_fill // len(FILLER) + 2))[:n_fill]
                else:
                    s = int(rng.integers(0, held.size - n_fill - 1))
                    text = bytes(np.asarray(held[s : s + n_fill]).tolist())
                cut = int(round(depth * n_fill))
                seq = text[:cut] + ins + text[cut:] + query + ans
                rows.append(np.frombuffer(seq, np.uint8).astype(np.int32))
                specs.append({"filler": filler, "depth": depth, "key": key})
    return np.stack(rows), specs


def eval_sets(P: Preset) -> dict:
    """The fixed evaluation data: ``lm [R, kmax·L + 1]`` held-out windows (the k× metrics read
    their first k·L + 1 tokens) and, per length k, the passkey rows ``[R_k, k·L + 1]``."""
    _, held, _ = corpus(P.max_bytes)
    T = max(P.eval_factors) * P.context
    rng = np.random.default_rng([EVAL_SEED, 7])
    starts = np.sort(rng.choice(held.size - T - 2, P.eval_rows, replace=False))
    lm = _windows(held, [(int(s), T + 1) for s in starts])
    pk = {k: passkey_rows(P, k * P.context, held) for k in P.eval_factors}
    return {"lm": lm, "passkey": pk}


def finetune_windows(P: Preset, n: int, seed: int) -> np.ndarray:
    """``n`` random training-split windows of s·L tokens, concatenated (+1 token) so that
    :class:`LMBatches` with ``seq_len = s·L`` cuts exactly them."""
    train_tokens, _, _ = corpus(P.max_bytes)
    T = P.factor * P.context
    starts = np.random.default_rng([seed, 11]).choice(train_tokens.size - T - 2, n, replace=False)
    chunks = [np.asarray(train_tokens[s : s + T]) for s in starts]
    chunks.append(np.asarray(train_tokens[starts[-1] + T : starts[-1] + T + 1]))
    return np.concatenate(chunks).astype(np.uint8)


# -- evaluation -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _forward(graphdef, jit: bool = True):
    def f(state, inputs, targets):
        logits, aux = nnx.merge(graphdef, state)(inputs, aux=("attn_entropy_map",))
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        hit = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
        return nll, hit, aux.attn_entropy_map  # [layers, B, H, T]

    return jax.jit(f) if jit else f


def _bins(T: int, nbins: int) -> list[tuple[int, int]]:
    """Log-spaced query-position bins [a, b) over positions 1 … T−1 (position 0 has one key)."""
    edges = np.unique(np.round(np.geomspace(1, T, nbins + 1)).astype(int))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _slope(x, y) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def _length_free(cfg: TransformerConfig) -> bool:
    """Whether the forward at positions < T is the same whatever the sequence length (causal
    attention and length-independent RoPE frequencies: every method here but dynamic NTK)."""
    return cfg.rope.rope_type not in ("dynamic", "longrope")


def evaluate(P: Preset, model, sets: dict, *, factors=None, prefix: str = "",
             entropy: bool = True) -> dict:  # fmt: skip
    """Perplexity by position bucket, passkey accuracy and attention entropy at each length k·L.

    Rows shorter than the forward are right-padded (causal: padding never reaches an earlier
    position). Length-independent methods run one forward at the longest length; dynamic NTK,
    whose frequencies follow the current length, one forward per length.
    """
    graphdef, state = nnx.split(model)
    fwd = _forward(graphdef, P.jit_eval)
    factors = tuple(factors or P.eval_factors)
    groups = [factors] if _length_free(model.config) else [(k,) for k in factors]
    L, out = P.context, {}
    for group in groups:
        T = max(group) * L
        pk = {k: sets["passkey"][k][0] for k in group}
        rows = [sets["lm"][:, : T + 1]] + [
            np.pad(r, ((0, 0), (0, T + 1 - r.shape[1]))) for r in pk.values()
        ]
        rows = jnp.asarray(np.concatenate(rows))
        nll, hit, ent = fwd(state, rows[:, :-1], rows[:, 1:])
        nll, hit, ent = np.asarray(nll, np.float64), np.asarray(hit), np.asarray(ent, np.float64)
        n_lm, first = sets["lm"].shape[0], sets["lm"].shape[0]
        for k in group:
            Tk = k * L
            lm = nll[:n_lm, :Tk]
            out[f"{prefix}ppl/x{k}"] = float(np.exp(lm.mean()))
            edges = [0] + [L * 2**j for j in range(int(math.log2(k)) + 1)]
            for a, b in zip(edges[:-1], edges[1:]):
                out[f"{prefix}ppl/x{k}/{a}-{b}"] = float(np.exp(lm[:, a:b].mean()))
            if k > 1:
                out[f"{prefix}ppl/x{k}/beyond"] = float(np.exp(lm[:, L:].mean()))
            specs = sets["passkey"][k][1]
            d = P.passkey_digits
            acc = hit[first : first + len(specs), Tk - d : Tk]  # teacher-forced key digits
            first += len(specs)
            out[f"{prefix}passkey/x{k}"] = float(acc.mean())
            out[f"{prefix}passkey_exact/x{k}"] = float((acc.min(1) == 1).mean())
            for filler in ("synthetic", "code"):
                idx = [i for i, sp in enumerate(specs) if sp["filler"] == filler]
                out[f"{prefix}passkey/x{k}/{filler}"] = float(acc[idx].mean())
            if entropy:
                out |= _entropy_metrics(P, ent[:, :n_lm, :, :Tk].mean(1), k, prefix)
    return out


def _entropy_metrics(P: Preset, e: np.ndarray, k: int, prefix: str) -> dict:
    """From ``e [layers, H, T]`` (mean over the held-out rows): per-layer × per-head entropy in
    log-spaced position bins, the uniform curve (mean ln n per bin) and the claim summaries."""
    T = e.shape[-1]
    bins = _bins(T, P.entropy_bins)
    lnn = np.log(np.arange(T) + 1.0)
    p = f"{prefix}entropy/x{k}/"
    out = {
        p + "lh_bins": [
            [[float(e[layer, h, a:b].mean()) for a, b in bins] for h in range(e.shape[1])]
            for layer in range(e.shape[0])
        ],
        p + "uniform": [float(lnn[a:b].mean()) for a, b in bins],
        p + "bins": [list(b) for b in bins],
    }
    el = e.mean(1)  # [layers, T]
    out[p + "late_last"] = float(el[N_EARLY:, T // 2 :].mean())
    out[p + "early_last"] = float(el[:N_EARLY, T // 2 :].mean())
    if k == 1:
        pos = np.arange(3, T)  # n = pos + 1 >= 4 keys
        slopes = [_slope(lnn[pos], el[layer, pos]) for layer in range(el.shape[0])]
        out[f"{prefix}entropy/slope_early"] = float(np.mean(slopes[:N_EARLY]))
        out[f"{prefix}entropy/slope_late"] = float(np.mean(slopes[N_EARLY:]))
        out[f"{prefix}entropy/slope_layers"] = slopes
    return out


# -- the job --------------------------------------------------------------------------------------


def _cache_root() -> Path:
    return Path(os.environ.get("ENTROPYLAB_WARMSTARTS", "runs/_warmstarts"))


def pretrain_key(P: Preset, init: int) -> WarmStartKey:
    pre = {k: getattr(P, k) for k in ("context", "pretrain_steps", "pretrain_batch",
                                      "pretrain_lr", "pretrain_warmup", "max_bytes")}  # fmt: skip
    return WarmStartKey(task=f"stdlib_code_lm_L{P.context}", split={"holdout_fraction": 0.05},
                        model=pretrain_config(P), sft=pre, seed=init)  # fmt: skip


def pretrained(P: Preset, init: int):
    """(flat params, warm-start record) of initialisation ``init`` (trained once, then cached)."""
    model = Transformer(pretrain_config(P), rngs=nnx.Rngs(init))

    def fit(m):
        tr, _, _ = corpus(P.max_bytes)
        cfg = TrainConfig(
            steps=P.pretrain_steps,
            optim=OptimConfig(
                learning_rate=P.pretrain_lr,
                warmup_steps=P.pretrain_warmup,
                total_steps=P.pretrain_steps,
            ),  # fmt: skip
            seed=init,
            progress=False,
        )
        res = train(m, LMBatches(tr, batch_size=P.pretrain_batch, seq_len=P.context, seed=init),
                    cfg)  # fmt: skip
        nnx.update(m, res.state["params"])
        return [{"step": r["step"], "loss": r["loss"]} for r in res.history]

    ws = WarmStartCache(_cache_root()).get(model, pretrain_key(P, init), fit)
    return _flat(model), ws


def job(ctx) -> dict:
    P: Preset = ctx.spec.config["P"]
    seed = ctx.seeds[0]
    method, size = parse_arm(ctx.arm.name)
    t0 = time.time()
    flat, ws = pretrained(P, ctx.init)
    warm_s = time.time() - t0
    sets = eval_sets(P)
    model = load_into(Transformer(method_config(P, method, P.factor), rngs=nnx.Rngs(0)), flat)
    with ctx.step_logger(seed) as log:
        steps = 0
        if size is not None:
            steps = min(P.ft_steps(size), ctx.steps)
            T = P.factor * P.context
            toks = finetune_windows(P, P.ft_samples[size], ctx.data_seed(seed))
            batches = LMBatches(toks, batch_size=P.ft_batch, seq_len=T, seed=ctx.data_seed(seed))
            cfg = TrainConfig(
                steps=steps,
                optim=OptimConfig(learning_rate=P.ft_lr, warmup_steps=0, total_steps=steps),
                seed=ctx.data_seed(seed),
                progress=False,
            )
            res = train(model, batches, cfg)
            nnx.update(model, res.state["params"])
            for r in res.history[:-1]:
                log.log(r["step"], {"train/loss": r["loss"], "time/step_s": r["step_time_s"]})
            last = res.history[-1]
            rec = {"train/loss": last["loss"], "time/step_s": last["step_time_s"]}
        else:
            rec = {}
        t_eval = time.perf_counter()
        rec |= evaluate(P, model, sets)
        if size is None and method in FACTOR_METHODS:  # the same method aimed at 8×
            k = max(P.eval_factors)
            m8 = load_into(Transformer(method_config(P, method, k), rngs=nnx.Rngs(0)), flat)
            rec |= evaluate(P, m8, sets, factors=(k,), prefix="target8/", entropy=False)
        rec["time/eval_s"] = time.perf_counter() - t_eval
        log.log(steps, rec)
    result = {"time/warmstart_s": warm_s, "warmstart/param_hash": ws.param_hash,
              "warmstart/cached": ws.cached, "ft_steps": steps, "context": P.context,
              "factor": P.factor}  # fmt: skip
    if method == "rope" and size is None:  # the pre-training curve, once per initialisation
        result["pretrain/loss"] = [[h["step"], h["loss"]] for h in ws.history]
    return result


# -- claims ---------------------------------------------------------------------------------------


def _value(key):
    def f(job):
        recs = [r for r in job.records if key in r]
        if not recs:
            raise ValueError(f"metric {key!r} is not logged by {job.arm}/init{job.init}")
        return float(recs[-1][key])

    f.__name__ = key.replace("/", "_")
    return f


def slope_gap(job) -> float:
    """Early-layer minus late-layer slope of attention entropy against ln n, inside L."""
    return _value("entropy/slope_early")(job) - _value("entropy/slope_late")(job)


def rope_ppl_ratio(job) -> float:
    """log(ppl beyond the window at 4× / ppl inside the window at 1×)."""
    return math.log(_value("ppl/x4/beyond")(job)) - math.log(_value("ppl/x1")(job))


def rope_entropy_rise(job) -> float:
    """Late-layer entropy, second half of 4× rows minus second half of 1× rows (nats)."""
    return _value("entropy/x4/late_last")(job) - _value("entropy/x1/late_last")(job)


slope_gap.__name__, rope_ppl_ratio.__name__ = "slope_gap", "rope_ppl_ratio"


def claims_for(P: Preset) -> tuple[Claim, ...]:
    k = P.factor
    kmax = max(P.eval_factors)
    c = [
        Claim(name="a_early_entropy_grows", statement="attention entropy in layers 0–1 grows "
              "with the number of context tokens inside the training window (slope vs ln n)",
              metric=_value("entropy/slope_early"), test="superiority", arm="rope",
              effect_of_interest=0.3),
        Claim(name="a_early_steeper_than_late", statement="… more steeply than in the later "
              "layers (which the paper finds nearly flat)", metric=slope_gap,
              test="superiority", arm="rope", effect_of_interest=0.2),
        Claim(name="b_rope_ppl_degrades", statement=f"beyond the window plain RoPE's perplexity "
              f"degrades: positions [L, {k}L) at {k}× vs the whole window at 1× (log ratio)",
              metric=rope_ppl_ratio, test="superiority", arm="rope",
              effect_of_interest=math.log(1.5)),
        Claim(name="b_rope_entropy_rises", statement=f"beyond the window plain RoPE's later-"
              f"layer attention entropy rises ({k}× vs 1×, second half of the rows)",
              metric=rope_entropy_rise, test="superiority", arm="rope", effect_of_interest=0.1),
    ]  # fmt: skip
    baselines = [m for m in P.ft_methods if m not in ("eabf", "eabf_code")]
    if "eabf" in P.ft_methods:
        for size in P.ft_samples:
            pre = f"m_ft_{size}_moves_eabf"
            if "eabf" in P.zero_shot:
                c.append(Claim(name=pre, kind="manipulation", statement=f"fine-tuning on the "
                               f"'{size}' set ({P.ft_samples[size]} windows) lowers Entropy-ABF's "
                               f"{k}× perplexity", metric=f"ppl/x{k}", test="superiority",
                               arm=f"eabf-{size}", baseline="eabf", direction="less",
                               transform="log", effect_of_interest=math.log(1 / 0.9)))  # fmt: skip
            for b in baselines:
                c.append(Claim(name=f"c_{size}_eabf_vs_{b}", statement=f"with {P.ft_samples[size]}"
                               f" fine-tuning windows Entropy-ABF reaches a lower {k}× perplexity "
                               f"than {b} (Table 5 analogue)", metric=f"ppl/x{k}",
                               test="superiority", arm=f"eabf-{size}", baseline=f"{b}-{size}",
                               direction="less", transform="log",
                               effect_of_interest=math.log(1 / 0.97),
                               preconditions=(pre,) if "eabf" in P.zero_shot else ()))  # fmt: skip
        big = list(P.ft_samples)[-1]
        for b in baselines:
            c.append(Claim(name=f"c_robust_eabf_vs_{b}", statement=f"fine-tuned at {k}× "
                           f"('{big}' set), Entropy-ABF keeps a lower perplexity than {b} at "
                           f"{kmax}× (Table 4 analogue)", metric=f"ppl/x{kmax}",
                           test="superiority", arm=f"eabf-{big}", baseline=f"{b}-{big}",
                           direction="less", transform="log",
                           effect_of_interest=math.log(1 / 0.97)))  # fmt: skip
        if "abf" in baselines:
            c.append(Claim(name="c_passkey_eabf_vs_abf", statement=f"fine-tuned at {k}× ('{big}' "
                           f"set), Entropy-ABF retrieves the passkey at {k}× more often than ABF "
                           f"(teacher-forced digit accuracy)", metric=f"passkey/x{k}",
                           test="superiority", arm=f"eabf-{big}", baseline=f"abf-{big}",
                           effect_of_interest=0.05))  # fmt: skip
    return tuple(c)


def build_spec(preset: str) -> StudySpec:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    P = PRESETS[preset]
    arms = tuple(Arm(name=a, role="control" if a == "rope" else "arm") for a in arm_names(P))
    return StudySpec(
        name="entropy_abf",
        arms=arms,
        inits=P.inits,
        steps=max(P.ft_steps(s) for s in P.ft_samples),
        config={"preset": preset, "P": P},
        claims=claims_for(P),
    )


def refined_plan(spec: StudySpec, plan: dict) -> dict:
    """``plan`` charges every job ``spec.steps`` steps; here each arm is charged its own."""
    P = spec.config["P"]
    total = len(spec.inits) * plan["warmstart_per_init_s"]
    for a in spec.arms:
        _, size = parse_arm(a.name)
        steps = P.ft_steps(size) if size else 0
        total += len(spec.inits) * (plan["fixed_per_job_s"] + steps * plan["per_step_s"])
    return {**plan, "refined_total_s": total}


TABLE_KEYS = ("ppl/x1", "ppl/x4", "ppl/x4/beyond", "ppl/x8", "target8/ppl/x8", "passkey/x1",
              "passkey/x4", "passkey/x8", "passkey/x4/synthetic", "passkey/x4/code",
              "entropy/slope_early", "entropy/slope_late", "entropy/x1/late_last",
              "entropy/x4/late_last", "entropy/x8/late_last")  # fmt: skip


def tables(spec: StudySpec, out) -> dict:
    """Per arm and key: mean, sd and n over initialisations of each key's last logged value
    (the harness's :func:`~entropylab.study.analyse.arm_table`; every key here is logged by the
    job's final evaluation record); writes ``<out>/tables.json`` and ``<out>/TABLES.md`` (every
    number from the run files)."""
    from entropylab.study import load_jobs
    from entropylab.study.analyse import arm_table
    from entropylab.study.provenance import atomic_write_json, atomic_write_text

    jobs, _ = load_jobs(out)
    res = arm_table(jobs, [a.name for a in spec.arms], TABLE_KEYS)
    atomic_write_json(Path(out) / "tables.json", res)
    keys = [k for k in TABLE_KEYS if any(k in r for r in res.values())]
    lines = [f"# {spec.name}: per-arm table (mean ± sd over initialisations, final record)", "",
             "| arm | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]  # fmt: skip
    for a, row in res.items():
        cells = [f"{row[k]['mean']:.4g} ± {row[k]['sd']:.2g}" if k in row else "—" for k in keys]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    atomic_write_text(Path(out) / "TABLES.md", "\n".join(lines) + "\n")
    return res


def cli(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    preset = "quick"
    if argv[:1] == ["--preset"]:
        preset, argv = argv[1], argv[2:]
    spec = build_spec(preset)
    out_default = f"runs/entropy_abf/{preset}"
    if argv[:1] == ["tables"]:
        out = argv[argv.index("--out") + 1] if "--out" in argv else out_default
        tables(spec, out)
        print(Path(out, "TABLES.md").read_text())
        return 0
    if argv[:1] == ["plan"]:
        out = out_default
        if "--out" in argv:
            out = argv[argv.index("--out") + 1]
        plan = refined_plan(spec, Runner(spec, job, Path(out)).plan(calibration_steps=3))
        print(format_plan(plan))
        print(f"per-arm steps: total {plan['refined_total_s'] / 60:.1f} min on one process")
        print(json.dumps({k: v for k, v in plan.items() if k != "per_shard_s"}))
        return 0
    return main(spec, job, argv, default_out=out_default,
                prog="python -m experiments.entropy_abf.study")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(cli())
