"""Command line of a study: ``run [--shard i/n]``, ``plan``, ``status``, ``analyse``, ``snapshot``.

A study script ends with ``raise SystemExit(main(SPEC, job_fn, default_out="runs/<name>"))``::

    python -m experiments.<study>.run plan                  # predicted wall time per shard
    python -m experiments.<study>.run run --shard 1/3       # one ≤ 20-minute shard (resumes)
    python -m experiments.<study>.run status                # jobs done / to do
    python -m experiments.<study>.run analyse --readme experiments/<study>/README.md --compress
    python -m experiments.<study>.run snapshot --to experiments/<study>/results/<preset>  # partial

``run`` and ``plan`` keep compiled programs on disk (``entropylab.runs.enable_compilation_cache``;
``ENTROPYLAB_COMPILE_CACHE=off`` disables it, a path moves it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from entropylab.runs import enable_compilation_cache, out_path
from entropylab.study.analyse import analyse
from entropylab.study.metrics import compress_logs
from entropylab.study.runner import Runner, format_plan, format_status, parse_shard, snapshot


def build_parser(prog: str | None = None, default_out: str | None = None):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "plan", "status", "analyse", "snapshot"):
        s = sub.add_parser(name)
        s.add_argument("--out", default=default_out, required=default_out is None)
        s.add_argument(
            "--allow-other-commit",
            action="store_true",
            help="accept shards of another git commit whose code version is identical",
        )
        if name == "run":
            s.add_argument("--shard", default="1/1", type=parse_shard, help="i/n, 1-based")
            s.add_argument("--no-resume", action="store_true")
            s.add_argument("--quiet", action="store_true")
        if name == "plan":
            s.add_argument("--calibration-steps", type=int, default=3)
            s.add_argument("--shards", type=int, default=None)
            s.add_argument("--budget-min", type=float, default=20.0)
        if name == "status":
            s.add_argument("--json", action="store_true", help="the job lists as JSON")
        if name == "snapshot":
            s.add_argument("--to", required=True, help="folder to copy the finished jobs into")
        if name == "analyse":
            s.add_argument("--readme", default=None, help="README whose results block to update")
            s.add_argument("--no-plots", action="store_true")
            s.add_argument("--compress", action="store_true", help="gzip the JSONL logs first")
    return p


def main(
    spec,
    job_fn,
    argv=None,
    *,
    default_out: str | None = None,
    prog=None,
    summary_keys=None,
    before_analyse=None,
    after_analyse=None,
) -> int:
    """Run the command in ``argv`` for ``spec``/``job_fn``. ``summary_keys``: the per-arm table
    of RESULTS.md / summary.json (logged keys or ``"result:<key>"``; default: the RL keys).
    A study's own analysis steps: ``before_analyse(spec, out, args)`` runs first (checks that
    must fail before any output is written, e.g. its own README block; raise ``ValueError``),
    ``after_analyse(spec, out, summary, args)`` after the verdicts (its extra tables, figures,
    README blocks); ``args`` is the parsed ``analyse`` command line (``args.readme``,
    ``args.no_plots``)."""
    parser = build_parser(prog, default_out)
    args = parser.parse_args(argv)
    try:
        args.out = str(out_path(args.out))
    except (TypeError, ValueError) as e:
        parser.error(str(e))
    if args.cmd == "snapshot":  # file copies only: no spec identity, works across versions
        try:
            got = snapshot(args.out, args.to)
        except (FileExistsError, FileNotFoundError, RuntimeError) as e:
            parser.exit(2, f"{parser.prog} snapshot: error: {e}\n")
        print(f"{got['jobs_copied']} of {got['jobs_expected']} finished runs in {args.to}")
        return 0
    if args.cmd in ("run", "plan"):
        enable_compilation_cache()  # every job compiles the same programs: load them from disk
    runner = Runner(spec, job_fn, Path(args.out), allow_other_commit=args.allow_other_commit)
    try:  # what the user can fix (paths, a foreign or mismatched --out, options): no traceback
        if args.cmd == "run":
            runner.check_out()
        elif args.cmd == "plan" and args.calibration_steps < 2:
            raise ValueError(f"--calibration-steps must be >= 2, got {args.calibration_steps}")
        elif args.cmd == "analyse":
            if before_analyse is not None:
                before_analyse(spec, Path(args.out), args)
            if args.compress:
                compress_logs(Path(args.out) / "jobs")
            kw = {} if summary_keys is None else {"summary_keys": tuple(summary_keys)}
            summary = analyse(spec, args.out, readme=args.readme, plots=not args.no_plots, **kw)
            if after_analyse is not None:
                after_analyse(spec, Path(args.out), summary, args)
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as e:
        parser.exit(2, f"{parser.prog} {args.cmd}: error: {e}\n")
    if args.cmd == "run":
        ran = runner.run(shard=args.shard, resume=not args.no_resume, progress=not args.quiet)
        st = runner.status()
        print(f"ran {len(ran)} job(s); {len(st['done'])} done, {len(st['todo'])} to do")
    elif args.cmd == "plan":
        plan = runner.plan(
            calibration_steps=args.calibration_steps,
            shards=args.shards,
            budget_s=60 * args.budget_min,
        )
        print(format_plan(plan))
    elif args.cmd == "status":
        st = runner.status()
        print(json.dumps(st, indent=1) if args.json else format_status(st, spec))
    else:
        for name, c in summary["claims"].items():
            print(f"{name}: {c['label']}")
    sys.stdout.flush()
    return 0
