"""Compiled sampler: the decode loop writes the KV cache in place and never copies it.

``tests/models/kv_cache_test.py`` checks one jitted ``decode`` step; this checks the whole
compiled ``make_sampler`` program (prefill + ``while_loop``), where XLA could still insert a
copy or transpose of the loop-carried cache (a [B, T, H, d] layout did exactly that in an early
probe of this sampler). Every instruction of the decode loop's body that
produces a cache-sized tensor (any axis order) must be a parameter / tuple plumbing / bitcast or
an in-place scatter / dynamic-update-slice (fusion).
"""

import re

import jax
import jax.numpy as jnp
from flax import nnx

from entropylab.models import Transformer, TransformerConfig
from entropylab.rl.sampling import SamplingConfig, _sample_jit, sample_keys

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s*=\s*\w+\[([\d,]*)\]\S*\s+([\w\-]+)\(")
_OK = ("parameter", "bitcast", "get-tuple-element", "tuple")


def _computations(hlo: str) -> dict[str, list[str]]:
    comps, name = {}, None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and "{" in line:
            name = (line.split()[1] if line.startswith("ENTRY") else line.split()[0]).lstrip("%")
            comps[name] = []
        elif name is not None:
            comps[name].append(line)
    return comps


def _loop_cache_ops(hlo: str, cache_shape) -> tuple[int, list[str]]:
    """(number of while bodies carrying the cache, offending cache-sized instructions)."""
    comps = _computations(hlo)
    roots = {c: next((ln for ln in lines if "ROOT" in ln), "") for c, lines in comps.items()}
    target = sorted(cache_shape)
    bodies = []
    for lines in comps.values():
        for ln in lines:
            m = re.search(r"\bwhile\(.*body=%?([\w.\-]+)", ln)
            if m:
                bodies.append(m.group(1))
    carrying, bad = 0, []
    for body in bodies:
        hits = []
        for ln in comps[body]:
            m = _INSTR.match(ln)
            if not m or not m.group(2):
                continue
            if sorted(int(x) for x in m.group(2).split(",")) != target:
                continue
            hits.append(ln)
            op = m.group(3)
            if op in _OK:
                continue
            if op in ("scatter", "dynamic-update-slice"):
                continue
            if op == "fusion":
                called = re.search(r"calls=%?([\w.\-]+)", ln).group(1)
                if re.search(r"\b(scatter|dynamic-update-slice)\(", roots.get(called, "")):
                    continue
            bad.append(ln.strip()[:160])
        carrying += bool(hits)
    return carrying, bad


def _sampler_hlo(b, p, n):
    cfg = TransformerConfig.smoke(vocab_size=16, max_seq_len=32)  # 2 kv heads of 8
    graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    keys = sample_keys(0, 0, jnp.arange(b), jnp.zeros(b, jnp.int32))
    prompts, mask = jnp.zeros((b, p), jnp.int32), jnp.ones((b, p), bool)
    lowered = _sample_jit.lower(graphdef, SamplingConfig(max_new_tokens=n), None, (), state,
                                prompts, mask, keys)  # fmt: skip
    return lowered.compile().as_text(), (b, cfg.n_kv_heads, p + n, cfg.head_dim)


def test_sampler_decode_loop_has_no_cache_copy():
    hlo, cache_shape = _sampler_hlo(3, 5, 7)  # cache (3, 2, 12, 8): all sizes distinct
    assert len(set(cache_shape)) == 4
    carrying, bad = _loop_cache_ops(hlo, cache_shape)
    assert carrying >= 1  # the decode loop carries the cache (the check looked at it)
    assert bad == []


def test_checker_flags_a_per_step_cache_transpose():
    """Control: a loop over a [B, T, H, d] cache transposed each step is flagged."""
    b, t, h, d = 3, 12, 2, 8

    def loop(cache, q):
        def body(i, c):
            c = jax.lax.dynamic_update_slice(c, jnp.ones((b, 1, h, d)) * i, (0, i, 0, 0))
            kt = jnp.swapaxes(c, 1, 2)  # [B, H, T, d] for the attention einsum
            s = jnp.einsum("bhd,bhtd->bht", q, kt)
            return c + s.sum() * 0.0 + jnp.swapaxes(kt * 1.0001, 1, 2)

        return jax.lax.fori_loop(0, t, body, cache)

    hlo = jax.jit(loop).lower(jnp.zeros((b, t, h, d)), jnp.ones((b, h, d))).compile().as_text()
    carrying, bad = _loop_cache_ops(hlo, (b, h, t, d))
    assert carrying >= 1 and bad != []
