"""experiments/entropy_abf: the smoke study end to end, the evaluation's building blocks, and
planted effects through the realistic preset's claim set.

* a real smoke run (2 inits; rope / eabf / ssmax / pi zero-shot, abf / eabf fine-tuned):
  every claim gets a verdict, the README block is written with every claim, the smoke numbers
  are refused by ``analyse --readme``, the records hold every metric the claims and the
  notebook read, and the 1× metrics of a length-independent method equal the first L positions
  of its 8× forward;
* the single long forward equals separate forwards per length (causal + right padding);
* passkey rows, method configs (paper vs code Entropy-ABF), the pre-trained weight loader;
* planted effects (no JAX): a planted effect for every claim of ``quick`` is reproduced, a
  planted null is not.
"""

import gzip
import json
import math

import numpy as np
import pytest
from flax import nnx

from entropylab.models import Transformer
from entropylab.study import JobData, evaluate_claims
from entropylab.study.analyse import readme_block, update_readme
from experiments.entropy_abf import study as ST

P = ST.PRESETS["smoke"]


def _records(path):
    with gzip.open(path, "rt") if str(path).endswith(".gz") else open(path) as f:
        return [json.loads(x) for x in f]


def test_smoke_study_runs_and_analyses(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROPYLAB_WARMSTARTS", str(tmp_path / "ws"))
    out = tmp_path / "run"
    assert ST.cli(["--preset", "smoke", "run", "--out", str(out), "--quiet"]) == 0
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- study-results:begin -->\n<!-- study-results:end -->\n")
    with pytest.raises(SystemExit, match="2"):  # smoke numbers never go into a README
        ST.cli(["--preset", "smoke", "analyse", "--out", str(out), "--no-plots",
                "--readme", str(readme)])  # fmt: skip
    assert ST.cli(["--preset", "smoke", "analyse", "--out", str(out), "--compress"]) == 0
    spec = ST.build_spec("smoke")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["claims"]) == {c.name for c in spec.claims}
    verdicts = {k: v["verdict"] for k, v in summary["claims"].items()}
    assert set(verdicts.values()) <= {"inconclusive", "blocked"}  # n = 2 cannot decide
    assert verdicts["c_small_eabf_vs_abf"] == "blocked"  # its manipulation check undecided
    for c in spec.claims:  # every claim has a plot and a section in RESULTS.md
        assert (out / "plots" / f"{c.name}.png").stat().st_size > 1000
        assert f"### {c.name}" in (out / "RESULTS.md").read_text()
    # the README block, as analyse writes it for a real preset
    from entropylab.study import load_jobs

    jobs, study = load_jobs(out)
    update_readme(readme, readme_block(spec, evaluate_claims(spec.claims, jobs), study, len(jobs)))
    text = readme.read_text()
    assert all(f"| {c.name} |" in text for c in spec.claims) and "do not edit by hand" in text

    # records: fine-tuning steps then one evaluation record
    ft = _records(out / "jobs/eabf-small/init0/seed0/metrics.jsonl.gz")
    assert [r["step"] for r in ft] == [1, 2] and all("time/step_s" in r for r in ft)
    last = ft[-1]
    for k in ("ppl/x1", "ppl/x4/beyond", "ppl/x8/192-384", "passkey/x4/code", "passkey_exact/x8",
              "entropy/slope_early", "entropy/x8/late_last"):  # fmt: skip
        assert math.isfinite(last[k]), k
    lh = np.array(last["entropy/x8/lh_bins"])
    assert lh.shape == (P.n_layers, P.n_heads, len(last["entropy/x8/bins"]))
    unif = np.array(last["entropy/x8/uniform"])
    assert np.all(lh <= unif + 1e-6) and np.all(lh >= 0)  # 0 ≤ H ≤ ln n
    # 1× metrics = the first L positions of the 8× forward (length-independent method)
    assert last["ppl/x1"] == pytest.approx(last["ppl/x8/0-48"], rel=1e-12)
    pi = _records(out / "jobs/pi/init1/seed0/metrics.jsonl.gz")
    assert [r["step"] for r in pi] == [0] and "target8/ppl/x8" in pi[0]
    rope = json.loads((out / "jobs/rope/init0/seed0/result.json").read_text())["result"]
    assert len(rope["pretrain/loss"]) == P.pretrain_steps
    ST.cli(["--preset", "smoke", "tables", "--out", str(out)])
    tab = json.loads((out / "tables.json").read_text())
    assert tab["rope"]["ppl/x4"]["n"] == 2 and "target8/ppl/x8" in tab["pi"]


def _tiny_model(method="rope"):
    cfg = ST.method_config(P, method, P.factor)
    return Transformer(cfg, rngs=nnx.Rngs(3))


def test_one_long_forward_equals_one_forward_per_length():
    """Causal attention + right padding: the shared 8× forward gives the per-length numbers."""
    rng = np.random.default_rng(0)
    T = max(P.eval_factors) * P.context
    sets = {"lm": rng.integers(0, 256, (2, T + 1)).astype(np.int32)}
    sets["passkey"] = {k: ST.passkey_rows(P, k * P.context, sets["lm"][0].astype(np.uint8))
                       for k in P.eval_factors}  # fmt: skip
    model = _tiny_model("eabf")
    joint = ST.evaluate(P, model, sets)
    for k in P.eval_factors:  # the dynamic-NTK path: one forward per length
        sep = ST.evaluate(P, model, sets, factors=(k,))
        for key, v in sep.items():
            np.testing.assert_allclose(joint[key], v, rtol=1e-5, atol=1e-6, err_msg=key)


def test_dynamic_ntk_is_evaluated_per_length():
    assert not ST._length_free(ST.method_config(P, "dynamic", 4))
    assert all(ST._length_free(ST.method_config(P, m, 4)) for m in ST.METHODS if m != "dynamic")


def test_passkey_rows():
    held = np.frombuffer(b"def f(x):\n    return x + 1\n" * 40, np.uint8)
    rows, specs = ST.passkey_rows(P, 96, held)
    assert rows.shape == (2 * len(P.passkey_depths) * P.passkey_keys, 97)
    for row, sp in zip(rows, specs):
        text = bytes(row.astype(np.uint8).tolist())
        key = sp["key"].encode()
        assert len(key) == P.passkey_digits and text.endswith(b"\npass_key = " + key)
        assert text.count(b"\npass_key = " + key + b"\n") == 1  # the inserted needle
    assert {s["filler"] for s in specs} == {"synthetic", "code"}
    with pytest.raises(ValueError, match="too short"):
        ST.passkey_rows(P, 20, held)


def test_method_configs_paper_vs_code_eabf():
    from entropylab.models.rope import attention_logit_scale

    pos = np.arange(8 * P.context)[None]
    paper, code = ST.method_config(P, "eabf", 4), ST.method_config(P, "eabf_code", 4)
    assert attention_logit_scale(paper.rope, pos, 0) is None  # layers 0-1 unscaled
    assert attention_logit_scale(paper.rope, pos, 1) is None
    t_code0 = np.asarray(attention_logit_scale(code.rope, pos, 0))[0]
    t_paper2 = np.asarray(attention_logit_scale(paper.rope, pos, 2))[0]
    i = np.arange(1, 8 * P.context + 1)
    want = np.maximum(1.0, np.log(i) / np.log(P.context))  # t = max(1, ln i / ln L)
    np.testing.assert_allclose(t_code0, want, rtol=1e-6)
    np.testing.assert_allclose(t_paper2, want, rtol=1e-6)
    assert paper.rope.param_dict["abf_base"] == P.rope_base * 50
    ntk = ST.method_config(P, "ntk_by_parts", 4).rope.frequencies(64)[1]
    yarn = ST.method_config(P, "yarn", 4).rope.frequencies(64)[1]
    assert ntk == 1.0 and yarn == pytest.approx(0.1 * math.log(4) + 1)
    with pytest.raises(ValueError, match="method"):
        ST.method_config(P, "longrope", 4)


def test_rope_base_keeps_llama2_wavelength_ratio():
    for L, d in ((128, 16), (4096, 128)):
        b = ST._rope_base(L, d)
        lam = 2 * math.pi * b ** ((d - 2) / d)
        assert lam / L == pytest.approx(2 * math.pi * 10_000 ** (126 / 128) / 4096, rel=0.01)


def test_load_into_checks_names_and_shapes():
    flat = ST._flat(Transformer(ST.pretrain_config(P), rngs=nnx.Rngs(0)))
    m = ST.load_into(_tiny_model("ssmax"), flat)  # SSMax's s keeps its init 1 / ln L
    s = np.asarray(m.blocks[2].attn.ssmax_s[...])
    np.testing.assert_allclose(s, 1 / math.log(P.context), rtol=1e-6)
    np.testing.assert_array_equal(ST._flat(m)["embed/embedding"], flat["embed/embedding"])
    bad = dict(flat)
    bad.pop("embed/embedding")
    with pytest.raises(ValueError, match="embed/embedding"):
        ST.load_into(_tiny_model(), bad)
    bad = {**flat, "embed/embedding": flat["embed/embedding"][:, :3]}
    with pytest.raises(ValueError, match="shape"):
        ST.load_into(_tiny_model(), bad)


# -- planted effects through the realistic claim set ---------------------------------------------


def _planted_jobs(effect: bool, n_inits=5):
    Q = ST.PRESETS["quick"]
    rng = np.random.default_rng(1)
    jobs = []
    for init in range(n_inits):
        base = 3.0 + 0.05 * rng.normal()
        for arm in ST.arm_names(Q):
            method, size = ST.parse_arm(arm)
            good = effect and method == "eabf"
            ft = 0.0 if size is None else -0.3
            ppl4 = math.exp(base + ft - (0.3 if good else 0.0) + 0.01 * rng.normal())
            rec = {
                "step": 0,
                "ppl/x1": math.exp(base),
                "ppl/x4": ppl4,
                "ppl/x4/beyond": math.exp(base + (1.0 if effect else -0.5) + 0.01 * rng.normal()),
                "ppl/x8": ppl4 * (1.0 if good else 1.5),
                "passkey/x4": (0.5 if good else 0.2) + 0.01 * rng.normal(),
                "entropy/slope_early": (0.9 if effect else 0.0) + 0.01 * rng.normal(),
                "entropy/slope_late": 0.1 + 0.01 * rng.normal(),
                "entropy/x1/late_last": 2.0,
                "entropy/x4/late_last": (2.5 if effect else 1.5) + 0.01 * rng.normal(),
            }
            jobs.append(JobData(arm=arm, init=init, seed=0, records=[rec]))
    return jobs


def test_planted_effects_are_reproduced_and_a_planted_null_is_not():
    spec = ST.build_spec("quick")
    names = {c.name for c in spec.claims}
    assert {"c_small_eabf_vs_pi", "c_large_eabf_vs_abf", "c_robust_eabf_vs_pi",
            "m_ft_large_moves_eabf", "c_passkey_eabf_vs_abf"} <= names  # fmt: skip
    res = evaluate_claims(spec.claims, _planted_jobs(True))
    assert {k: r.verdict for k, r in res.items()} == dict.fromkeys(names, "reproduced")
    null = evaluate_claims(spec.claims, _planted_jobs(False))
    assert null["a_early_entropy_grows"].verdict == "not reproduced"
    assert null["b_rope_ppl_degrades"].verdict == "not reproduced"
    assert null["c_robust_eabf_vs_abf"].verdict == "not reproduced"
    assert null["c_small_eabf_vs_pi"].verdict != "reproduced"
