"""The benchmark scripts' ``--quick`` modes run end to end (seconds) and report sane numbers."""

import json
import math

from bench import gpu_check, train_step


def test_train_step_quick_runs():
    rows, matmul = train_step.main(["--quick", "--no-torch"])
    assert matmul > 0 and len(rows) == 1
    r = rows[0]
    assert r["jax_step_s"] > 0 and r["model_gflop_step"] > 0
    # the model FLOP count and XLA's own count agree within a factor of 2 on CPU
    assert 0.5 < r["xla_gflop_step"] / r["model_gflop_step"] < 2.0


def test_gpu_check_quick_sections_run_on_cpu(tmp_path):
    res = gpu_check.main(
        [
            "--quick",
            "--out",
            str(tmp_path),
            "--only",
            "numerics",
            "fused",
            "attention",
            "pallas_tune",
        ]  # fmt: skip
    )
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    for name in ("env", "matmul", "numerics", "fused"):
        assert "error" not in res[name], res[name]
        assert name in saved
    num = res["numerics"]
    assert num["logits_rel_err_f32_highest"] < 1e-5  # CPU: same device as the reference
    assert num["logits_rel_err_bf16"] < 5e-2 and num["decode_vs_forward_max_abs"] < 1e-4
    fused = res["fused"]
    assert fused["max_diff"] < 1e-4 and math.isfinite(fused["fused_s"])
    # every impl timed fwd+bwd against dense in the same run, the Pallas kernel in interpret mode
    assert fused["impl"] == "stream"  # CPU default; the others are timed beside it
    for impl in ("parallel", "pallas"):
        assert fused[f"{impl}_max_diff"] < 1e-4 and fused[f"{impl}_s"] > 0, impl
        assert 0 < fused[f"{impl}_mem_mib"] < fused["dense_mem_mib"], impl
    # forward-only rows: dense, block-parallel XLA and each Pallas tile
    fwd = fused["fwd_only"]
    assert set(fwd) == {"dense", "parallel", "pallas_default_64x1024x64"}, fwd
    for name in ("parallel", "pallas_default_64x1024x64"):
        assert "error" not in fwd[name], fwd[name]
        assert fwd[name]["max_diff"] < 1e-4 and fwd[name]["s"] > 0
    # fused attention vs the exact path on a left-padded batch; no cuDNN on a CPU (recorded)
    att = res["attention"]
    assert att["pad_rows"] == [0, 4, 8, 12]
    assert att["xla"]["logits_rel_err_valid"] < 1e-3 and att["xla"]["grad_rel_err"] < 1e-3
    assert att["xla"]["nonfinite_logits"] == att["xla"]["nonfinite_grads"] == 0
    assert 1e-4 < att["blocked_f32"]["logits_rel_err_valid"] < 5e-2  # bf16 vs f32 compute
    assert "error" in att["cudnn"]
    # the Pallas kernel per configuration (interpret mode here): its partials give XLA's lse
    tune = res["pallas_tune"]
    for name in ("64x512x64_wd_sd", "64x512x32_wd_sd"):
        assert tune[name]["max_diff_lse"] < 1e-5 and tune[name]["tflop_s"] > 0, tune[name]


def test_rollout_and_grpo_step_quick_run(capsys):
    from bench import grpo_step, rollout

    rows = rollout.main(["--quick", "--no-torch"])
    assert rows and rows[0]["jax_tok_s"] > 0
    rows = grpo_step.main(["--quick"])
    assert rows[0]["impl"] == "entropylab" and rows[0]["ours_speedup"] == 1.0
    assert rows[0]["step_s"] >= rows[0]["rollout_s"] > 0
    out = capsys.readouterr().out
    assert "| impl | step_s |" in out and "| batch |" in out
