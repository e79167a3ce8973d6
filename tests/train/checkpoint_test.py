"""Tests for entropylab.train.checkpoint: round trip, keep-K, bad input, atomic steps."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropylab.train.checkpoint import Checkpointer, abstract_like


def _state(seed=0):
    k = jax.random.key(seed)
    return {
        "params": {"w": jax.random.normal(k, (4, 3)), "b": jnp.arange(3.0)},
        "opt_state": (jnp.int32(seed), {"mu": jnp.ones((4, 3)) * seed}),
        "step": jnp.int32(seed),
        "rng": jax.random.key_data(k),
    }


def _assert_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_roundtrip_keep_and_meta(tmp_path):
    with Checkpointer(tmp_path / "ck", save_every=2, keep=2) as ck:
        saved = {}
        for step in range(1, 8):
            st = _state(step)
            if ck.maybe_save(step, st, data_state={"position": step}, meta={"note": "x"}):
                saved[step] = st
        assert sorted(saved) == [2, 4, 6] and ck.all_steps() == [4, 6]
        restored, meta = ck.restore(abstract_like(_state()))
        _assert_equal(restored, saved[6])
        assert meta == {"step": 6, "data": {"position": 6}, "meta": {"note": "x"}}
        older, meta4 = ck.restore(abstract_like(_state()), step=4)
        _assert_equal(older, saved[4])
        assert meta4["data"] == {"position": 4}
    # a fresh manager on the same folder sees the same steps
    assert Checkpointer(tmp_path / "ck").latest_step() == 6


def test_missing_raises_file_not_found(tmp_path):
    ck = Checkpointer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ck.restore(abstract_like(_state()))
    ck.save(1, _state(1))
    with pytest.raises(FileNotFoundError, match="step 5"):
        ck.restore(abstract_like(_state()), step=5)


def test_corrupt_and_mismatched_raise_value_error(tmp_path):
    ck = Checkpointer(tmp_path / "ck", keep=None)
    ck.save(1, _state(1))
    ck.save(2, _state(2))
    bad = dict(_state(), params={"w": jnp.zeros((5, 3)), "b": jnp.arange(3.0)})
    with pytest.raises(ValueError, match="does not match|corrupt"):
        ck.restore(abstract_like(bad), step=1)
    for f in (tmp_path / "ck" / "2" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size:
            f.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"ck/2 is corrupt"):
        ck.restore(abstract_like(_state()), step=2)
    shutil.rmtree(tmp_path / "ck" / "1" / "meta")
    with pytest.raises(ValueError, match=r"ck/1"):
        ck.restore(abstract_like(_state()), step=1)


def test_unfinished_step_is_not_listed(tmp_path):
    ck = Checkpointer(tmp_path / "ck")
    ck.save(3, _state(3))
    # what a crash mid-save leaves behind: an uncommitted temporary folder
    (tmp_path / "ck" / "4.orbax-checkpoint-tmp-123").mkdir()
    assert Checkpointer(tmp_path / "ck").all_steps() == [3]
    restored, _ = Checkpointer(tmp_path / "ck").restore(abstract_like(_state()))
    _assert_equal(restored, _state(3))


def test_restore_onto_sharded_target(tmp_path):
    mesh = jax.make_mesh((4,), ("x",), devices=jax.devices()[:4])
    sh = jax.sharding.NamedSharding(mesh, jax.P("x"))
    st = _state(1)
    ck = Checkpointer(tmp_path / "ck")
    ck.save(1, st)
    shardings = jax.tree.map(lambda x: sh if x.ndim and x.shape[0] % 4 == 0 else None, st)
    target = abstract_like(
        st,
        jax.tree.map(
            lambda s: s or jax.sharding.NamedSharding(mesh, jax.P()),
            shardings,
            is_leaf=lambda x: x is None,
        ),
    )
    restored, _ = ck.restore(target)
    _assert_equal(restored, st)
    assert restored["params"]["w"].sharding == sh


def test_bad_options(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        Checkpointer(tmp_path, keep=0)
    with pytest.raises(ValueError, match="save_every"):
        Checkpointer(tmp_path, save_every=-1)
