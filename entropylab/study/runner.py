"""Arms, the (arm, init, seed) job list, shards that resume, manifests, and ``plan``.

A study is a :class:`StudySpec` (arms, initialisations, seeds, steps, a config, claims) plus a
*job function* ``job_fn(ctx: JobContext) -> dict`` that the study writes: it builds (or loads
from the warm-start cache) initialisation ``ctx.init``, trains arm ``ctx.arm`` for
``ctx.steps`` steps with data seed ``ctx.data_seed(seed)``, writes per-step metrics and eval
outcomes into ``ctx.dir(seed)`` (``ctx.step_logger(seed)``, ``ctx.eval_log(seed)``) and returns
a dict of final numbers (for grouped seeds: ``{seed: dict}``). The runner does the rest:

* **Common random numbers.** ``ctx.data_seed(seed)`` depends on (init, seed) only, never on
  the arm: every arm of an init sees the same problems and sampling keys at each step, so arm
  differences are not sampling noise.
* **Replicas.** With ``group_seeds=True`` one call gets all seeds of an (arm, init)
  (``ctx.seeds``), for a job function that runs them as vmapped replicas.
* **Shards.** ``run(shard=(i, n))`` (1-based, ``--shard i/n`` on the command line) runs the
  i-th of n contiguous blocks of the init-major job list, so an init's warm start is shared by
  at most two shards; a study runs as several ≤ 20-minute jobs.
* **Resume.** A job is done when each of its seed directories holds ``result.json`` (written
  last, atomically) with this run's config hash and code version; done jobs are skipped, a
  partial one is re-run with ``ctx.resume=True`` (the job function resumes from its checkpoint
  or restarts).
* **Manifests.** ``<out>/study.json`` (name, config hash, code version, git SHA and dirty flag,
  versions, CPU, the job list) is written by the first shard; each shard writes
  ``<out>/shards/shard-<i>-of-<n>.json`` (its jobs, wall and CPU time) and every job's
  ``result.json`` carries the same provenance. A shard whose config hash, code version or git
  commit differs from ``study.json`` refuses to run: shards of different code are never mixed
  (``allow_other_commit=True`` accepts another commit whose code version — the hash of the
  library and study sources — is identical, e.g. after committing the first shards' logs).
* **Plan.** ``plan()`` runs the first job for a few steps in a temporary directory, reads its
  ``time/step_s`` records, and predicts the wall time of every shard.

Directory layout: ``<out>/jobs/<arm>/init<k>/seed<s>/{metrics.jsonl, evals.jsonl, result.json}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from entropylab import runs
from entropylab.study import provenance
from entropylab.study.claims import Claim
from entropylab.study.metrics import EvalLog, Progress, StepLogger, read_records


def _name_ok(s: str) -> bool:
    return bool(s) and all(c.isalnum() or c in "-_." for c in s) and not s.startswith(".")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Arm:
    """One arm: an objective config, optional sampler hooks and free-form extras.

    ``objective``: e.g. an ``entropylab.losses.objective.ObjectiveConfig``; ``sampler_hooks``:
    ``((hook name, kwargs), ...)`` the job function applies to the sampler (e.g. a per-token
    temperature); ``extras``: anything else the job function reads (``{"random_reward": True}``,
    ``{"learning_rate": 0.0}``); ``extras["steps"]`` (an int >= 0), if given, replaces the
    study's ``steps`` for this arm's jobs (e.g. 0 for an arm evaluated without training), in
    ``run`` and in ``plan``. ``role`` marks controls (``"control"``) in reports.
    """

    name: str
    objective: Any = None
    sampler_hooks: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    role: str = "arm"

    def __post_init__(self):
        if not _name_ok(self.name):
            raise ValueError(f"arm name must be a word of [A-Za-z0-9_.-], got {self.name!r}")
        if self.role not in ("arm", "control"):
            raise ValueError(f"role must be 'arm' or 'control', got {self.role!r}")
        for h in self.sampler_hooks:
            if not (isinstance(h, tuple) and len(h) == 2 and isinstance(h[0], str)):
                raise ValueError(f"sampler_hooks entries must be (name, kwargs), got {h!r}")
        st = self.extras.get("steps") if isinstance(self.extras, Mapping) else None
        if st is not None and (isinstance(st, bool) or not isinstance(st, int) or st < 0):
            raise ValueError(f"arm {self.name!r}: extras['steps'] must be an int >= 0, got {st!r}")

    def steps_or(self, default: int) -> int:
        """This arm's step count: ``extras["steps"]`` if given, else ``default``."""
        st = self.extras.get("steps") if isinstance(self.extras, Mapping) else None
        return default if st is None else int(st)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudySpec:
    """The pre-registered design: arms × inits × seeds for ``steps`` steps, a config, claims."""

    name: str
    arms: tuple[Arm, ...]
    inits: tuple[int, ...]
    seeds: tuple[int, ...] = (0,)
    steps: int
    config: Any = None
    claims: tuple[Claim, ...] = ()
    group_seeds: bool = False

    def __post_init__(self):
        if not _name_ok(self.name):
            raise ValueError(f"name must be a word of [A-Za-z0-9_.-], got {self.name!r}")
        if not self.arms:
            raise ValueError("arms must not be empty")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        for field in ("inits", "seeds"):
            v = getattr(self, field)
            if not v or len(set(v)) != len(v) or any(int(x) != x or x < 0 for x in v):
                raise ValueError(f"{field} must be distinct ints >= 0, got {v}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        for c in self.claims:
            unknown = [a for a in c.arms if a not in names]
            if unknown:
                raise ValueError(f"claim {c.name!r} names unknown arms {unknown}")

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise ValueError(f"unknown arm {name!r}")

    def config_hash(self) -> str:
        """Hash of what determines the runs (everything but the claims)."""
        return provenance.config_hash(dataclasses.replace(self, claims=()))

    def claims_hash(self) -> str:
        """Hash of the pre-registered claims (recorded in study.json when the run starts)."""
        return provenance.config_hash(list(self.claims))

    @property
    def n_results(self) -> int:
        """How many ``result.json`` files the finished study has (one per arm × init × seed)."""
        return len(self.arms) * len(self.inits) * len(self.seeds)

    def jobs(self) -> list[Job]:
        """Init-major job list: for each init, each arm, each seed (or all seeds if grouped)."""
        out = []
        for i in self.inits:
            for a in self.arms:
                if self.group_seeds:
                    out.append(Job(arm=a.name, init=i, seeds=tuple(self.seeds)))
                else:
                    out.extend(Job(arm=a.name, init=i, seeds=(s,)) for s in self.seeds)
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Job:
    arm: str
    init: int
    seeds: tuple[int, ...]

    @property
    def label(self) -> str:
        s = ",".join(map(str, self.seeds))
        return f"{self.arm}/init{self.init}/seed{s}"


def crn_seed(init: int, seed: int) -> int:
    """Data seed shared by every arm of (init, seed): sha256-derived, in [0, 2³¹)."""
    h = hashlib.sha256(f"crn|{int(init)}|{int(seed)}".encode()).hexdigest()
    return int(h[:8], 16) & 0x7FFFFFFF


def job_dir(out: Path, arm: str, init: int, seed: int) -> Path:
    return Path(out) / "jobs" / arm / f"init{init}" / f"seed{seed}"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (1 ≤ i ≤ n) → ``(i, n)``."""
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ValueError(f"shard must look like 'i/n' (e.g. 2/4), got {text!r}") from None
    if not 1 <= i <= n:
        raise ValueError(f"shard i/n needs 1 <= i <= n, got {text!r}")
    return i, n


def shard_jobs(jobs: Sequence[Job], shard: tuple[int, int]) -> list[Job]:
    """The i-th of n contiguous, near-equal blocks of ``jobs`` (1-based)."""
    i, n = shard
    if not 1 <= i <= n:
        raise ValueError(f"shard needs 1 <= i <= n, got {shard}")
    bounds = np.linspace(0, len(jobs), n + 1).round().astype(int)
    return list(jobs[bounds[i - 1] : bounds[i]])


@dataclasses.dataclass
class JobContext:
    """What a job function gets: the job, its arm, directories, resume flag, step limit."""

    job: Job
    arm: Arm
    spec: StudySpec
    out: Path
    resume: bool
    steps: int
    progress: bool = True

    @property
    def init(self) -> int:
        return self.job.init

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.job.seeds

    def data_seed(self, seed: int) -> int:
        return crn_seed(self.job.init, seed)

    def dir(self, seed: int) -> Path:
        if seed not in self.job.seeds:
            raise ValueError(f"seed {seed} is not one of this job's seeds {self.job.seeds}")
        d = job_dir(self.out, self.job.arm, self.job.init, seed)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def step_logger(self, seed: int, *, resume_step: int | None = None, tensorboard=False):
        return StepLogger(
            self.dir(seed) / "metrics.jsonl", resume_step=resume_step, tensorboard=tensorboard
        )

    def eval_log(self, seed: int, *, resume_step: int | None = None) -> EvalLog:
        return EvalLog(self.dir(seed) / "evals.jsonl", resume_step=resume_step)

    def bar(self, seed: int | None = None, **kw) -> Progress:
        s = self.job.seeds[0] if seed is None else seed
        name = f"{self.job.arm} init{self.job.init} seed{s}"
        return Progress(self.steps, name=name, stream=None if self.progress else _Null(), **kw)


class _Null:
    def write(self, _):
        pass

    def flush(self):
        pass


def _cpu_s() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def _module_paths(job_fn) -> tuple[list[str], list[Path]]:
    mod = getattr(job_fn, "__module__", None)
    if mod in (None, "__main__"):
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        return ["entropylab"], [Path(main)] if main else []
    return ["entropylab", mod], []


class Runner:
    """Runs a :class:`StudySpec` with a job function into ``out`` (see the module docstring)."""

    def __init__(
        self,
        spec: StudySpec,
        job_fn: Callable[[JobContext], Any],
        out,
        *,
        allow_other_commit: bool = False,
    ):
        if not callable(job_fn):
            raise TypeError("job_fn must be callable")
        self.spec, self.job_fn, self.out = spec, job_fn, Path(out)
        self.allow_other_commit = allow_other_commit
        self._code: str | None = None
        self._ident: dict | None = None

    # -- provenance ------------------------------------------------------------------------
    def code_version(self) -> str:
        if self._code is None:
            mods, files = _module_paths(self.job_fn)
            h = hashlib.sha256(provenance.code_version(mods).encode())
            for f in files:
                h.update(f.read_bytes())
            self._code = h.hexdigest()[:16]
        return self._code

    def identity(self) -> dict:
        """Study name, config hash, code version, git SHA and dirty flag (computed once)."""
        if self._ident is None:
            git = provenance.git_info()
            self._ident = {
                "study": self.spec.name,
                "config_hash": self.spec.config_hash(),
                "code_version": self.code_version(),
                "git_sha": git["sha"],
                "git_dirty": git["dirty"],
            }
        return self._ident

    def check_out(self) -> dict:
        """Refuse an output directory this study cannot run in (another study, config or
        commit; a non-empty folder that is not a study); start the study there otherwise."""
        return self._check_or_write_study()

    def _check_or_write_study(self) -> dict:
        ident = self.identity()
        path = self.out / "study.json"
        if path.exists():
            have = provenance.read_json(path)
            keys = ["study", "config_hash", "code_version"]
            if not self.allow_other_commit:
                keys.append("git_sha")
            diff = [k for k in keys if have.get(k) != ident[k]]
            if diff:
                detail = ", ".join(f"{k}: {have.get(k)!r} here vs {ident[k]!r} now" for k in diff)
                raise RuntimeError(
                    f"refusing to mix shards: {path} was started with a different {detail}. "
                    f"Use a new output directory (or finish the study at that commit/config)."
                )
            return have
        self.out.mkdir(parents=True, exist_ok=True)
        if any(self.out.iterdir()):
            raise FileExistsError(
                f"{self.out} is not empty and has no study.json: refusing to write a study into it"
            )
        man = provenance.manifest(
            **ident,
            arms=[a.name for a in self.spec.arms],
            inits=list(self.spec.inits),
            seeds=list(self.spec.seeds),
            steps=self.spec.steps,
            claims_hash=self.spec.claims_hash(),
            jobs=[j.label for j in self.spec.jobs()],
        )
        provenance.atomic_write_json(path, man)
        return man

    # -- state -----------------------------------------------------------------------------
    def is_done(self, job: Job) -> bool:
        ident = self.identity()
        for s in job.seeds:
            p = job_dir(self.out, job.arm, job.init, s) / "result.json"
            if not p.exists():
                return False
            r = provenance.read_json(p)
            if r.get("config_hash") != ident["config_hash"] or (
                r.get("code_version") != ident["code_version"]
            ):
                raise RuntimeError(f"{p} was written by another config/code version")
        return True

    def status(self) -> dict[str, list[str]]:
        """``{"done": [...], "todo": [...], "started": [...]}`` job labels; ``started`` = the
        unfinished jobs with outputs (running now, or stopped mid-job: they resume there)."""
        done, todo, started = [], [], []
        for j in self.spec.jobs():
            if self.is_done(j):
                done.append(j.label)
            else:
                todo.append(j.label)
                if self._has_outputs(j, self.out):
                    started.append(j.label)
        return {"done": done, "todo": todo, "started": started}

    @staticmethod
    def _has_outputs(job: Job, out: Path) -> bool:
        """Whether any seed directory of ``job`` exists under ``out`` (done or partial)."""
        return any(job_dir(out, job.arm, job.init, s).exists() for s in job.seeds)

    # -- running ---------------------------------------------------------------------------
    def _run_job(self, job: Job, *, resume: bool, steps: int, progress: bool, out: Path, shard):
        partial = self._has_outputs(job, out)
        if partial and not resume:
            raise FileExistsError(
                f"job {job.label} has partial outputs in {out}; pass resume=True to continue it"
            )
        ctx = JobContext(
            job=job,
            arm=self.spec.arm(job.arm),
            spec=self.spec,
            out=out,
            resume=partial,
            steps=steps,
            progress=progress,
        )
        t0, c0 = time.time(), _cpu_s()
        with contextlib.ExitStack() as locks:  # one process per job directory
            for s in job.seeds:
                locks.enter_context(runs.run_lock(ctx.dir(s), arg=f"job {job.label}"))
            res = self.job_fn(ctx)
        wall, cpu = time.time() - t0, _cpu_s() - c0
        if len(job.seeds) == 1 and not (isinstance(res, Mapping) and set(res) == set(job.seeds)):
            res = {job.seeds[0]: res}
        if not isinstance(res, Mapping) or set(res) != set(job.seeds):
            raise ValueError(
                f"job function must return a dict (or {{seed: dict}} for grouped seeds {job.seeds})"
            )
        ident = self.identity()
        for s in job.seeds:
            provenance.atomic_write_json(
                ctx.dir(s) / "result.json",
                {
                    **ident,
                    "arm": job.arm,
                    "init": job.init,
                    "seed": s,
                    "data_seed": ctx.data_seed(s),
                    "steps": steps,
                    "shard": list(shard),
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "result": dict(res[s] or {}),
                },
            )
        return wall

    def run(self, *, shard=(1, 1), resume: bool = True, progress: bool = True) -> list[str]:
        """Run this shard's unfinished jobs; returns the labels of the jobs it ran."""
        if isinstance(shard, str):
            shard = parse_shard(shard)
        self._check_or_write_study()
        jobs = shard_jobs(self.spec.jobs(), shard)
        i, n = shard
        man_path = self.out / "shards" / f"shard-{i}-of-{n}.json"
        t0, c0 = time.time(), _cpu_s()
        ran = []
        base = provenance.manifest(**self.identity(), shard=[i, n], jobs=[j.label for j in jobs])
        provenance.atomic_write_json(man_path, {**base, "status": "running"})
        for k, job in enumerate(jobs):
            if self.is_done(job):
                continue
            if progress:
                print(f"[{self.spec.name} shard {i}/{n}] job {k + 1}/{len(jobs)}: {job.label}")
            self._run_job(
                job,
                resume=resume,
                steps=self.spec.arm(job.arm).steps_or(self.spec.steps),
                progress=progress,
                out=self.out,
                shard=shard,
            )
            ran.append(job.label)
        provenance.atomic_write_json(
            man_path,
            {
                **base,
                "status": "done",
                "ran": ran,
                "wall_s": time.time() - t0,
                "cpu_s": _cpu_s() - c0,
            },
        )
        return ran

    # -- plan ------------------------------------------------------------------------------
    def plan(
        self,
        *,
        calibration_steps: int = 3,
        shards: int | None = None,
        budget_s: float = 20 * 60,
        progress: bool = False,
    ) -> dict:
        """Predict wall times from a short calibration of the first job.

        Runs job 1 for ``calibration_steps`` steps in a temp directory; per-step time = median
        of its ``time/step_s`` after the first step; fixed cost per job = its wall time minus
        the step times minus ``time/warmstart_s`` (if the job function returns it, charged once
        per init and shard instead) minus ``time/arm_extra_s`` (if returned: work only the
        calibrated job's arm does, e.g. extra evaluations or probes, charged to that arm's jobs
        only). Returns the prediction per shard for ``shards`` (default: the fewest shards that
        each fit ``budget_s``).
        """
        if calibration_steps < 2:
            raise ValueError(f"calibration_steps must be >= 2, got {calibration_steps}")
        job = self.spec.jobs()[0]
        with tempfile.TemporaryDirectory(prefix="plan-") as tmp:
            wall = self._run_job(
                job,
                resume=False,
                steps=calibration_steps,
                progress=progress,
                out=Path(tmp),
                shard=(1, 1),
            )
            d = job_dir(Path(tmp), job.arm, job.init, job.seeds[0])
            recs = read_records(d / "metrics.jsonl")
            result = provenance.read_json(d / "result.json")["result"]
        times = [r["time/step_s"] for r in recs if isinstance(r.get("time/step_s"), int | float)]
        if len(times) < 2:
            raise ValueError("plan needs the job function to log 'time/step_s' on at least 2 steps")
        per_step = float(np.median(times[1:]))
        warm = float(result.get("time/warmstart_s", 0.0))
        extra = float(result.get("time/arm_extra_s", 0.0))
        fixed = max(0.0, wall - float(np.sum(times)) - warm - extra)
        all_jobs = self.spec.jobs()

        def predict(block: Sequence[Job]) -> float:
            inits = {j.init for j in block}
            n_arm = sum(j.arm == job.arm for j in block)
            n_steps = sum(self.spec.arm(j.arm).steps_or(self.spec.steps) for j in block)
            return len(block) * fixed + n_steps * per_step + len(inits) * warm + n_arm * extra

        total = predict(all_jobs)
        if shards is None:
            shards = 1
            while (
                shards < len(all_jobs)
                and max(predict(shard_jobs(all_jobs, (i, shards))) for i in range(1, shards + 1))
                > budget_s
            ):
                shards += 1
        per_shard = [predict(shard_jobs(all_jobs, (i, shards))) for i in range(1, shards + 1)]
        return {
            "jobs": len(all_jobs),
            "steps": self.spec.steps,
            "per_step_s": per_step,
            "fixed_per_job_s": fixed,
            "warmstart_per_init_s": warm,
            "arm_extra_s": extra,
            "arm_extra_arm": job.arm,
            "total_s": total,
            "shards": shards,
            "per_shard_s": per_shard,
            "fits_budget": max(per_shard) <= budget_s,
            "budget_s": budget_s,
        }


def format_plan(plan: dict) -> str:
    def m(s: float) -> str:
        return f"{s / 60:.1f} min" if math.isfinite(s) else "?"

    lines = [
        f"{plan['jobs']} jobs x {plan['steps']} steps: {plan['per_step_s']:.3g} s/step, "
        f"{plan['fixed_per_job_s']:.3g} s fixed per job, "
        f"{plan['warmstart_per_init_s']:.3g} s warm start per init"
        + (
            f", {plan['arm_extra_s']:.3g} s more per job of arm {plan['arm_extra_arm']}"
            if plan.get("arm_extra_s")
            else ""
        ),
        f"total {m(plan['total_s'])} on one process; {plan['shards']} shard(s):",
    ]
    for i, s in enumerate(plan["per_shard_s"], 1):
        lines.append(f"  --shard {i}/{plan['shards']}: {m(s)}")
    if not plan["fits_budget"]:
        lines.append(f"  (a shard exceeds the {m(plan['budget_s'])} budget)")
    return "\n".join(lines)


def snapshot(out, to) -> dict:
    """Copy the finished part of the run in ``out`` to ``to``, ready to commit; returns counts.

    A long study's shards run for hours, often across sessions or machines; what is not
    committed can be lost. This copies ``study.json``, the shard manifests and every seed
    directory that holds ``result.json`` (its logs gzipped, deterministically; no checkpoints,
    no lock), so ``to`` can be committed while the shards go on, and refreshed later. Copying
    ``to`` back into a run directory resumes the study there (a job with ``result.json`` is
    done); ``analyse`` reads ``to`` directly (an interim look until every job has finished).
    Plain file operations: the library version that reads them need not be the run's.

    Refuses (``RuntimeError``) a ``to`` that holds another study (study, config, code version or
    commit in its ``study.json`` differ) and (``FileExistsError``) a non-empty ``to`` without one.
    """
    from entropylab.study.metrics import gzip_bytes

    out, to = Path(out), Path(to)
    src = out / "study.json"
    if not src.is_file():
        raise FileNotFoundError(f"out: {out} holds no study (no study.json)")
    study = provenance.read_json(src)
    have = to / "study.json"
    if have.exists():
        old = provenance.read_json(have)
        keys = ("study", "config_hash", "code_version", "git_sha")
        diff = [k for k in keys if old.get(k) != study.get(k)]
        if diff:
            raise RuntimeError(
                f"refusing to mix runs: {have} is another run ({', '.join(diff)} differ)"
            )
    elif to.exists() and any(to.iterdir()):
        raise FileExistsError(f"to: {to} is not empty and holds no study.json")
    to.mkdir(parents=True, exist_ok=True)

    def put(path: Path, data: bytes) -> None:  # unchanged files are left untouched
        if not (path.exists() and path.read_bytes() == data):
            runs.atomic_write_bytes(path, data)

    put(have, src.read_bytes())
    for p in sorted((out / "shards").glob("*.json")):
        put(to / "shards" / p.name, p.read_bytes())
    n = 0
    for res in sorted((out / "jobs").glob("*/init*/seed*/result.json")):
        d = res.parent
        rel = d.relative_to(out)
        for f in sorted(d.iterdir()):
            if f.is_dir() or f.name.startswith("."):  # checkpoints/, .lock, temporary files
                continue
            if f.suffix == ".jsonl":  # as `analyse --compress` writes it: same log, same bytes
                put(to / rel / (f.name + ".gz"), gzip_bytes(f.read_bytes()))
                stale = to / rel / f.name
                if stale.exists():
                    stale.unlink()
            else:
                put(to / rel / f.name, f.read_bytes())
        n += 1
    return {"jobs_copied": n, "jobs_expected": len(study.get("jobs", []))}


def format_status(status: dict, spec) -> str:
    """:meth:`Runner.status` for people: totals, a bar per arm, the started and first to-do jobs."""
    n_done, n = len(status["done"]), len(status["done"]) + len(status["todo"])
    lines = [f"{n_done} of {n} jobs done ({100 * n_done / max(n, 1):.0f}%)"]
    width = max([len(a.name) for a in spec.arms] + [1])
    for a in spec.arms:
        k = sum(lab.startswith(a.name + "/") for lab in status["done"])
        m = k + sum(lab.startswith(a.name + "/") for lab in status["todo"])
        bar = "#" * round(20 * k / max(m, 1))
        lines.append(f"  {a.name:<{width}}  {k:>3}/{m:<3} [{bar:<20}]")
    if status.get("started"):
        lines.append("started (resume where they stopped): " + ", ".join(status["started"]))
    todo = [t for t in status["todo"] if t not in status.get("started", ())]
    if todo:
        more = f" … +{len(todo) - 6} more" if len(todo) > 6 else ""
        lines.append("to do: " + ", ".join(todo[:6]) + more)
    return "\n".join(lines)
