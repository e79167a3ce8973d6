"""Entropy-branching (tree) rollouts: a prefix-sharing sampler with fixed shapes inside jit.

Each prompt owns a table of ``S = n_init + budget`` slots (rows ``i·S + j`` of one batch). Slots
``j < n_init`` start as independent chains (exactly the plain sampler's chains: same prefill,
same per-slot keys, same per-token ``fold_in(key, t)``); the other ``budget`` slots are free.
Before drawing token ``t`` every live chain gets a fork score; an eligible chain forks into the
next free slot of its prompt: the child copies the parent's KV cache, logits, response so far and
rule statistics (all gathered with one index array — no Python recursion, no shape change) and
then draws token ``t`` with its own slot key, so parent and child share the prefix ``< t`` and
diverge from ``t`` on. Eligible chains are served in slot order while free slots remain (at most
one child per chain per step, ARPO's ``beam_size = 2``), so the budget can never be exceeded.

Fork rule (entropies are the recorded full-vocabulary entropies of the sampling distribution,
nats): ``H_init`` = mean entropy of the chain's first ``init_tokens`` tokens, ``H_now`` = mean
entropy over the last ``window`` tokens including ``t`` (``window = 1``: the token's own), and
``ΔH = H_now − H_init``. A chain is eligible at ``t ≥ init_tokens`` if it is live, has not forked
(as parent or child) in the last ``min_gap − 1`` steps, and

* ``mode="delta"``: ``ΔH > threshold`` (deterministic; ``threshold = +inf`` never forks, and the
  sampler is then the plain sampler bit for bit);
* ``mode="arpo"``: ``clip(u − w·ΔH, 0, 1) ≤ p_branch`` with ``u ~ U(0, 1)`` drawn per chain and
  token (from ``fold_in(fold_in(slot key, t), 1)``) — the released ARPO rule
  (RUC-NLPIR/ARPO ``ARPO/verl_arpo_entropy/verl/workers/rollout/vllm_rollout/
  vllm_rollout_with_tools.py``, "Entropy-based Adaptive Beaming": ``prob = random() −
  entropy_weight·(H_now − H_init)``, clipped to [0, 1], skip if ``prob > branch_probability``;
  scripts use ``entropy_weight = 0.2``, ``branch_probability = 0.5``, 8 initial of 16 rollouts),
  arXiv:2507.19849. ARPO scores the first tokens after each *tool result*; with no tools here
  every token is a candidate and ``H_now`` is the window entropy.

``fill_at``: at token ``fill_at`` every slot still free is forked from the live chains of its
prompt (cycling over them in slot order, several children per chain if needed, ignoring the rule
and ``min_gap``), so a trainer that needs exactly ``S`` responses per prompt gets them unless
every chain of a prompt ended before ``fill_at`` (those slots stay empty; ``fill_at = 0`` makes
the remaining slots plain independent samples). Default ``None``: unused budget stays unused.

Agentic AEPO (arXiv:2510.14545) adds entropy pre-monitoring of the global/branch budget split
and a consecutive-branch penalty; its exact penalty form was not retrieved (no official code),
so ``min_gap`` (a hard refractory period) stands in for it. ETTRL's ETMR (arXiv:2508.11356) forks
at high-entropy tokens; its fork count and rule were not retrieved (no public code), so use
``mode="delta"`` with a window as its stand-in and say so when you cite it.

Savings: a child does not regenerate the prefix it shares (``own_mask`` marks the tokens each
row generated itself); with fixed shapes the compiled loop still runs all ``S`` slot rows at
every step, so the wall-clock gain of this layout over the plain sampler is nil — the token
saving is what a dynamic-batching engine would realise (see ``bench/tree_rollout.py``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from entropylab.ops.entropy import logprobs_and_entropy, token_entropy
from entropylab.rl import sampling as S

__all__ = ["TreeConfig", "TreeRollout", "as_group_sampler", "generate_tree", "make_tree_sampler"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TreeConfig:
    """Slot table and fork rule (static under jit). See the module docstring."""

    n_init: int = 4
    budget: int = 4
    mode: str = "delta"
    threshold: float = 0.5
    entropy_weight: float = 0.2
    p_branch: float = 0.5
    init_tokens: int = 4
    window: int = 1
    min_gap: int = 1
    fill_at: int | None = None

    def __post_init__(self):
        if self.fill_at is not None and self.fill_at < 0:
            raise ValueError(f"fill_at must be >= 0 or None, got {self.fill_at}")
        if self.n_init < 1 or self.budget < 0:
            raise ValueError(f"need n_init >= 1 and budget >= 0, got {self.n_init}, {self.budget}")
        if self.mode not in ("delta", "arpo"):
            raise ValueError(f"mode must be 'delta' or 'arpo', got {self.mode!r}")
        if self.threshold != self.threshold:
            raise ValueError("threshold must not be NaN")
        if self.init_tokens < 1 or self.window < 1 or self.min_gap < 1:
            raise ValueError(
                f"init_tokens, window, min_gap must be >= 1, got "
                f"{self.init_tokens}, {self.window}, {self.min_gap}"
            )
        if not 0 <= self.p_branch <= 1:
            raise ValueError(f"p_branch must be in [0, 1], got {self.p_branch}")

    @property
    def slots(self) -> int:
        return self.n_init + self.budget


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TreeRollout:
    """Tree sampler output. Rows ``i·S + j`` (prompt i, slot j); ``N`` = max_new_tokens.

    ``rollout`` holds every slot as a full response (a child's response includes the prefix it
    shares with its parent); unused slots have an all-False ``response_mask``."""

    rollout: S.Rollout  # [B·S, ...]
    allocated: jax.Array  # [B, S] slot holds a chain
    parent: jax.Array  # [B, S] int32 parent slot (-1: initial chain or unused)
    fork_pos: jax.Array  # [B, S] int32 first token the child drew itself (-1: root / unused)
    own_mask: jax.Array  # [B·S, N] response tokens the row generated itself (not copied)
    fork_score: jax.Array  # [B·S, N] ΔH at each token (-inf before init_tokens / not live)
    fork_u: jax.Array  # [B·S, N] ARPO's uniform draw (mode "arpo"; else 0)

    @property
    def saved_tokens(self):
        """Shared-prefix tokens the children did not regenerate."""
        return jnp.sum(self.rollout.response_mask & ~self.own_mask)


def generate_tree(
    model,
    prompt_tokens,
    prompt_mask,
    keys,
    cfg: S.SamplingConfig,
    tree: TreeConfig,
    *,
    temperature_fn: Callable | None = None,
    logit_processors: Sequence[Callable] = (),
) -> TreeRollout:
    """Tree rollouts for ``[B, P]`` prompts with ``keys [B, S]`` (slot keys, e.g.
    :func:`~entropylab.rl.sampling.sample_keys` with ``sample_index = slot``)."""
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    prompt_mask = jnp.asarray(prompt_mask, bool)
    b, p = prompt_tokens.shape
    s = tree.slots
    n = cfg.max_new_tokens
    if prompt_mask.shape != (b, p) or keys.shape != (b, s):
        raise ValueError(
            f"prompt_mask {prompt_mask.shape} must be {(b, p)} and keys {keys.shape} must be "
            f"{(b, s)} (prompts x slots, slots = n_init + budget)"
        )
    r = b * s
    keys = keys.reshape(r)
    pt = jnp.repeat(prompt_tokens, s, axis=0)
    pm = jnp.repeat(prompt_mask, s, axis=0)
    cache = model.init_cache(r, p + n)
    pos = S._positions(pm)
    logits, cache = model.decode(pt, cache, positions=pos, attention_mask=pm)
    next_pos = pos[:, -1] + 1
    w, k0 = tree.window, tree.init_tokens
    slot = jnp.tile(jnp.arange(s, dtype=jnp.int32), b)
    base = jnp.arange(b, dtype=jnp.int32)[:, None] * s

    def scale(z, t):
        for proc in logit_processors:
            z = proc(z, t)
        temp = jnp.full((r,), cfg.temperature, jnp.float32)
        if temperature_fn is not None:
            temp = jnp.asarray(temperature_fn(token_entropy(z, temperature=cfg.temperature)))
            temp = jnp.broadcast_to(temp, (r,)).astype(jnp.float32)
        return z / temp[:, None], temp

    def body(carry):
        t, last, cache, done, st, out = carry
        zt, temp = scale(last, t)
        h = token_entropy(zt)
        live = st["alloc"] & ~done
        hist = jnp.roll(st["hist"], 1, axis=1).at[:, 0].set(h)
        h_now = jnp.sum(jnp.where(jnp.arange(w) < t + 1, hist, 0.0), 1) / jnp.minimum(t + 1, w)
        hsum = st["hsum"] + jnp.where(t < k0, h, 0.0)
        score = jnp.where(live & (t >= k0), h_now - st["hsum"] / k0, -jnp.inf)
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
        if tree.mode == "delta":
            u = jnp.zeros((r,), jnp.float32)
            fire = score > tree.threshold
        else:
            u = jax.vmap(lambda kk: jax.random.uniform(jax.random.fold_in(kk, 1)))(step_keys)
            fire = jnp.clip(u - tree.entropy_weight * score, 0.0, 1.0) <= tree.p_branch
        elig = live & (t >= k0) & (t - st["last_fork"] >= tree.min_gap) & fire
        force = jnp.bool_(False) if tree.fill_at is None else t == tree.fill_at
        elig = jnp.where(force, live, elig)
        # ---- assign eligible chains (slot order) to free slots (slot order), per prompt; at
        # t = fill_at every free slot is filled, cycling over the live chains
        e2 = elig.reshape(b, s)
        f2 = ~st["alloc"].reshape(b, s)
        rank_e = jnp.cumsum(e2, axis=1) - 1
        rank_f = jnp.cumsum(f2, axis=1) - 1
        n_e, n_f = e2.sum(1), f2.sum(1)
        n_new = jnp.where(force, jnp.where(n_e > 0, n_f, 0), jnp.minimum(n_e, n_f))[:, None]
        newly = f2 & (rank_f < n_new)  # [B, S] free slots that receive a child
        cyc = rank_f % jnp.maximum(n_e, 1)[:, None]
        match = e2[:, None, :] & (rank_e[:, None, :] == cyc[:, :, None])  # [B, f, src]
        match = match & newly[:, :, None]
        src_local = jnp.argmax(match, axis=-1).astype(jnp.int32)
        is_src = jnp.any(match, axis=1).reshape(r)
        newly_r = newly.reshape(r)
        src = (base + jnp.where(newly, src_local, jnp.arange(s)[None, :])).reshape(r)

        def fork(args):
            return jax.tree.map(lambda x: x[src], args)

        moved = (zt, temp, cache, hist, hsum, out)
        zt, temp, cache, hist, hsum, out = jax.lax.cond(jnp.any(newly), fork, lambda a: a, moved)
        st = {
            "alloc": st["alloc"] | newly_r,
            "parent": jnp.where(newly_r, src_local.reshape(r), st["parent"]),
            "fork_pos": jnp.where(newly_r, t, st["fork_pos"]),
            "last_fork": jnp.where(newly_r | is_src, t, st["last_fork"]),
            "hist": hist,
            "hsum": hsum,
        }
        valid = st["alloc"] & ~done[src]
        # ---- draw token t for every row (children with their own slot key)
        if cfg.greedy:
            tok = jnp.argmax(zt, axis=-1).astype(jnp.int32)
        else:
            zf = S.filter_logits(zt, top_k=cfg.top_k, top_p=cfg.top_p)
            tok = jax.vmap(jax.random.categorical)(step_keys, zf).astype(jnp.int32)
        lp, ent = logprobs_and_entropy(zt, tok)
        tok = jnp.where(valid, tok, cfg.pad_id)
        out = {
            **S.record_token(out, t, tok, valid, lp, ent, temp),
            "score": out["score"].at[:, t].set(jnp.where(newly_r, score[src], score)),
            "u": out["u"].at[:, t].set(jnp.where(newly_r, u[src], u)),
        }
        done = ~valid | (tok == cfg.eos_id)
        logits, cache = model.decode(
            tok[:, None], cache, positions=(next_pos + t)[:, None], attention_mask=valid[:, None]
        )
        return t + 1, logits[:, -1], cache, done, st, out

    def cond(carry):
        t, _, _, done, st, _ = carry
        return (t < n) & jnp.any(st["alloc"] & ~done)

    alloc0 = slot < tree.n_init
    st0 = {
        "alloc": alloc0,
        "parent": jnp.full((r,), -1, jnp.int32),
        "fork_pos": jnp.full((r,), -1, jnp.int32),
        "last_fork": jnp.full((r,), -(2**30), jnp.int32),
        "hist": jnp.zeros((r, w), jnp.float32),
        "hsum": jnp.zeros((r,), jnp.float32),
    }
    out0 = {
        **S.empty_outputs(r, n, cfg),
        "score": jnp.full((r, n), -jnp.inf, jnp.float32),
        "u": jnp.zeros((r, n), jnp.float32),
    }
    carry = (jnp.int32(0), logits[:, -1], cache, ~alloc0, st0, out0)
    _, _, _, _, st, out = jax.lax.while_loop(cond, body, carry)
    alloc = st["alloc"]
    finished = jnp.any(out["valid"] & (out["tok"] == cfg.eos_id), axis=1)
    rollout = S.rollout_from_outputs(pt, pm & alloc[:, None], out, finished)
    own = out["valid"] & (jnp.arange(n)[None, :] >= jnp.maximum(st["fork_pos"], 0)[:, None])
    return TreeRollout(
        rollout=rollout,
        allocated=alloc.reshape(b, s),
        parent=st["parent"].reshape(b, s),
        fork_pos=st["fork_pos"].reshape(b, s),
        own_mask=own,
        fork_score=out["score"],
        fork_u=out["u"],
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _tree_jit(graphdef, cfg, tree, temperature_fn, logit_processors, state, prompts, mask, keys):
    model = nnx.merge(graphdef, state)
    return generate_tree(
        model,
        prompts,
        mask,
        keys,
        cfg,
        tree,
        temperature_fn=temperature_fn,
        logit_processors=logit_processors,
    )


def make_tree_sampler(
    graphdef, cfg: S.SamplingConfig, tree: TreeConfig, *, temperature_fn=None, logit_processors=()
) -> Callable:
    """Jitted ``sampler(state, prompt_tokens [B, P], prompt_mask, keys [B, S]) -> TreeRollout``
    (compiled once per ``(graphdef, cfg, tree, temperature_fn, logit_processors)``)."""
    return functools.partial(
        _tree_jit, graphdef, cfg, tree, temperature_fn, tuple(logit_processors)
    )


def as_group_sampler(
    graphdef, cfg: S.SamplingConfig, tree: TreeConfig, *, temperature_fn=None, logit_processors=()
) -> Callable:
    """The tree sampler behind the plain sampler's calling convention, for the RL trainer.

    ``sampler(state, prompt_tokens [B·S, P], prompt_mask, keys [B·S]) -> Rollout`` where each
    prompt appears ``S = tree.slots`` times in a row (the trainer's ``group_size = S`` layout)
    and ``keys`` are the per-sample keys (``sample_index`` = slot). Row ``i·S + j`` is slot j of
    prompt i. Slots the budget left unused come back with an all-False ``response_mask`` (and
    ``finished`` False): a trainer must drop them from rewards and group statistics (test
    ``response_mask.any(1)``). The tree structure is only in :func:`make_tree_sampler`'s output.
    """
    fn = make_tree_sampler(
        graphdef, cfg, tree, temperature_fn=temperature_fn, logit_processors=logit_processors
    )
    s = tree.slots

    def sampler(state, prompt_tokens, prompt_mask, keys):
        rows = prompt_tokens.shape[0]
        if rows % s or keys.shape != (rows,):
            raise ValueError(
                f"prompt_tokens rows {rows} must be a multiple of tree slots {s} and keys "
                f"{keys.shape} must be ({rows},)"
            )
        pt = jnp.asarray(prompt_tokens)
        grouped = pt.reshape(rows // s, s, -1)
        if not isinstance(pt, jax.core.Tracer) and not bool(jnp.all(grouped == grouped[:, :1])):
            raise ValueError("each prompt must fill S = tree.slots consecutive rows")
        out = fn(state, pt[::s], jnp.asarray(prompt_mask)[::s], keys.reshape(rows // s, s))
        return out.rollout

    return sampler
