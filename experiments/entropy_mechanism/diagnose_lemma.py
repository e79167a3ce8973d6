"""Post-hoc diagnosis of the full study's ``c3_lemma`` (not part of the pre-registered study).

The full study's lemma check failed 2 of its 12 checks at init 3's last step. The claim
says a failure is a bug in the forward, entropy or covariance code, so this reproduces that
state and recomputes the check. It has two steps:

1. ``capture`` — run this **inside a worktree at the study's commit** (``git worktree add
   ../full 4bb694a``; ``cd ../full``;
   ``python /path/to/diagnose_lemma.py capture --init 3 --out lemma_capture.json``). It reruns
   job ``none/init<k>/seed0`` of the ``full`` preset into a scratch directory (jobs are
   deterministic: resumed == uninterrupted is tested) and, at the last step, replays
   ``_claim3``'s lemma loop: the same rollout, rows and advantages. It writes each check's
   state logits, advantages, steps and, for ``network_sgd``, the float32 network's logits after
   each step, with the check's result as the study computed it.
2. ``analyse`` — any checkout:
   ``python -m experiments.entropy_mechanism.diagnose_lemma analyse lemma_capture.json --out
   results/full/lemma_diagnosis.json``. Recomputes each check's entropy change and first-order
   prediction in float64 from the same logits, and writes both sets of results.

The capture of 2026-11-30 and its analysis are committed in ``results/full/lemma_diagnosis.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np


def capture(init: int, out: str, scratch: str) -> None:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import experiments.entropy_mechanism.study as St
    from entropylab.rl import tasks as T
    from entropylab.study.runner import Runner
    from experiments.entropy_mechanism import probes as PR

    spec = St.build_spec("full")
    spec = dataclasses.replace(
        spec, arms=tuple(a for a in spec.arms if a.name == "none"), inits=(init,), claims=()
    )
    orig = St._claim3

    def wrapped(trainer, P, step, probe, seed):
        logged = orig(trainer, P, step, probe, seed)
        if step != trainer.cfg.steps:
            return logged
        cfg = trainer.cfg
        problems = trainer.task.sample(
            T.problem_rng(cfg.seed, step, stream=7), cfg.prompts_per_step, cfg.difficulties
        )
        params = trainer.state["params"]
        r, _ = trainer.rollout(params, problems, step, cfg.group_size, sample_offset=1000)
        rmask = np.asarray(r.response_mask)
        gd, _, rest = nnx.split(trainer.model, nnx.Param, ...)
        rng = np.random.default_rng(seed)
        rows = np.flatnonzero(rmask.sum(1) > 0)  # the study's row choice at its commit
        checks = []
        for i in range(P.lemma_states):
            row = int(rows[i % len(rows)])
            f = PR.state_logits_fn(gd, rest, r.tokens, r.mask, row, cfg.prompt_width)
            a = rng.normal(size=int(f(params).shape[0]))
            z0 = np.asarray(f(params), np.float64)
            for mode in ("natural", "vanilla", "network_sgd"):
                res = dataclasses.asdict(PR.lemma_check(f, params, a, mode=mode))
                c = {"row": row, "mode": mode, "z0": z0.tolist(), "a": a.tolist(), "study": res}
                if mode == "network_sgd":
                    g, dz1 = PR._sgd_direction(f, params, jnp.asarray(a, jnp.float32))
                    c["dz1"] = np.asarray(dz1, np.float64).tolist()
                    c["z1"] = [
                        np.asarray(
                            f(jax.tree.map(lambda t, gt, e=eta: t + e * gt, params, g)), np.float64
                        ).tolist()
                        for eta in res["steps"]
                    ]
                checks.append(c)
        doc = {
            "init": init,
            "step": step,
            "logged": {k: v for k, v in logged.items() if k.startswith("lemma/")},
            "checks": checks,
        }
        Path(out).write_text(json.dumps(doc))
        return logged

    St._claim3 = wrapped
    Runner(spec, St.job, scratch).run()


def analyse(capture_path: str, out: str) -> dict:
    from experiments.entropy_mechanism import probes as PR

    cap = json.loads(Path(capture_path).read_text())
    rows = []
    for c in cap["checks"]:
        z0 = np.asarray(c["z0"])
        if c["mode"] == "network_sgd":
            dz1, z1s = c["dz1"], c["z1"]  # the float32 network's, as captured
        else:
            dz1, z1s = PR.softmax_direction(c["mode"], z0, c["a"]), None
        steps = c["study"]["steps"]
        _, _, err, res, order, passed = PR.lemma_measure(z0, dz1, steps, z1s)
        p0 = np.exp(PR._log_softmax64(z0))
        rows.append(
            {
                "row": c["row"],
                "mode": c["mode"],
                "entropy": float(PR._entropy64(z0)),
                "max_prob": float(p0.max()),
                "study_float32": {
                    "order": c["study"]["order"],
                    "rel_err_smallest": c["study"]["rel_err"][-1],
                    "residual": c["study"]["residual"],
                    "passed": c["study"]["passed"],
                },
                "float64": {
                    "order": order,
                    "rel_err_smallest": err[-1],
                    "residual": res,
                    "passed": passed,
                },
            }
        )
    doc = {
        "about": f"c3_lemma at init {cap['init']}, step {cap['step']} of the full study: the "
        "study's float32 check and the same check in float64 from the same logits "
        "(experiments/entropy_mechanism/diagnose_lemma.py)",
        "logged_by_the_study": cap["logged"],
        "distinct_states": len({tuple(c["z0"]) for c in cap["checks"]}),
        "checks": rows,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capture")
    c.add_argument("--init", type=int, default=3)
    c.add_argument("--out", required=True)
    c.add_argument("--scratch", default="runs/lemma_diagnosis")
    a = sub.add_parser("analyse")
    a.add_argument("capture")
    a.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "capture":
        capture(args.init, args.out, args.scratch)
    else:
        doc = analyse(args.capture, args.out)
        for r in doc["checks"]:
            s, d = r["study_float32"], r["float64"]
            print(f"row {r['row']} {r['mode']:12s} H {r['entropy']:.4g}  float32: order "
                  f"{s['order']:.2f} passed {s['passed']}  float64: order {d['order']:.2f} "
                  f"passed {d['passed']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
