"""Multi-process: 2 processes x 2 CPU devices on localhost equal 1 process.

The two worker processes (tests/dist_lm_worker.py) start ``jax.distributed`` through
``entropylab.distributed``, train 3 LM steps on a mesh spanning both processes (each process
feeds its own rows of the global batch) and write an Orbax checkpoint together; then, in the
same processes, they run 2 sharded RL update steps (``entropylab.rl.step.make_update`` on a
``data = 4`` mesh over both processes, each feeding its own rows). Here, in one process, the LM
run on 4 devices must give the same metrics, the 2-process checkpoint must restore (onto this
process's 4-device mesh) to the same parameters, and the RL steps on one device (no mesh) must
give the same loss and metrics, statistics, component state and parameters.
"""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from dist_util import RL_STEPS, free_port, lm_setup, rl_run

from entropylab import distributed
from entropylab.train import Checkpointer, abstract_like, train

HERE = Path(__file__).resolve().parent


def test_two_processes_equal_one_and_checkpoint_restores_in_one(tmp_path):
    out = tmp_path / "two"
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{HERE}:{HERE.parent}")
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "dist_lm_worker.py"), str(i), "2", str(port), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    # process 0 got no signal, the other one did: both agree to stop, with the same exit code
    assert json.loads((out / "agreed.json").read_text()) == [True, 15, 128 + 15]

    # the references run after the workers: computed while they run, the extra load made their
    # Gloo connection time out once on the loaded 2-core machine
    model, batches, cfg = lm_setup(mesh_devices=4)
    ref = train(model, batches, cfg, workdir=tmp_path / "one")
    two = json.loads((out / "history.json").read_text())
    assert [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(ref.history, two, strict=True):
        for key in ("loss", "entropy", "grad_norm", "lr"):
            np.testing.assert_allclose(b[key], a[key], rtol=2e-6, err_msg=key)
    # the checkpoint both processes wrote restores in this single process, on another mesh
    with Checkpointer(out / "checkpoints") as ck:
        assert ck.all_steps() == [3]
        state, meta = ck.restore(abstract_like(ref.state))
    assert meta["step"] == 3
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(ref.state), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=1e-7)

    # the sharded RL update (2 processes x 2 devices) == 1 device, step by step
    two_rl = pickle.loads((out / "rl.pkl").read_bytes())
    one_rl = rl_run(mesh=None)
    assert len(two_rl) == len(one_rl) == RL_STEPS
    for i, (got, want) in enumerate(zip(two_rl, one_rl, strict=True)):
        (m2, st2, s2), (m1, st1, s1) = got, want
        assert set(m2) == set(m1) and "loss/total" in m1 and "train/grad_norm" in m1
        for k in m1:
            np.testing.assert_allclose(m2[k], m1[k], rtol=2e-4, atol=2e-5, err_msg=f"{i} {k}")
        _close(st2, st1, 2e-4, 2e-5, f"step {i} stats")
        _close(s2["obj_state"], s1["obj_state"], 1e-5, 1e-6, f"step {i} component state")
        # Adam turns rounding of a near-zero gradient entry into up to ~1e-3 of lr = 1e-2
        _close(s2["params"], s1["params"], 2e-4, 1e-4, f"step {i} params (grads)")
        _close(s2["opt_state"], s1["opt_state"], 2e-4, 1e-4, f"step {i} optimizer state")
        assert int(s2["step"]) == int(s1["step"]) == i + 1
    # the component state moved every step (a broken state update would not be seen otherwise)
    kls = [0.05] + [float(s["obj_state"]["kl"]) for _, _, s in one_rl]
    assert len(set(kls)) == len(kls), kls
    coefs = [float(s["obj_state"]["regularizers"]["adaptive_entropy"].coef) for _, _, s in one_rl]
    assert 0 < coefs[0] < coefs[1], coefs


def _close(got, want, rtol, atol, what):
    gl, gd = jax.tree.flatten(got)
    wl, wd = jax.tree.flatten(want)
    assert gd == wd, what
    for g, w in zip(gl, wl, strict=True):
        np.testing.assert_allclose(
            np.asarray(g, np.float64), np.asarray(w, np.float64), rtol=rtol, atol=atol, err_msg=what
        )


def test_distributed_config_from_env_and_flags():
    env = {
        "ENTROPYLAB_COORDINATOR": "10.0.0.1:1234",
        "ENTROPYLAB_NUM_PROCESSES": "4",
        "ENTROPYLAB_PROCESS_ID": "2",
    }
    cfg = distributed.DistributedConfig.from_env(env)
    assert (cfg.coordinator, cfg.num_processes, cfg.process_id) == ("10.0.0.1:1234", 4, 2)
    assert distributed.DistributedConfig.from_env(env, process_id=3).process_id == 3
    assert not distributed.DistributedConfig.from_env({}).enabled
    assert distributed.initialize(distributed.DistributedConfig()).enabled is False
    for kw, msg in (
        ({"coordinator": "h:1"}, "given together"),
        ({"coordinator": "nohost", "num_processes": 2, "process_id": 0}, "host:port"),
        ({"coordinator": "h:1", "num_processes": 2, "process_id": 2}, "process_id"),
        ({"coordinator": "h:1", "num_processes": 0, "process_id": 0}, "num_processes"),
        ({"auto": True, "num_processes": 2}, "auto"),
    ):
        with pytest.raises(ValueError, match=msg):
            distributed.DistributedConfig(**kw)
    with pytest.raises(ValueError, match="num_processes must be an integer"):
        distributed.DistributedConfig.from_env({"ENTROPYLAB_NUM_PROCESSES": "two"})
