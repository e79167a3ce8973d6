"""The pre-registered entropy-guided attention study (experiments/entropy_guided_attention).

* the nonlinear-operation count on a hand-counted configuration;
* the entropy summaries (normalised head entropy, buckets, the paper's relative buckets) and the
  loss-spike rule on hand-made inputs, with the expected numbers written here;
* planted-effect fixtures (per-seed results in the job's format, 6 seeds) through the full
  design's claims: planted effects are *reproduced*, a planted null is *not reproduced*, an idle
  regulariser *blocks* the regulariser's outcome claim;
* a real smoke run of the study (4 arms × 2 seeds, 3 steps) and its analysis: every claim gets a
  verdict, the README block is written, the arrays the notebook reads exist with their shapes,
  and the figure helpers draw from the run directory.
"""

import json
import math

import numpy as np
import pytest

from entropylab.models import TransformerConfig
from entropylab.study import JobData, evaluate_claims, load_jobs, update_readme
from entropylab.study.analyse import readme_block
from experiments.entropy_guided_attention import figures as F
from experiments.entropy_guided_attention import study as ST


def _cfg(**kw):
    return TransformerConfig(vocab_size=256, d_model=8, n_layers=2, n_heads=2, d_ff=8,
                             max_seq_len=16, **kw)  # fmt: skip


def test_nonlinear_ops_hand_counted():
    # L = 2, H = 2, T = 4, d_ff = 8: softmax 2·2·(1+2+3+4) = 40 exps; LayerNorm (2·2+1)·4 = 20;
    # GELU 2·4·8 = 64 → 124
    ops = ST.nonlinear_ops(_cfg(norm="layernorm", mlp="gelu"), 4)
    assert ops == {"softmax_exp": 40, "norm": 20, "ffn_act": 64, "softcap": 0, "total": 124}
    sm = ST.nonlinear_ops(_cfg(norm="none", mlp="identity", linear_norm="spectral"), 4)
    assert sm == {"softmax_exp": 40, "norm": 0, "ffn_act": 0, "softcap": 0, "total": 40}
    capped = ST.nonlinear_ops(_cfg(norm="rmsnorm", mlp="relu", attn_logit_softcap=5.0), 4)
    assert capped["softcap"] == 40 and capped["total"] == 40 + 20 + 64 + 40
    with pytest.raises(ValueError, match="seq_len"):
        ST.nonlinear_ops(_cfg(), 0)


def test_entropy_arrays_hand_checked():
    t = np.arange(4)
    uniform = np.log(t + 1.0)  # H_t = ln(t+1): normalised 1
    # layer 0: a uniform head and a one-hot head; layer 1: 0.6 and 0.25 of the maximum
    r = np.stack([np.stack([uniform, 0 * uniform]), np.stack([0.6 * uniform, 0.25 * uniform])])
    a = ST.entropy_arrays(r)
    np.testing.assert_allclose(a["head_entropy_norm"], [[1.0, 0.0], [0.6, 0.25]], atol=1e-12)
    # Eq. 7 head entropy: mean of (0, ln 2, ln 3, ln 4) = ln 24 / 4 = 0.7945134…
    assert a["head_entropy"][0, 0] == pytest.approx(0.7945134575869864, rel=1e-12)
    np.testing.assert_array_equal(a["buckets"], [[0.5, 0, 0, 0.5], [0, 0.5, 0.5, 0]])  # ¼ → 2nd
    # relative to the largest head (0.7945): 1, 0, 0.6, 0.25 → the same quarters here
    np.testing.assert_array_equal(a["buckets_rel"], a["buckets"])
    s = ST.summarise_entropy(a)  # L = 2: early = layer 0, deep = layer 1
    assert s["frac/overload_early"] == 0.5 and s["frac/collapse_deep"] == 0.0
    assert s["frac/extreme"] == pytest.approx(0.5)
    assert s["entropy_norm/deep"] == pytest.approx(0.425)
    nan = ST.bucket_fractions(np.array([[0.1, np.nan], [0.9, 0.95]]))
    assert np.isnan(nan[0]).all() and nan[1].tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="row_entropy"):
        ST.entropy_arrays(np.zeros((2, 3)))


def test_count_spikes():
    x = np.full(30, 2.0)
    x[24], x[27] = 2.41, 2.39  # > 1.2 × median 2.0 = 2.4 is a spike; 2.39 is not
    x[5] = 9.0  # before the 20-step window: never counted
    x[28] = np.nan  # non-finite: counted elsewhere, never a spike
    s = ST.count_spikes(x)
    assert s.tolist() == [0] * 24 + [1, 0, 0, 0, 0, 0]
    assert ST.count_spikes(x, window=3, ratio=1.5)[5] == 1


# -- planted effects through the claims -------------------------------------------------------


_BASE = {"eval/loss": 2.0, "frac/overload_early": 0.1, "frac/collapse_deep": 0.0,
         "frac/extreme": 0.1, "entropy_norm/early": 0.5, "entropy_norm/deep": 0.5,
         "instability/events": 0}  # fmt: skip
_PLANT = {
    "baseline": {},
    "lnfree": {"frac/overload_early": 0.6, "entropy_norm/early": 0.8, "instability/events": 3,
               "eval/loss": 2.3},
    "lnfree_relu": {"eval/loss": 2.2},
    "sm": {"frac/overload_early": 0.6, "frac/collapse_deep": 0.5, "entropy_norm/deep": 0.2,
           "instability/events": 5, "eval/loss": 2.5, "frac/extreme": 0.8},
    "sm_reg": {"frac/extreme": 0.3, "eval/loss": 2.4},
    "sm_wn": {"eval/loss": 2.45},
    "sm_sn": {"eval/loss": 2.45},
    "sm_scffn": {"eval/loss": 2.35},
    "sm_scffn_ereg": {"eval/loss": 2.25},
}  # fmt: skip


def _jobs(plant, frac_outside=0.3, n=6):
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(n):
        for arm, eff in plant.items():
            res = {k: v + 1e-3 * rng.normal() for k, v in {**_BASE, **eff}.items()}
            recs = [{"step": s, "attn_reg/frac_outside": frac_outside} for s in (1, 2)]
            jobs.append(JobData(arm=arm, init=i, seed=0, records=recs, result=res))
    return jobs


def test_planted_effects_through_the_full_claims():
    claims = ST.build_spec("full").claims
    assert {c.name for c in claims} == {c.name for c in ST.claims_for(ST.ALL_ARMS)}
    res = evaluate_claims(claims, _jobs(_PLANT))
    assert {k: r.verdict for k, r in res.items()} == {c.name: "reproduced" for c in claims}
    null = {**_PLANT, "sm_reg": {**_PLANT["sm"]}, "sm_wn": {**_PLANT["sm"]}}
    res = evaluate_claims(claims, _jobs(null))
    for name in ("c6_reg_narrows_gap", "c5_reg_reduces_extremes", "c8_wn_prevents_collapse"):
        assert res[name].verdict == "not reproduced", (name, res[name].reason)
    idle = evaluate_claims(claims, _jobs(_PLANT, frac_outside=0.0))
    assert idle["c5_reg_active"].verdict == "not reproduced"
    assert idle["c6_reg_narrows_gap"].verdict == "blocked"
    assert idle["c5_reg_reduces_extremes"].verdict == "reproduced"  # not gated on activity


def test_presets_and_arms():
    q = ST.build_spec("quick")
    assert len(q.inits) >= 5  # the fewest seeds at which the sign-flip test can reach α = 0.05
    assert {c.name for c in q.claims} >= {"c0_gap", "c2_collapse_deep", "c3_unstable",
                                          "c6_reg_narrows_gap"}  # fmt: skip
    assert {a.name for a in ST.build_spec("full").arms} == set(ST.ALL_ARMS)
    assert ST.arm_model("sm_scffn_ereg")["learnable_attn_temperature"] is True
    assert ST.make_arm("lnfree_relu_reg").extras["regularizer"] is True
    assert ST.reg_coeff(128) == pytest.approx(1e-5) and ST.reg_coeff(8) == pytest.approx(1.6e-4)
    with pytest.raises(ValueError, match="arm"):
        ST.arm_model("sm_xx")
    with pytest.raises(ValueError, match="preset"):
        ST.build_spec("huge")


# -- the real smoke run ----------------------------------------------------------------------------


def test_smoke_study_runs_and_analyses(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = tmp_path / "run"
    assert ST.cli(["--preset", "smoke", "run", "--out", str(out), "--quiet"]) == 0
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- study-results:begin -->\n<!-- study-results:end -->\n")
    with pytest.raises(SystemExit, match="2"):  # smoke numbers never go into a README
        ST.cli(["--preset", "smoke", "analyse", "--out", str(out), "--readme", str(readme)])
    assert "c0_gap" not in readme.read_text()
    assert ST.cli(["--preset", "smoke", "analyse", "--out", str(out), "--no-plots",
                   "--compress"]) == 0  # fmt: skip
    spec = ST.build_spec("smoke")
    summary = json.loads((out / "summary.json").read_text())
    smoke_arms = ("baseline", "lnfree", "sm", "sm_reg")
    assert set(summary["claims"]) == {c.name for c in spec.claims}
    assert {c.name for c in spec.claims} == {c.name for c in ST.claims_for(smoke_arms)}
    assert len(spec.claims) == 11
    verdicts = {k: v["verdict"] for k, v in summary["claims"].items()}
    assert set(verdicts.values()) <= {"inconclusive", "blocked"}  # n = 2 cannot decide
    assert verdicts["c6_reg_narrows_gap"] == "blocked"
    assert "eval/loss" in summary["arms"]["baseline"]
    # the README block analyse writes for a real preset: every claim with its verdict
    jobs, study = load_jobs(out)
    results = evaluate_claims(spec.claims, jobs)
    update_readme(readme, readme_block(spec, results, study, len(jobs)))
    text = readme.read_text()
    for c in spec.claims:
        assert f"| {c.name} |" in text and results[c.name].label() in text, c.name

    tables_readme = tmp_path / "T.md"
    tables_readme.write_text(f"a\n{ST.TABLES_BEGIN}\nold\n{ST.TABLES_END}\nb\n")
    ST.update_readme_tables(tables_readme, out)
    t = tables_readme.read_text()
    assert "old" not in t and "| sm_reg |" in t and t.startswith("a\n") and t.endswith("b\n")
    with pytest.raises(ValueError, match="readme"):
        ST.update_readme_tables(readme, out)

    d = out / "jobs/sm_reg/init1/seed0"
    recs = [json.loads(x) for x in __import__("gzip").open(d / "metrics.jsonl.gz", "rt")]
    assert [r["step"] for r in recs] == [1, 2, 3]
    for k in ("train/loss", "train/grad_norm", "instability/nonfinite", "instability/spike",
              "attn_reg/penalty", "attn_reg/frac_outside", "time/step_s"):  # fmt: skip
        assert k in recs[0], k
    assert "eval/loss" in recs[1] and len(recs[2]["attn/entropy_norm"]) == 2
    z = np.load(d / "attn_entropy.npz")
    assert z["row_entropy"].shape == (2, 2, 16) and z["buckets"].shape == (2, 4)
    assert z["thresholds"].shape == (2, 2)
    np.testing.assert_allclose(z["buckets"].sum(-1), 1.0)
    res = json.loads((d / "result.json").read_text())["result"]
    assert res["nonlinear_ops"]["norm"] == 0 and res["nonlinear_ops"]["ffn_act"] == 0
    assert math.isfinite(res["eval/loss"]) and res["instability/events"] >= 0
    base = json.loads((out / "jobs/baseline/init0/seed0/result.json").read_text())["result"]
    assert base["nonlinear_ops"]["total"] > res["nonlinear_ops"]["total"]

    tables = json.loads((out / "tables.json").read_text())
    assert set(tables) == {a.name for a in spec.arms}
    by_arm = np.load(out / "entropy_by_arm.npz")
    assert by_arm["sm/head_entropy_norm"].shape == (2, 2)
    paths = F.save_figures(out, tmp_path / "plots")
    assert [p.name for p in paths] == ["heatmaps.png", "buckets.png", "perplexity.png",
                                       "train_loss.png", "entropy_norm.png"]  # fmt: skip
    assert all(p.stat().st_size > 1000 for p in paths)
    for fig in (F.bucket_bars(out, ["sm", "baseline"], relative=True),
                F.entropy_vs_position(out, "sm"), F.heatmaps(out, normalised=False)):  # fmt: skip
        assert isinstance(fig, matplotlib.figure.Figure)
        plt.close(fig)
    with pytest.raises(ValueError, match="no finished job"):
        F.heatmaps(out, ["lnfree_reg"])
    with pytest.raises(FileNotFoundError):
        F.load_entropy(tmp_path)
