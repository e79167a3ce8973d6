"""KV cache: decode (prefill + single steps) equals the full forward; cache layout in HLO."""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropylab.models import Transformer, TransformerConfig, forward
from entropylab.models.transformer import Block

ROPES = {
    "default": ("default", {}),
    "linear": ("linear", {"factor": 2.0}),
    # T = 24 > L = 16 exercises the NTK rescale (with_rope needs L explicitly)
    "dynamic": ("dynamic", {"factor": 2.0, "original_max_position_embeddings": 16}),
    "yarn": ("yarn", {"factor": 4.0, "original_max_position_embeddings": 8}),
    "llama3": (
        "llama3",
        {
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8,
        },
    ),
    "entropy_abf": ("entropy_abf", {"original_max_position_embeddings": 4}),
}


def _randint(seed, shape, high):
    """Token ids from NumPy's RNG (no per-shape threefry compile)."""
    return jnp.asarray(np.random.RandomState(seed).randint(0, high, shape), jnp.int32)


def _model(rope="default", **kw):
    rope_type, params = ROPES[rope]
    cfg = TransformerConfig.smoke(vocab_size=64, max_seq_len=16, **kw)
    if rope_type == "entropy_abf":
        # 3 layers so layer 2 is scaled (layers 0, 1 are exempt per the paper).
        cfg = dataclasses.replace(cfg, n_layers=3)
    cfg = cfg.with_rope(rope_type, base=100.0, **params)
    return Transformer(cfg, rngs=nnx.Rngs(0))


def _decoder(graphdef):
    @jax.jit
    def dec(state, tokens, cache, positions=None, attention_mask=None):
        return nnx.merge(graphdef, state).decode(
            tokens, cache, positions=positions, attention_mask=attention_mask
        )

    return dec


@pytest.mark.parametrize("rope", list(ROPES))
def test_prefill_and_steps_equal_full_forward(rope):
    model = _model(rope)
    graphdef, state = nnx.split(model)
    b, t, prefill = 2, 24, 10
    tokens = _randint(1, (b, t), 64)
    full, _ = jax.jit(lambda s, x: forward(graphdef, s, x))(state, tokens)
    dec = _decoder(graphdef)
    cache = model.init_cache(b, t)
    out, cache = dec(state, tokens[:, :prefill], cache)
    outs = [out]
    for i in range(prefill, t):
        out, cache = dec(state, tokens[:, i : i + 1], cache)
        outs.append(out)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), np.asarray(full), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(cache.index), [t, t])


def test_forward_and_decode_run_the_same_block_body(monkeypatch):
    """Both paths go through ``Block.__call__`` once per layer, in layer order: a per-layer loop
    written out again in either path (the old layout) makes this fail."""
    model = _model("default")
    calls = []
    body = Block.__call__

    def counted(blk, *args, **kw):
        calls.append((next(i for i, b in enumerate(model.blocks) if b is blk), args[1] is None))
        return body(blk, *args, **kw)

    monkeypatch.setattr(Block, "__call__", counted)
    tokens = _randint(3, (1, 5), 64)
    full, _ = model(tokens)
    n = model.config.n_layers
    assert calls == [(i, True) for i in range(n)]  # full forward: no cache
    calls.clear()
    dec, _ = model.decode(tokens, model.init_cache(1, 8))
    assert calls == [(i, False) for i in range(n)]  # decode: each block gets its cache layer
    np.testing.assert_allclose(np.asarray(dec), np.asarray(full), atol=1e-5)


def test_entropy_abf_scales_only_late_layers_past_window():
    """Inside the window EABF == ABF; past it logits change (layer 2 scaled)."""
    eabf = _model("entropy_abf")
    cfg = dataclasses.replace(
        eabf.config, rope=dataclasses.replace(eabf.config.rope, rope_type="abf", params=())
    )
    abf = Transformer(cfg, rngs=nnx.Rngs(0))  # same seed -> same weights
    tokens = _randint(2, (1, 12), 64)
    le, _ = jax.jit(lambda m, x: m(x))(eabf, tokens)
    la, _ = jax.jit(lambda m, x: m(x))(abf, tokens)
    # t = max(1, ln(i)/ln 4) = 1 for i ≤ 4 (positions 0..3), > 1 after.
    np.testing.assert_allclose(le[:, :4], la[:, :4], atol=1e-6)
    assert np.abs(np.asarray(le[:, 4:] - la[:, 4:])).max() > 1e-4


def test_left_padded_prompts_with_positions_match_unpadded():
    """Left padding + explicit positions + mask: each row equals its own unpadded forward."""
    model = _model("default")
    graphdef, state = nnx.split(model)
    dec = _decoder(graphdef)
    fwd = jax.jit(lambda s, x: forward(graphdef, s, x))
    lens = [6, 3]
    p = max(lens)
    seqs = [_randint(10 + i, (1, n + 4), 64) for i, n in enumerate(lens)]
    prompt = jnp.zeros((2, p), jnp.int32)
    mask = jnp.zeros((2, p), bool)
    for i, n in enumerate(lens):
        prompt = prompt.at[i, p - n :].set(seqs[i][0, :n])
        mask = mask.at[i, p - n :].set(True)
    pos = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
    cache = model.init_cache(2, p + 4)
    out, cache = dec(state, prompt, cache, pos, mask)
    last = [out[:, -1]]
    next_pos = pos[:, -1:] + 1
    for j in range(4):
        step = jnp.stack([seqs[i][0, lens[i] + j] for i in range(2)])[:, None]
        out, cache = dec(state, step, cache, next_pos)
        last.append(out[:, 0])
        next_pos = next_pos + 1
    for i, n in enumerate(lens):
        ref, _ = fwd(state, seqs[i])
        got = np.stack([np.asarray(x[i]) for x in last])
        np.testing.assert_allclose(got, np.asarray(ref[0, n - 1 : n + 4]), atol=1e-4)


def test_right_padded_prefill_then_per_sequence_index():
    """Right-padded prefill, then rewind each cursor to its prompt length (per-sequence index)."""
    model = _model("default")
    graphdef, state = nnx.split(model)
    dec = _decoder(graphdef)
    fwd = jax.jit(lambda s, x: forward(graphdef, s, x))
    lens = [3, 6]
    p = max(lens)
    seqs = [_randint(20 + i, (1, n + 3), 64) for i, n in enumerate(lens)]
    prompt = jnp.zeros((2, p), jnp.int32)
    mask = jnp.arange(p)[None] < jnp.array(lens)[:, None]
    for i, n in enumerate(lens):
        prompt = prompt.at[i, :n].set(seqs[i][0, :n])
    cache = model.init_cache(2, p + 3)
    out, cache = dec(state, prompt, cache, None, mask)
    first = [out[i, n - 1] for i, n in enumerate(lens)]
    cache = dataclasses.replace(cache, index=jnp.array(lens, jnp.int32))
    steps = []
    for j in range(3):
        step = jnp.stack([seqs[i][0, lens[i] + j] for i in range(2)])[:, None]
        out, cache = dec(state, step, cache)
        steps.append(out[:, 0])
    for i, n in enumerate(lens):
        ref, _ = fwd(state, seqs[i])
        got = np.stack([np.asarray(first[i])] + [np.asarray(s[i]) for s in steps])
        np.testing.assert_allclose(got, np.asarray(ref[0, n - 1 : n + 3]), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# HLO: a decode step must not copy or transpose the cache.

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s*=\s*\w+\[([\d,]*)\]\S*\s+([\w\-]+)\(")


def _full_cache_ops(hlo: str, cache_shape) -> list[str]:
    """Instructions of the entry computation that produce a full cache-sized tensor (any axis
    order) other than parameters, bitcasts, tuples and in-place scatter / dynamic-update-slice
    fusions."""
    comps, name = {}, None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and "{" in line:
            name = line.split()[1] if line.startswith("ENTRY") else line.split()[0]
            comps[name.lstrip("%")] = []
        elif name is not None:
            comps[name.lstrip("%")].append(line)
    roots = {c: next((ln for ln in lines if "ROOT" in ln), "") for c, lines in comps.items()}
    entry = next(c for c in comps if c.startswith("main"))
    target = sorted(cache_shape)
    bad = []
    for line in comps[entry]:
        m = _INSTR.match(line)
        if not m or not m.group(2):
            continue
        dims = sorted(int(x) for x in m.group(2).split(","))
        if dims != target:
            continue
        op = m.group(3)
        if op in ("parameter", "bitcast", "get-tuple-element", "tuple"):
            continue
        if op == "fusion":
            called = re.search(r"calls=%?([\w.\-]+)", line).group(1)
            if re.search(r"\b(scatter|dynamic-update-slice)\(", roots.get(called, "")):
                continue
        bad.append(line.strip()[:160])
    return bad


def test_decode_step_hlo_has_no_full_cache_copy():
    model = _model("default")
    graphdef, state = nnx.split(model)
    b, t_max = 3, 48
    cfg = model.config
    cache_shape = (b, cfg.n_kv_heads, t_max, cfg.head_dim)  # (3, 2, 48, 8): all distinct sizes
    assert len(set(cache_shape)) == 4 and math.prod(cache_shape) > 0

    def step(state, tokens, cache):
        return nnx.merge(graphdef, state).decode(tokens, cache)

    cache = model.init_cache(b, t_max)
    tok = jnp.zeros((b, 1), jnp.int32)
    hlo = jax.jit(step, donate_argnums=2).lower(state, tok, cache).compile().as_text()
    assert _full_cache_ops(hlo, cache_shape) == []
    # The cache buffers are donated and aliased to the outputs (updated in place).
    assert "input_output_alias" in hlo

    # Control: the checker flags a per-step transpose of a [B, T, H, d] cache.
    copy_hlo = (
        jax.jit(lambda k: jnp.swapaxes(k, 1, 2) * 2.0)
        .lower(jnp.zeros((b, t_max, 2, 8)))
        .compile()
        .as_text()
    )
    assert _full_cache_ops(copy_hlo, cache_shape) != []
