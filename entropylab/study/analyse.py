"""``analyse``: from a run directory to verdicts, RESULTS.md, summary.json, plots, README block.

Every number in the outputs is computed here from the committed files (``result.json``,
``metrics.jsonl[.gz]``, ``evals.jsonl[.gz]``), so ``analyse`` on a fresh clone reproduces every
table, and a README never carries a hand-typed result: the block between
``<!-- study-results:begin -->`` and ``<!-- study-results:end -->`` is replaced by the script.

Refuses to analyse a directory whose jobs come from different config hashes or code versions.
The claims are not part of the run's config hash (they do not change what runs), but
``study.json`` records the claims' hash when the first shard starts; if the claims were changed
afterwards the report says so, with both hashes — the pre-registration is auditable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from entropylab.study import provenance
from entropylab.study.claims import (
    RESULT_PREFIX,
    ClaimResult,
    JobData,
    evaluate_claims,
    job_value,
    result_dict,
)
from entropylab.study.metrics import read_records

BEGIN, END = "<!-- study-results:begin -->", "<!-- study-results:end -->"
DEFAULT_SUMMARY = ("rollout/entropy", "eval/pass@1", "eval/greedy_acc", "reward/acc")


def load_jobs(out) -> tuple[list[JobData], dict]:
    """Finished jobs of a run directory and its ``study.json``; refuses mixed provenance."""
    out = Path(out)
    study = provenance.read_json(out / "study.json")
    jobs, idents = [], set()
    for res_path in sorted((out / "jobs").glob("*/init*/seed*/result.json")):
        res = provenance.read_json(res_path)
        idents.add((res.get("config_hash"), res.get("code_version")))
        d = res_path.parent
        evals = read_records(d / "evals.jsonl") if _exists(d / "evals.jsonl") else []
        jobs.append(
            JobData(
                arm=res["arm"],
                init=int(res["init"]),
                seed=int(res["seed"]),
                records=read_records(d / "metrics.jsonl"),
                evals=evals,
                result=res.get("result", {}),
            )
        )
    want = (study.get("config_hash"), study.get("code_version"))
    if idents - {want}:
        raise RuntimeError(
            f"refusing to analyse {out}: jobs come from config/code {sorted(idents)} but "
            f"study.json says {want}"
        )
    return jobs, study


def _exists(p: Path) -> bool:
    return p.exists() or p.with_name(p.name + ".gz").exists()


def _g(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if not math.isfinite(x):
        return "∞" if x > 0 else ("−∞" if x < 0 else "NaN")
    return f"{x:.3g}"


def arm_table(jobs: Sequence[JobData], arms: Sequence[str], keys: Sequence[str]) -> dict:
    """Per arm and key: mean and sd over inits of the last logged value (seeds averaged);
    ``"result:<key>"`` keys read the job function's returned value instead."""
    out = {}
    for a in arms:
        row = {}
        for k in keys:
            per_init: dict[int, list[float]] = {}
            for j in jobs:
                if j.arm != a:
                    continue
                if k.startswith(RESULT_PREFIX):  # a value the job function returned
                    if k[len(RESULT_PREFIX) :] in j.result:
                        per_init.setdefault(j.init, []).append(job_value(j, k))
                elif any(k in r for r in j.records):
                    per_init.setdefault(j.init, []).append(float(j.series(k)[1][-1]))
            vals = np.array([np.mean(v) for v in per_init.values()])
            if vals.size:
                sd = float(np.std(vals, ddof=1)) if vals.size > 1 else math.nan
                row[k] = {"mean": float(np.mean(vals)), "sd": sd, "n": int(vals.size)}
        out[a] = row
    return out


def verdict_table(results: dict[str, ClaimResult], claims) -> str:
    by = {c.name: c for c in claims}
    lines = [
        "| claim | test | effect [CI] | p | MDE | n | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        c = by[name]
        cmp = f"{c.arm} − {c.baseline}" if c.baseline else (c.arm or "dose")
        lines.append(
            f"| {name} | {c.test} ({cmp}, {c.direction}) | {_g(r.estimate)} "
            f"[{_g(r.ci_low)}, {_g(r.ci_high)}] | {_g(r.p_value)} | {_g(r.mde)} | {r.n} | "
            f"**{r.label()}** |"
        )
    return "\n".join(lines)


def _provenance_line(study: dict, n_jobs: int, n_expected: int) -> str:
    sha = (study.get("git_sha") or "?")[:10]
    dirty = " (dirty tree)" if study.get("git_dirty") else ""
    return (
        f"Commit {sha}{dirty}, config {study.get('config_hash')}, code {study.get('code_version')};"
        f" {n_jobs} of {n_expected} (arm, init, seed) runs finished."
    )


def render_results(spec, results, study, table, n_jobs, claims_note) -> str:
    by = {c.name: c for c in spec.claims}
    parts = [
        f"# {spec.name}: results",
        "",
        _provenance_line(study, n_jobs, spec.n_results),
        "",
    ]
    if claims_note:
        parts += [claims_note, ""]
    parts += ["## Verdicts", "", verdict_table(results, spec.claims), ""]
    parts += [
        "Effects are treatment − baseline in the metric's (transformed) units, averaged over "
        "initialisations; CI = (1 − 2α) paired percentile bootstrap over initialisations; p = "
        "exact one-sided sign-flip test; MDE = smallest effect detectable with the claim's power "
        "at the observed variance and n.",
        "",
    ]
    for name, r in results.items():
        c = by[name]
        parts += [
            f"### {name} — {r.label()}",
            "",
            c.statement,
            "",
            f"- metric `{c.metric if isinstance(c.metric, str) else c.metric.__name__}` "
            f"({c.reduce}, transform {c.transform}); α = {c.alpha}; margin {_g(c.margin)}; "
            f"effect of interest {_g(c.effect_of_interest)}"
            + (f"; preconditions: {', '.join(c.preconditions)}" if c.preconditions else ""),
            f"- {r.reason}",
            ("- arm means (log scale): " if c.transform == "log" else "- arm means: ")
            + ", ".join(f"{a} {_g(v)}" for a, v in r.arm_means.items())
            + f"; n = {r.n} initialisations ({r.n_dropped} dropped as non-finite)",
            "- per-init effects: " + ", ".join(f"{k}: {_g(v)}" for k, v in r.units.items()),
            "",
        ]
    parts += ["## Arms (last logged value; mean ± sd over initialisations)", ""]
    keys = sorted({k for row in table.values() for k in row})
    if keys:
        parts.append("| arm | " + " | ".join(keys) + " |")
        parts.append("|---|" + "---|" * len(keys))
        for a, row in table.items():
            cells = [
                f"{_g(row[k]['mean'])} ± {_g(row[k]['sd'])}" if k in row else "—" for k in keys
            ]
            parts.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(parts) + "\n"


def readme_block(spec, results, study, n_jobs) -> str:
    lines = [
        BEGIN,
        "_Written by `analyse` from the committed run files; do not edit by hand._ "
        + _provenance_line(study, n_jobs, spec.n_results),
        "",
        verdict_table(results, spec.claims),
        END,
    ]
    return "\n".join(lines)


def check_readme_block(readme, begin: str = BEGIN, end: str = END) -> str:
    """The text of ``readme``; ``ValueError`` naming the file unless it has exactly one
    ``begin`` … ``end`` block (checked before any output is written)."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"readme: {path} needs exactly one '{begin}' … '{end}' block")
    return text


def update_readme(readme, block: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the ``begin`` … ``end`` block of ``readme`` by ``block`` (which carries the
    markers itself), atomically; ``ValueError`` if the markers are missing or repeated."""
    text = check_readme_block(readme, begin, end)
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    provenance.atomic_write_text(Path(readme), head + block + tail)


def plot_claims(spec, results, jobs, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for c in spec.claims:
        r = results[c.name]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        if c.test == "trend":
            for a in c.arms:
                for j in (j for j in jobs if j.arm == a):
                    s, v = j.series(c.metric)
                    ax.plot(s, v, color=f"C{c.arms.index(a)}", alpha=0.5, lw=1)
                ax.plot([], [], color=f"C{c.arms.index(a)}", label=a)
            ax.set(xlabel="step", ylabel=str(c.metric))
        else:
            ax.bar(range(len(r.units)), list(r.units.values()), color="C0")
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xticks(range(len(r.units)), [f"init {k}" for k in r.units])
            ax.set(ylabel="effect per initialisation")
        ax.set_title(f"{c.name}: {r.label()}", fontsize=9)
        if c.test == "trend":
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / "plots" / f"{c.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def analyse(
    spec,
    out,
    *,
    readme=None,
    plots: bool = True,
    summary_keys: Sequence[str] = DEFAULT_SUMMARY,
) -> dict:
    """Verdicts for ``spec.claims`` on the run in ``out``; writes RESULTS.md, summary.json,
    ``plots/<claim>.png`` and (if ``readme``) the README's results block. Returns the summary."""
    out = Path(out)
    if readme is not None:
        preset = spec.config.get("preset") if isinstance(spec.config, dict) else None
        if preset == "smoke":
            raise ValueError(
                f"readme: the smoke preset only checks that the code runs; its numbers never go "
                f"into a README ({readme}). Analyse a real preset, or leave out --readme."
            )
        if not Path(readme).is_file():
            raise FileNotFoundError(f"readme: {readme} does not exist")
    if not (out / "study.json").is_file():
        raise FileNotFoundError(f"out: {out} holds no study (no study.json); run it first")
    jobs, study = load_jobs(out)
    if study.get("config_hash") != spec.config_hash():
        raise RuntimeError(
            f"{out} was run with config {study.get('config_hash')}, this spec is "
            f"{spec.config_hash()}: analyse the spec that ran"
        )
    if not jobs:
        raise ValueError(f"no finished job in {out}")
    if readme is not None and len(jobs) < spec.n_results:
        # an interim look is fine (RESULTS.md says "k of n runs finished"); a README verdict
        # chosen by when one looked is optional stopping
        raise ValueError(
            f"readme: only {len(jobs)} of {spec.n_results} runs of {out} have finished; "
            f"verdicts go into a README once the study has finished (analyse without --readme "
            f"for an interim look)"
        )
    results = evaluate_claims(spec.claims, jobs)
    claims_now = spec.claims_hash()
    note = ""
    if study.get("claims_hash") and study["claims_hash"] != claims_now:
        note = (
            f"**Note:** the claims were changed after the run started (registered "
            f"{study['claims_hash']}, analysed {claims_now})."
        )
    table = arm_table(jobs, [a.name for a in spec.arms], summary_keys)
    summary = {
        "study": spec.name,
        "provenance": {
            k: study.get(k)
            for k in ("git_sha", "git_dirty", "config_hash", "code_version", "claims_hash")
        },
        "claims_hash_analysed": claims_now,
        "jobs_finished": len(jobs),
        "jobs_expected": spec.n_results,
        "claims": {k: result_dict(r) for k, r in results.items()},
        "arms": table,
    }
    provenance.atomic_write_json(out / "summary.json", summary)
    provenance.atomic_write_text(
        out / "RESULTS.md", render_results(spec, results, study, table, len(jobs), note)
    )
    if plots:
        plot_claims(spec, results, jobs, out)
    if readme is not None:
        update_readme(readme, readme_block(spec, results, study, len(jobs)))
    return summary
