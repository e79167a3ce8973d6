"""Entropy-aware decoding rules for the jitted KV-cache sampler.

Each rule is a frozen (hashable, hence static under ``jax.jit``) dataclass with the interface::

    rule.init(batch) -> state                          per-sequence state (a pytree of [B, ...])
    rule.apply(z [B, V], temp [B], state, t) -> (z, temp, code [B] int32, state)
    rule.observe(state, logp [B]) -> state             after the token is drawn

``z`` are float32 logits (masked tokens are ``-inf``), ``temp`` the temperature so far (starts at
``SamplingConfig.temperature``); the token is drawn from softmax(z / temp) after all rules, and
``logp`` is the log-probability (nats) of the drawn token under that final distribution.
``code`` says what the rule did at that token (0 = nothing; rule-specific codes below). Rules
compose left to right; :func:`generate_with_rules` carries every rule's state in the decode-loop
carry and logs per token: each rule's code, the effective temperature, and the entropy and
varentropy of the model's own (T = 1, unprocessed) distribution.

The stateless rules also plug into the plain sampler (:mod:`entropylab.rl.sampling`):
:class:`MinP` is a ``logit_processors`` entry (``f(z, t)``, applied at T = 1) and
:class:`EDT` / :class:`DynaTemp` are ``temperature_fn`` s (``f(entropy) -> T``; the sampler
passes the entropy at ``SamplingConfig.temperature``, so set that to 1 to get the model entropy).

Rules (formulas as implemented; entropies in nats unless stated):

* :class:`Mirostat` (Basu et al., arXiv:2007.14966; checked against llama.cpp
  ``src/llama-sampling.cpp``, ``llama_sampler_mirostat_apply`` / ``..._mirostat_v2_apply``):
  state μ per sequence, initialised to 2τ; surprise in **bits**.
  v2: keep the tokens with −log₂ p ≤ μ (always the top token), renormalise, draw.
  v1: estimate the Zipf exponent ŝ = Σᵢ tᵢbᵢ / Σᵢ tᵢ² over the top-m tokens
  (tᵢ = ln((i+2)/(i+1)), bᵢ = ln(pᵢ/pᵢ₊₁), i < m−1), ε̂ = ŝ − 1,
  k = (ε̂·2^μ / (1 − N^(−ε̂)))^(1/ŝ) (N = vocabulary), keep the top max(⌊k⌋, 1) tokens.
  Both: after drawing x, e = −log₂ π(x) − τ with π the truncated renormalised distribution,
  μ ← μ − η·e. Codes: 1 = at least one token truncated. Non-finite k (ŝ = 1) keeps all tokens.
  (The current sampler API renormalises before taking the surprise, as here; the older
  ``llama_sample_token_mirostat`` took the un-renormalised probability after top-k.)
* :class:`EDT` (Zhang et al., arXiv:2403.14541): T = T₀ · N^(θ/H) with H the entropy of the
  current logits at T = 1 and N < 1 (paper default 0.8), clamped below at ``t_min`` (H → 0 gives
  T → 0). Code 1 always (the temperature is set at every token).
* :class:`DynaTemp` (llama.cpp ``llama_sampler_temp_ext_apply``, the "dynatemp" sampler):
  T = T_min + (T_max − T_min)·(H / ln n)^κ with T_min = T₀ − δ (must be > 0 here; llama.cpp
  clamps it at 0), T_max = T₀ + δ, H the entropy of softmax(z) at T = 1 over the n candidate
  (finite) logits, κ the exponent. Code 1 always. (llama.cpp counts every candidate left by the
  samplers before it — the finite logits here — and leaves a single candidate untouched, where
  this gives T_min.)
* :class:`MinP` (Nguyen et al., arXiv:2407.01082): drop tokens with p < p_base · p_max, p =
  softmax(z / temp) (i.e. after the temperature so far; as a plain processor, at T = 1). Code 1 =
  at least one token dropped.
* :class:`Entropix` (xjdr-alt/entropix ``entropix/sampler.py`` quadrants, simplified): with H and
  V = Σ p (ln p + H)² (varentropy) of softmax(z) at T = 1: both ≤ the low thresholds → argmax
  (code 1); both ≥ the high thresholds → temperature × ``hot_factor`` (code 2); otherwise
  unchanged. entropix states its thresholds in bits (0.1 / 5.0); ours are in nats (× ln 2).
  Branching in the high-high quadrant is the tree sampler's job (:mod:`~.tree_sampling`).

Entropy Adaptive Decoding (EAD; arXiv:2502.06833, rule from the abstract — no released code was
found): two models with the same vocabulary decode in lock-step; the token is drawn from the
large model when the rolling mean of the small model's entropy over the last ``window`` tokens
(the current one included) exceeds ``threshold``, otherwise from the small one. With fixed shapes
both models run at every step (the KV caches of both must see every token); the saving a real
system gets is the fraction of tokens from the large model, which is logged.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from entropylab.ops.entropy import logprobs_and_entropy
from entropylab.rl import sampling as S

__all__ = [
    "EAD",
    "EDT",
    "DynaTemp",
    "Entropix",
    "MinP",
    "Mirostat",
    "RuleRollout",
    "entropy_varentropy",
    "generate_with_rules",
    "make_rule_sampler",
]

_LN2 = math.log(2.0)


def entropy_varentropy(z):
    """Entropy H = −Σ p ln p and varentropy Σ p (ln p + H)² of softmax(z), ``[..., V] -> [...]``.

    ``-inf`` logits have p = 0 and contribute nothing.
    """
    z = jnp.asarray(z, jnp.float32)
    lp = jax.nn.log_softmax(z, axis=-1)
    p = jnp.exp(lp)
    lp0 = jnp.where(p > 0, lp, 0.0)
    h = -jnp.sum(p * lp0, axis=-1)
    v = jnp.sum(p * (lp0 + h[..., None]) ** 2, axis=-1)
    return h, v


def _no_state(batch):
    return ()


def _keep_top(z):
    return z == jnp.max(z, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------- rules
@dataclasses.dataclass(frozen=True, kw_only=True)
class Mirostat:
    """Mirostat v1 / v2 (see the module docstring). ``tau`` target surprise (bits), ``eta``
    learning rate, ``m`` top tokens used by v1's Zipf estimate (llama.cpp default 100),
    ``vocab_size`` N (v1 only; defaults to the logits' width)."""

    version: int = 2
    tau: float = 5.0
    eta: float = 0.1
    m: int = 100
    vocab_size: int | None = None

    def __post_init__(self):
        if self.version not in (1, 2):
            raise ValueError(f"version must be 1 or 2, got {self.version}")
        if not self.tau > 0 or not self.eta > 0:
            raise ValueError(f"tau and eta must be > 0, got {self.tau}, {self.eta}")
        if self.m < 2:
            raise ValueError(f"m must be >= 2, got {self.m}")

    def init(self, batch):
        return {"mu": jnp.full((batch,), 2.0 * self.tau, jnp.float32)}

    def apply(self, z, temp, state, t):
        mu = state["mu"]
        lp = jax.nn.log_softmax(z / temp[:, None], axis=-1)
        if self.version == 2:
            keep = (-lp / _LN2 <= mu[:, None]) | _keep_top(z)
        else:
            v = z.shape[-1]
            m = min(self.m, v)
            n = float(self.vocab_size or v)
            top = jax.lax.top_k(lp, m)[0]  # [B, m] descending log-probs
            i = jnp.arange(m - 1, dtype=jnp.float32)
            ti = jnp.log((i + 2.0) / (i + 1.0))
            bi = top[:, :-1] - top[:, 1:]
            s_hat = jnp.sum(ti * bi, axis=-1) / jnp.sum(ti * ti)
            eps = s_hat - 1.0
            k = (eps * jnp.exp2(mu) / (1.0 - n ** (-eps))) ** (1.0 / s_hat)
            k = jnp.where(jnp.isfinite(k), k, float(v))
            k = jnp.clip(jnp.floor(k), 1.0, float(v)).astype(jnp.int32)
            srt = jnp.sort(z, axis=-1)[:, ::-1]
            kth = jnp.take_along_axis(srt, (k - 1)[:, None], axis=-1)
            keep = z >= kth
        finite = z > -jnp.inf
        code = jnp.any(finite & ~keep, axis=-1).astype(jnp.int32)
        return jnp.where(keep, z, -jnp.inf), temp, code, state

    def observe(self, state, logp):
        err = -logp / _LN2 - self.tau
        return {"mu": state["mu"] - self.eta * err}


@dataclasses.dataclass(frozen=True, kw_only=True)
class EDT:
    """Entropy-based dynamic temperature T = T₀·N^(θ/H), floored at ``t_min``."""

    t0: float = 1.0
    theta: float = 1.0
    n: float = 0.8
    t_min: float = 1e-2

    def __post_init__(self):
        if not (self.t0 > 0 and self.theta > 0 and self.t_min > 0):
            raise ValueError(f"t0, theta, t_min must be > 0, got {self.t0, self.theta, self.t_min}")
        if not 0 < self.n < 1:
            raise ValueError(f"n must be in (0, 1), got {self.n}")

    init = staticmethod(_no_state)

    def temperature(self, h):
        h = jnp.asarray(h, jnp.float32)
        # H = 0 (one candidate; may come out as -0.0) -> exponent +inf -> T -> 0 -> t_min
        expo = jnp.where(h > 0, self.theta / jnp.where(h > 0, h, 1.0), jnp.inf)
        t = self.t0 * jnp.float32(self.n) ** expo
        return jnp.maximum(t, self.t_min)

    def __call__(self, entropy):  # temperature_fn for the plain sampler
        return self.temperature(entropy)

    def apply(self, z, temp, state, t):
        h, _ = entropy_varentropy(z)
        return z, self.temperature(h), jnp.ones(z.shape[:1], jnp.int32), state

    def observe(self, state, logp):
        return state


@dataclasses.dataclass(frozen=True, kw_only=True)
class DynaTemp:
    """llama.cpp dynamic temperature: T = T_min + (T_max − T_min)·(H / ln n)^exponent."""

    temp: float = 1.0
    delta: float = 0.5
    exponent: float = 1.0
    vocab_size: int | None = None  # n for the temperature_fn form (the sampler's full vocab)

    def __post_init__(self):
        if not self.delta >= 0 or not self.temp - self.delta > 0:
            raise ValueError(
                f"need delta >= 0 and temp - delta > 0, got temp={self.temp}, delta={self.delta}"
            )
        if not self.exponent > 0:
            raise ValueError(f"exponent must be > 0, got {self.exponent}")

    init = staticmethod(_no_state)

    def temperature(self, h, n):
        lo, hi = self.temp - self.delta, self.temp + self.delta
        hn = jnp.clip(jnp.asarray(h, jnp.float32) / jnp.log(jnp.maximum(n, 2.0)), 0.0, 1.0)
        return lo + (hi - lo) * hn**self.exponent

    def __call__(self, entropy):
        if self.vocab_size is None:
            raise ValueError("DynaTemp as a temperature_fn needs vocab_size")
        return self.temperature(entropy, jnp.float32(self.vocab_size))

    def apply(self, z, temp, state, t):
        h, _ = entropy_varentropy(z)
        n = jnp.sum(z > -jnp.inf, axis=-1).astype(jnp.float32)
        return z, self.temperature(h, n), jnp.ones(z.shape[:1], jnp.int32), state

    def observe(self, state, logp):
        return state


@dataclasses.dataclass(frozen=True, kw_only=True)
class MinP:
    """min-p: drop tokens with p < p_base·p_max (p at the current temperature)."""

    p_base: float = 0.1

    def __post_init__(self):
        if not 0 < self.p_base <= 1:
            raise ValueError(f"p_base must be in (0, 1], got {self.p_base}")

    init = staticmethod(_no_state)

    def _filter(self, zt):
        top = jnp.max(zt, axis=-1, keepdims=True)
        return zt >= top + math.log(self.p_base)

    def __call__(self, z, t):  # logit processor for the plain sampler (T = 1)
        return jnp.where(self._filter(z), z, -jnp.inf)

    def apply(self, z, temp, state, t):
        keep = self._filter(z / temp[:, None])
        code = jnp.any((z > -jnp.inf) & ~keep, axis=-1).astype(jnp.int32)
        return jnp.where(keep, z, -jnp.inf), temp, code, state

    def observe(self, state, logp):
        return state


@dataclasses.dataclass(frozen=True, kw_only=True)
class Entropix:
    """Entropy/varentropy quadrants: argmax when both low, hotter when both high (nats)."""

    low_entropy: float = 0.1 * _LN2
    low_varentropy: float = 0.1 * _LN2
    high_entropy: float = 5.0 * _LN2
    high_varentropy: float = 5.0 * _LN2
    hot_factor: float = 1.5

    def __post_init__(self):
        if not (
            self.low_entropy <= self.high_entropy and self.low_varentropy <= self.high_varentropy
        ):
            raise ValueError("low thresholds must not exceed the high ones")
        if not self.hot_factor > 0:
            raise ValueError(f"hot_factor must be > 0, got {self.hot_factor}")

    init = staticmethod(_no_state)

    def apply(self, z, temp, state, t):
        h, v = entropy_varentropy(z)
        cold = (h <= self.low_entropy) & (v <= self.low_varentropy)
        hot = (h >= self.high_entropy) & (v >= self.high_varentropy) & ~cold
        z = jnp.where(cold[:, None] & ~_keep_top(z), -jnp.inf, z)
        temp = jnp.where(hot, temp * self.hot_factor, temp)
        code = jnp.where(cold, 1, jnp.where(hot, 2, 0)).astype(jnp.int32)
        return z, temp, code, state

    def observe(self, state, logp):
        return state


@dataclasses.dataclass(frozen=True, kw_only=True)
class EAD:
    """Entropy Adaptive Decoding switch: large model iff rolling mean small-model entropy over
    the last ``window`` tokens > ``threshold`` (nats)."""

    threshold: float = 2.0
    window: int = 4

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")


# ------------------------------------------------------------------------------ decode loop
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RuleRollout:
    """:class:`~entropylab.rl.sampling.Rollout` plus the per-token decoding log (``[B, N]``)."""

    rollout: S.Rollout
    codes: jax.Array  # [B, N, n_rules] int32, each rule's code at each token
    model_entropy: jax.Array  # [B, N] entropy of the model's T=1 distribution (before rules)
    varentropy: jax.Array  # [B, N] its varentropy
    large: jax.Array  # [B, N] bool, token drawn from the large model (EAD; else False)
    small_entropy: jax.Array  # [B, N] EAD: entropy of the small model at T=1 (else 0)
    states: tuple  # final state of each rule

    @property
    def large_fraction(self):
        """Fraction of generated tokens drawn from the large model (EAD)."""
        m = self.rollout.response_mask
        return jnp.sum(self.large & m) / jnp.maximum(jnp.sum(m), 1)


def generate_with_rules(
    model,
    prompt_tokens,
    prompt_mask,
    keys,
    cfg: S.SamplingConfig,
    rules: Sequence = (),
    *,
    large_model=None,
    ead: EAD | None = None,
) -> RuleRollout:
    """The sampler's decode loop (same conventions, keys and recorded quantities as
    :func:`entropylab.rl.sampling.generate`) with stateful ``rules`` and, optionally, EAD
    switching to ``large_model``. ``cfg.top_k``/``top_p`` still apply after the rules."""
    rules = tuple(rules)
    if (large_model is None) != (ead is None):
        raise ValueError("large_model and ead must be given together")
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    prompt_mask = jnp.asarray(prompt_mask, bool)
    b, p = prompt_tokens.shape
    n = cfg.max_new_tokens
    if prompt_mask.shape != (b, p) or keys.shape != (b,):
        raise ValueError(
            f"prompt_mask {prompt_mask.shape} and keys {keys.shape} must match prompts {(b, p)}"
        )
    models = (model,) if large_model is None else (model, large_model)
    pos = S._positions(prompt_mask)
    caches, lasts = [], []
    for m in models:
        logits, c = m.decode(
            prompt_tokens, m.init_cache(b, p + n), positions=pos, attention_mask=prompt_mask
        )
        caches.append(c)
        lasts.append(logits[:, -1].astype(jnp.float32))
    next_pos = pos[:, -1] + 1
    w = ead.window if ead is not None else 1

    def body(carry):
        t, lasts, caches, done, states, hist, out = carry
        z = lasts[0]
        use_large = jnp.zeros((b,), bool)
        h_small = jnp.zeros((b,), jnp.float32)
        if ead is not None:
            h_small, _ = entropy_varentropy(z)
            hist = jnp.roll(hist, 1, axis=1).at[:, 0].set(h_small)
            cnt = jnp.minimum(t + 1, w).astype(jnp.float32)
            roll = jnp.sum(jnp.where(jnp.arange(w) < t + 1, hist, 0.0), axis=1) / cnt
            use_large = roll > ead.threshold
            z = jnp.where(use_large[:, None], lasts[1], z)
        h_model, v_model = entropy_varentropy(z)
        temp = jnp.full((b,), cfg.temperature, jnp.float32)
        codes, new_states = [], []
        for rule, st in zip(rules, states):
            z, temp, code, st = rule.apply(z, temp, st, t)
            temp = jnp.broadcast_to(jnp.asarray(temp, jnp.float32), (b,))
            codes.append(code)
            new_states.append(st)
        zt = z / temp[:, None]
        if cfg.greedy:
            tok = jnp.argmax(zt, axis=-1).astype(jnp.int32)
        else:
            step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
            zf = S.filter_logits(zt, top_k=cfg.top_k, top_p=cfg.top_p)
            tok = jax.vmap(jax.random.categorical)(step_keys, zf).astype(jnp.int32)
        lp, ent = logprobs_and_entropy(zt, tok)
        valid = ~done
        # a finished sequence's rule state is frozen (its tokens are padding)
        states = tuple(
            jax.tree.map(
                lambda new, old: jnp.where(_rows(valid, new), new, old), r.observe(s, lp), s0
            )
            for r, s, s0 in zip(rules, new_states, states)
        )
        tok = jnp.where(valid, tok, cfg.pad_id)
        code_arr = jnp.stack(codes, axis=-1) if codes else jnp.zeros((b, 0), jnp.int32)
        out = {
            **S.record_token(out, t, tok, valid, lp, ent, temp),
            "codes": out["codes"].at[:, t].set(jnp.where(valid[:, None], code_arr, 0)),
            "h": out["h"].at[:, t].set(jnp.where(valid, h_model, 0.0)),
            "v": out["v"].at[:, t].set(jnp.where(valid, v_model, 0.0)),
            "large": out["large"].at[:, t].set(valid & use_large),
            "hs": out["hs"].at[:, t].set(jnp.where(valid, h_small, 0.0)),
        }
        done = done | (tok == cfg.eos_id)
        new_lasts, new_caches = [], []
        for m, c in zip(models, caches):
            logits, c = m.decode(
                tok[:, None], c, positions=(next_pos + t)[:, None], attention_mask=valid[:, None]
            )
            new_lasts.append(logits[:, -1].astype(jnp.float32))
            new_caches.append(c)
        return t + 1, tuple(new_lasts), tuple(new_caches), done, states, hist, out

    def cond(carry):
        return (carry[0] < n) & ~jnp.all(carry[3])

    out0 = {
        **S.empty_outputs(b, n, cfg),
        "codes": jnp.zeros((b, n, len(rules)), jnp.int32),
        "h": jnp.zeros((b, n), jnp.float32),
        "v": jnp.zeros((b, n), jnp.float32),
        "large": jnp.zeros((b, n), bool),
        "hs": jnp.zeros((b, n), jnp.float32),
    }
    states0 = tuple(r.init(b) for r in rules)
    carry = (
        jnp.int32(0),
        tuple(lasts),
        tuple(caches),
        jnp.zeros((b,), bool),
        states0,
        jnp.zeros((b, w), jnp.float32),
        out0,
    )
    _, _, _, done, states, _, out = jax.lax.while_loop(cond, body, carry)
    rollout = S.rollout_from_outputs(prompt_tokens, prompt_mask, out, done)
    return RuleRollout(
        rollout=rollout,
        codes=out["codes"],
        model_entropy=out["h"],
        varentropy=out["v"],
        large=out["large"],
        small_entropy=out["hs"],
        states=states,
    )


def _rows(valid, x):
    return valid.reshape(valid.shape + (1,) * (jnp.ndim(x) - 1))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _rules_jit(graphdef, cfg, rules, large_graphdef, ead, state, large_state, prompts, mask, keys):
    model = nnx.merge(graphdef, state)
    large = None if large_graphdef is None else nnx.merge(large_graphdef, large_state)
    return generate_with_rules(model, prompts, mask, keys, cfg, rules, large_model=large, ead=ead)


def make_rule_sampler(
    graphdef, cfg: S.SamplingConfig, rules: Sequence = (), *, large_graphdef=None, ead=None
):
    """Jitted ``sampler(state, prompt_tokens, prompt_mask, keys[, large_state]) -> RuleRollout``
    (compiled once per ``(graphdefs, cfg, rules, ead)``; the rules must be hashable)."""
    rules = tuple(rules)
    for r in rules:
        for attr in ("init", "apply", "observe"):
            if not callable(getattr(r, attr, None)):
                raise TypeError(f"rule {r!r} has no {attr}() (see entropylab.rl.decoding)")
    if (large_graphdef is None) != (ead is None):
        raise ValueError("large_graphdef and ead must be given together")

    def sampler(state, prompt_tokens, prompt_mask, keys, large_state=None):
        if (large_state is None) != (large_graphdef is None):
            raise ValueError("large_state is required exactly when large_graphdef was given")
        return _rules_jit(
            graphdef,
            cfg,
            rules,
            large_graphdef,
            ead,
            state,
            large_state,
            prompt_tokens,
            prompt_mask,
            keys,
        )

    return sampler
