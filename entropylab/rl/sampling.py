"""Jitted autoregressive sampler over a preallocated KV cache.

One compiled function does the prefill and then a ``lax.while_loop`` of single-token decode
steps (stopping early once every sequence has emitted EOS), and returns, for every generated
position, the sampled token, its log-probability and the **full-vocabulary entropy** of the
sampling distribution, plus the response mask.

Conventions (stated because the trainer must recompute the same numbers):

* The recorded log-prob and entropy are those of softmax(z / T) over the *whole* vocabulary, with
  z the model's float32 logits after the logit processors and T the (per-token) temperature; top-k
  / top-p truncation only restricts which token is drawn (as in verl/vLLM, whose rollout log-probs
  are also the untruncated distribution). With ``top_k=0, top_p=1`` the behaviour policy is
  exactly softmax(z / T).
* Prompts are left-padded (``prompt_mask`` marks real tokens); RoPE positions count real tokens
  only, so a padded prompt is processed exactly as the unpadded one.
* The response mask includes the EOS token (it is a generated action) and nothing after it.
* Randomness: the key of sample j of prompt i at RL step s is
  ``fold_in(fold_in(fold_in(key(seed), s), i), j)`` (:func:`sample_keys`), and token t of that
  sample uses ``fold_in(that key, t)``, so a rerun or a resumed run reproduces every sample, and a
  sample does not depend on the batch it is in.
* ``temperature_fn(entropy_at_base_T [B]) -> T [B]`` (e.g. HAPO's adaptive temperature) sets a
  per-token temperature from the entropy of the base-temperature distribution; with a
  ``temperature_state`` pytree (data, not static: e.g. statistics of the previous batch) it is
  called as ``temperature_fn(entropy, temperature_state)``;
  ``logit_processors`` are ``f(logits [B, V], step) -> logits`` applied before temperature.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from entropylab.ops.entropy import logprobs_and_entropy, token_entropy


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """Decoding settings (static under jit)."""

    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    eos_id: int = 2
    pad_id: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Rollout:
    """Sampler output; ``N`` = max_new_tokens."""

    tokens: jax.Array  # [B, P + N] prompt (left-padded) followed by the response
    mask: jax.Array  # [B, P + N] valid tokens (prompt and response)
    response: jax.Array  # [B, N] sampled tokens (pad after EOS)
    response_mask: jax.Array  # [B, N] generated positions up to and including EOS
    logp: jax.Array  # [B, N] log π(token) under softmax(z/T), float32
    entropy: jax.Array  # [B, N] full-vocabulary entropy of softmax(z/T), float32
    finished: jax.Array  # [B] emitted EOS within N tokens
    temperature: jax.Array  # [B, N] temperature used per token


def sample_keys(seed: int, step, prompt_index, sample_index) -> jax.Array:
    """Per-sample keys ``fold_in(fold_in(fold_in(key(seed), step), i), j)`` for arrays i, j."""
    base = jax.random.fold_in(jax.random.key(seed), step)
    fold = jax.vmap(lambda i, j: jax.random.fold_in(jax.random.fold_in(base, i), j))
    return fold(jnp.asarray(prompt_index, jnp.uint32), jnp.asarray(sample_index, jnp.uint32))


def filter_logits(z, *, top_k: int = 0, top_p: float = 1.0):
    """Mask (to −inf) all but the top-k tokens and the smallest nucleus with mass ≥ top_p.

    Args: z ``[B, V]`` float32 (already temperature-scaled). Returns ``[B, V]``.
    """
    if top_k and top_k < z.shape[-1]:
        kth = jax.lax.top_k(z, top_k)[0][..., -1:]
        z = jnp.where(z < kth, -jnp.inf, z)
    if top_p < 1.0:
        srt = jnp.sort(z, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(srt, axis=-1)
        cum = jnp.cumsum(probs, axis=-1)
        # keep a token if the mass strictly before it is < top_p (always keeps the top token)
        keep = (cum - probs) < top_p
        thresh = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
        z = jnp.where(z < thresh, -jnp.inf, z)
    return z


def _positions(mask):
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def empty_outputs(b: int, n: int, cfg: SamplingConfig) -> dict:
    """The decode loop's per-token output buffers ``[b, n]``: padding tokens, nothing valid,
    log-prob and entropy 0, the configured temperature."""
    return {
        "tok": jnp.full((b, n), cfg.pad_id, jnp.int32),
        "valid": jnp.zeros((b, n), bool),
        "logp": jnp.zeros((b, n), jnp.float32),
        "ent": jnp.zeros((b, n), jnp.float32),
        "temp": jnp.full((b, n), cfg.temperature, jnp.float32),
    }


def record_token(out: dict, t, tok, valid, lp, ent, temp) -> dict:
    """``out`` (see :func:`empty_outputs`, extra keys kept) with decode step ``t`` written;
    log-prob and entropy are 0 at rows that are no longer ``valid``."""
    return {
        **out,
        "tok": out["tok"].at[:, t].set(tok),
        "valid": out["valid"].at[:, t].set(valid),
        "logp": out["logp"].at[:, t].set(jnp.where(valid, lp, 0.0)),
        "ent": out["ent"].at[:, t].set(jnp.where(valid, ent, 0.0)),
        "temp": out["temp"].at[:, t].set(temp),
    }


def rollout_from_outputs(prompt_tokens, prompt_mask, out: dict, finished) -> Rollout:
    """The :class:`Rollout` of a finished decode loop's output buffers."""
    return Rollout(
        tokens=jnp.concatenate([prompt_tokens, out["tok"]], axis=1),
        mask=jnp.concatenate([prompt_mask, out["valid"]], axis=1),
        response=out["tok"],
        response_mask=out["valid"],
        logp=out["logp"],
        entropy=out["ent"],
        finished=finished,
        temperature=out["temp"],
    )


def generate(
    model,
    prompt_tokens,
    prompt_mask,
    keys,
    cfg: SamplingConfig,
    *,
    temperature_fn: Callable | None = None,
    logit_processors: Sequence[Callable] = (),
    temperature_state=None,
) -> Rollout:
    """Sample up to ``cfg.max_new_tokens`` tokens per prompt (traceable; see :func:`make_sampler`).

    Args:
      model: an entropylab ``Transformer`` (``init_cache`` / ``decode`` API).
      prompt_tokens: int ``[B, P]`` left-padded prompts. prompt_mask: ``[B, P]`` real tokens.
      keys: ``[B]`` PRNG keys (:func:`sample_keys`).
    """
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    prompt_mask = jnp.asarray(prompt_mask, bool)
    b, p = prompt_tokens.shape
    n = cfg.max_new_tokens
    if prompt_mask.shape != (b, p) or keys.shape != (b,):
        raise ValueError(
            f"prompt_mask {prompt_mask.shape} and keys {keys.shape} must match prompts {(b, p)}"
        )
    cache = model.init_cache(b, p + n)
    pos = _positions(prompt_mask)
    logits, cache = model.decode(prompt_tokens, cache, positions=pos, attention_mask=prompt_mask)
    next_pos = pos[:, -1] + 1

    def pick(z, t):
        for proc in logit_processors:
            z = proc(z, t)
        temp = jnp.full((b,), cfg.temperature, jnp.float32)
        if temperature_fn is not None:
            h_base = token_entropy(z, temperature=cfg.temperature)
            if temperature_state is None:
                temp = jnp.asarray(temperature_fn(h_base))
            else:
                temp = jnp.asarray(temperature_fn(h_base, temperature_state))
            temp = jnp.broadcast_to(temp, (b,)).astype(jnp.float32)
        zt = z / temp[:, None]
        if cfg.greedy:
            tok = jnp.argmax(zt, axis=-1).astype(jnp.int32)
        else:
            step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
            zf = filter_logits(zt, top_k=cfg.top_k, top_p=cfg.top_p)
            tok = jax.vmap(jax.random.categorical)(step_keys, zf).astype(jnp.int32)
        lp, ent = logprobs_and_entropy(zt, tok)
        return tok, lp, ent, temp

    def cond(carry):
        t, _, _, done, _ = carry
        return (t < n) & ~jnp.all(done)

    def body(carry):
        t, last, cache, done, out = carry
        tok, lp, ent, temp = pick(last, t)
        valid = ~done
        tok = jnp.where(valid, tok, cfg.pad_id)
        out = record_token(out, t, tok, valid, lp, ent, temp)
        done = done | (tok == cfg.eos_id)
        logits, cache = model.decode(
            tok[:, None], cache, positions=(next_pos + t)[:, None], attention_mask=valid[:, None]
        )
        return t + 1, logits[:, -1], cache, done, out

    carry = (jnp.int32(0), logits[:, -1], cache, jnp.zeros((b,), bool), empty_outputs(b, n, cfg))
    t, _, _, done, out = jax.lax.while_loop(cond, body, carry)
    return rollout_from_outputs(prompt_tokens, prompt_mask, out, done)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _sample_jit(
    graphdef, cfg, temperature_fn, logit_processors, state, prompts, mask, keys, t_state=None
):
    model = nnx.merge(graphdef, state)
    return generate(
        model,
        prompts,
        mask,
        keys,
        cfg,
        temperature_fn=temperature_fn,
        logit_processors=logit_processors,
        temperature_state=t_state,
    )


def make_sampler(
    graphdef, cfg: SamplingConfig, *, temperature_fn=None, logit_processors=()
) -> Callable:
    """Jitted ``sampler(state, prompt_tokens, prompt_mask, keys[, temperature_state]) -> Rollout``.

    The compiled function is cached on ``(graphdef, cfg, temperature_fn, logit_processors)``
    (all static), so several trainers over the same model and settings compile it once.
    """
    procs = tuple(logit_processors)
    return functools.partial(_sample_jit, graphdef, cfg, temperature_fn, procs)


def sequence_logprobs(model, rollout_tokens, rollout_mask, prompt_len: int, *, temperature=1.0):
    """Teacher-forced log-probs and entropies of the response tokens under ``model``.

    The trainer-side recomputation of what the sampler recorded: the full forward over
    ``[B, P + N]`` tokens (positions counting valid tokens) and softmax(z / T) at each position
    that predicts a response token. Returns ``(logp [B, N], entropy [B, N])`` float32.
    """
    pos = _positions(rollout_mask)
    logits, _ = model(rollout_tokens, positions=pos, attention_mask=rollout_mask)
    z = logits[:, prompt_len - 1 : -1]
    labels = rollout_tokens[:, prompt_len:]
    return logprobs_and_entropy(z, labels, temperature=temperature)
