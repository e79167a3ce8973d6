"""Tests for entropylab.parallel on 8 simulated CPU devices (set in tests/conftest.py)."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from entropylab import parallel
from entropylab.models import Transformer, TransformerConfig
from entropylab.train.loop import init_state, make_train_step
from entropylab.train.optim import OptimConfig, lr_schedule, make_optimizer


def test_eight_devices_available():
    assert len(jax.devices()) == 8


def test_mesh_config_and_resolve():
    mesh = parallel.make_mesh(parallel.MeshConfig(data=2, fsdp=-1))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert parallel.make_mesh().devices.size == 1
    with pytest.raises(ValueError, match="MeshConfig.fsdp"):
        parallel.MeshConfig(fsdp=0)
    with pytest.raises(ValueError, match="at most one axis"):
        parallel.MeshConfig(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="needs 16 devices"):
        parallel.make_mesh(parallel.MeshConfig(data=16))
    with pytest.raises(ValueError, match="not divisible"):
        parallel.make_mesh(parallel.MeshConfig(data=3, fsdp=-1))


def test_param_spec_rule():
    mesh = parallel.make_mesh(parallel.MeshConfig(data=1, fsdp=4, tensor=2))
    assert parallel.param_spec((256, 32), mesh) == P("fsdp", "tensor")
    assert parallel.param_spec((32, 64, 16), mesh) == P(None, "fsdp", "tensor")
    assert parallel.param_spec((6, 5), mesh) == P(None, None)  # nothing divides: replicated
    assert parallel.param_spec((64,), mesh) == P(None)
    assert parallel.param_spec((), mesh) == P()


def test_shard_batch_checks_divisibility():
    mesh = parallel.make_mesh(parallel.MeshConfig(data=2, fsdp=4))
    out = parallel.shard_batch({"x": np.zeros((8, 3))}, mesh)
    assert out["x"].sharding.spec == P(("data", "fsdp"))
    with pytest.raises(ValueError, match="not divisible by data\\*fsdp = 8"):
        parallel.shard_batch({"x": np.zeros((6, 3))}, mesh)


def _setup():
    cfg = dataclasses.replace(TransformerConfig.smoke(vocab_size=64), n_layers=1)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    ocfg = OptimConfig(learning_rate=1e-3, warmup_steps=1, total_steps=10)
    opt = make_optimizer(ocfg)
    graphdef, rest, state = init_state(model, opt, seed=0)
    step = make_train_step(graphdef, rest, opt, lr_schedule(ocfg), attn_entropy=True)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, (2, 16, 17)).astype(np.int32)
    batches = [
        {
            "inputs": t[:, :-1],
            "targets": t[:, 1:],
            "loss_mask": (rng.random((16, 16)) > 0.2).astype(np.float32),
        }
        for t in tokens
    ]
    return state, step, batches


def _run(mesh_cfg):
    state, step, batches = _setup()
    mesh = parallel.make_mesh(mesh_cfg)
    state = parallel.shard_state(state, mesh)
    first_leaf = jax.tree.leaves(state["params"])[0]
    jstep = parallel.jit_train_step(step, mesh, state)
    history = []
    for b in batches:
        state, m = jstep(state, parallel.shard_batch(b, mesh))
        history.append(jax.device_get(m))
    assert first_leaf.is_deleted()  # the state was donated (updated in place)
    return state, history


@pytest.fixture(scope="module")
def single_device():
    return _run(parallel.MeshConfig())


def test_data_fsdp_sharded_step_equals_single_device(single_device):
    """data=2 x fsdp=4: same loss, metrics and params as one device, after two steps."""
    ref_state, ref_hist = single_device
    state, hist = _run(parallel.MeshConfig(data=2, fsdp=4))
    # the state really is spread over 8 devices, FSDP-style
    emb = state["params"]["embed"]["embedding"][...]
    assert len(emb.sharding.device_set) == 8
    assert "fsdp" in jax.tree.leaves(tuple(emb.sharding.spec))
    for h, r in zip(hist, ref_hist):
        for k in ("loss", "entropy", "grad_norm", "lr", "attn_entropy"):
            np.testing.assert_allclose(h[k], r[k], rtol=2e-5, atol=1e-6, err_msg=k)
    for x, y in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(ref_state["params"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=2e-6)
    assert int(state["step"]) == 2
