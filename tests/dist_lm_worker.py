"""One process of the localhost multi-process test (run by tests/distributed_test.py).

Usage: python tests/dist_lm_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR
Each process has 2 CPU devices; the meshes span all processes (data = -1). In one start-up (the
expensive part): the LM run (3 steps + a joint checkpoint), then the sharded RL update step
(``dist_util.rl_run``: each process feeds its own rows); process 0 writes ``history.json`` and
``rl.pkl`` (per step: metrics, statistics, state as NumPy); then the last process alone asks
for a preemption stop and process 0 writes what ``PreemptionGuard.agreed`` told it
(``agreed.json``).
"""

import json
import pickle
import sys

import jax

jax.config.update("jax_num_cpu_devices", 2)

from entropylab import distributed  # noqa: E402

pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
distributed.initialize(
    distributed.DistributedConfig(
        coordinator=f"localhost:{port}", num_processes=nproc, process_id=pid
    )
)

from dist_util import lm_setup, rl_run  # noqa: E402

from entropylab import parallel  # noqa: E402
from entropylab.train import train  # noqa: E402

assert jax.process_count() == nproc and len(jax.devices()) == 2 * nproc
model, batches, cfg = lm_setup(mesh_devices=-1)
result = train(model, batches, cfg, workdir=out)
if distributed.is_main_process():
    with open(f"{out}/history.json", "w") as f:
        json.dump(result.history, f)

rl = rl_run(parallel.make_mesh(parallel.MeshConfig(data=-1)))
if distributed.is_main_process():
    with open(f"{out}/rl.pkl", "wb") as f:
        pickle.dump(rl, f)
# a signal that reached one process only stops every process at the same boundary
from entropylab.runs import PreemptionGuard  # noqa: E402

guard = PreemptionGuard(signals=())
if pid == nproc - 1:
    guard.request()
agreed = [guard.agreed(), guard.signum, guard.exit_code]
if distributed.is_main_process():
    with open(f"{out}/agreed.json", "w") as f:
        json.dump(agreed, f)
print(f"process {pid}: done", flush=True)
