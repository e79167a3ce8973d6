"""entropylab.integrations.tunix against tunix itself (``make test-tunix``, in the tunix venv).

* the aggregation table: each mapped pair equal to tunix's ``common.aggregate_loss`` on random
  per-token losses with empty rows; the trap pair (``sequence-mean-token-sum-norm`` vs our
  same-looking name) differs; the inexact mode raises;
* ``ppo_clip_loss`` registered with ``use_tunix_clip/use_tunix_agg`` equals tunix's built-in
  ``grpo`` loss (loss, aux and gradients w.r.t. every model parameter) on a tiny Llama3, across
  aggregation modes, clip-higher, dual clip, off-policy ``old_per_token_logps``, truncated-IS
  weights and a KL term;
* the README "Use with tunix" block runs as written, then a tunix ``GRPOLearner`` trains a few
  steps with each loss it registers (ppo_clip/grpo, forking, Clip-Cov, KL-Cov);
* forking keeps its own dual clip (10) unless ``use_tunix_clip``; stateful objectives and
  inputs tunix lacks are refused at ``register`` time.
"""

import dataclasses
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tunix  # noqa: F401  (an import error here is a failure: this file needs tunix)
from flax import nnx
from tunix.models.llama3 import model as llama3
from tunix.rl import algo_core, common, function_registry
from tunix.rl import rl_cluster as rl_cluster_lib
from tunix.rl.grpo import grpo_learner
from tunix.rl.rollout import base_rollout

from entropylab.integrations import tunix as el_tunix
from entropylab.losses import ObjectiveConfig, forking_token_loss, ppo_clip_loss
from entropylab.ops import aggregate

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAD, EOS, V = 0, 2, 32


def _model(seed=0):
    cfg = llama3.ModelConfig(
        num_layers=1,
        vocab_size=V,
        embed_dim=32,
        hidden_dim=64,
        num_heads=2,
        head_dim=16,
        num_kv_heads=2,
        rope_theta=10_000,
        norm_eps=1e-5,
    )
    return llama3.Llama3(cfg, rngs=nnx.Rngs(seed))


def test_aggregation_table_matches_tunix():
    rng = np.random.default_rng(0)
    loss = jnp.asarray(rng.normal(size=(6, 7)), jnp.float32)
    mask = jnp.asarray(rng.random((6, 7)) < 0.6, jnp.float32).at[2].set(0.0).at[4].set(0.0)
    errs = {}
    for tmode, ours in el_tunix.TUNIX_AGG_MODES.items():
        if ours is None:
            with pytest.raises(ValueError, match="no exact"):
                el_tunix.tunix_agg_mode(tmode)
            continue
        ref = common.aggregate_loss(loss, mask, tmode)
        errs[tmode] = float(jnp.abs(aggregate(loss, mask, ours) - ref))
    assert max(errs.values()) < 1e-6, errs
    print("aggregation |ours - tunix|:", errs)
    # the trap: the same-looking name is a different number (÷ B·T, not ÷ non-empty rows)
    trap = common.aggregate_loss(loss, mask, "sequence-mean-token-sum-norm")
    assert abs(float(aggregate(loss, mask, "seq-mean-token-sum-norm") - trap)) > 1e-2
    with pytest.raises(ValueError, match="unknown tunix"):
        el_tunix.tunix_agg_mode("seq-mean-token-mean")


def _example(rng, *, off_policy, weights, ref):
    b, p, t = 4, 3, 5
    prompt = jnp.asarray(rng.integers(3, V, (b, p)), jnp.int32)
    comp = jnp.asarray(rng.integers(3, V, (b, t)), jnp.int32)
    lens = np.array([5, 3, 0, 4])  # an empty row
    cmask = jnp.asarray(np.arange(t)[None] < lens[:, None], jnp.int32)
    comp = jnp.where(cmask > 0, comp, PAD)
    near = lambda: jnp.asarray(-3.4 + 0.6 * rng.normal(size=(b, t)), jnp.float32)  # noqa: E731
    return common.TrainExample(
        prompt_ids=prompt,
        prompt_mask=jnp.ones_like(prompt),
        completion_ids=comp,
        completion_mask=cmask,
        advantages=jnp.asarray(rng.normal(size=(b,)), jnp.float32),
        ref_per_token_logps=near() if ref else None,
        old_per_token_logps=near() if off_policy else None,
        sampler_is_weights=jnp.asarray(rng.uniform(0.5, 1.5, (b, t)), jnp.float32)
        if weights
        else None,
    )


CASES = [  # (loss_agg_mode, epsilon_high, epsilon_c, off_policy, weights, beta)
    ("sequence-mean-token-mean", None, None, True, False, 0.0),
    ("token-mean", 0.28, None, True, False, 0.0),
    ("seq-mean-token-sum", 0.28, 3.0, True, True, 0.0),
    ("sequence-mean-token-sum-norm", None, 3.0, True, False, 0.04),
    ("token-mean", None, None, False, False, 0.0),
    ("sequence-mean-token-mean", 0.28, 3.0, True, True, 0.04),
]


def test_ppo_clip_equals_tunix_grpo_loss():
    el_tunix.register("el_test_grpo", ppo_clip_loss, use_tunix_clip=True, use_tunix_agg=True)
    ours_fn = function_registry.get_policy_loss_fn("el_test_grpo")
    model = _model()
    rng = np.random.default_rng(1)
    worst = {"loss": 0.0, "grad": 0.0, "aux": 0.0}
    for agg, eps_high, eps_c, off_policy, weights, beta in CASES:
        cfg = grpo_learner.GRPOConfig(num_generations=2, beta=beta, loss_agg_mode=agg)
        cfg.temperature = 0.9
        if eps_high is not None:
            cfg.epsilon_high = eps_high
        if eps_c is not None:
            cfg.epsilon_c = eps_c
        ex = _example(rng, off_policy=off_policy, weights=weights, ref=beta > 0)
        out = {}
        for key, fn in (("tunix", algo_core.grpo_loss_fn), ("ours", ours_fn)):
            f = lambda m, fn=fn, ex=ex, cfg=cfg: fn(m, ex, cfg, PAD, EOS)  # noqa: E731
            (loss, aux), grads = nnx.value_and_grad(f, has_aux=True)(model)
            out[key] = (loss, aux, jax.tree.leaves(nnx.state(grads)))
        (lt, at, gt), (lo, ao, go) = out["tunix"], out["ours"]
        assert np.isfinite(float(lt)) and float(lt) != 0.0
        worst["loss"] = max(worst["loss"], abs(float(lt - lo)))
        scale = max(float(jnp.max(jnp.abs(g))) for g in gt)
        worst["grad"] = max(
            worst["grad"], max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(gt, go)) / scale
        )
        for k in ("pg_loss", "pg_clipfrac", "ppo_kl", "pg_clipfrac_lower", "kl", "kl_loss"):
            worst["aux"] = max(worst["aux"], abs(float(at[k]) - float(ao[k])))
        assert float(at["entropy"]) == pytest.approx(float(ao["entropy"]), rel=1e-5, abs=1e-6)
    print("ppo_clip_loss vs tunix grpo over", len(CASES), "cases:", worst)
    assert worst["loss"] < 1e-6 and worst["grad"] < 1e-5 and worst["aux"] < 1e-6, worst


def test_forking_keeps_its_dual_clip_unless_asked():
    # tunix's GRPOConfig has no dual clip (epsilon_c absent): with use_tunix_clip it is off
    rng = np.random.default_rng(2)
    ex = _example(rng, off_policy=True, weights=False, ref=False)
    ex = ex.replace(advantages=-jnp.abs(ex.advantages) - 0.5)  # negative: dual clip can act
    ex = ex.replace(old_per_token_logps=ex.old_per_token_logps - 4.0)  # ratios >> 10
    cfg = grpo_learner.GRPOConfig(num_generations=2, beta=0.0)
    cfg.temperature = 1.0
    model = _model()
    own = el_tunix.register("el_test_fork", forking_token_loss, top_rho=1.0)
    tun = el_tunix.register("el_test_fork_t", forking_token_loss, top_rho=1.0, use_tunix_clip=True)
    _, a_own = own(model, ex, cfg, PAD, EOS)
    _, a_tun = tun(model, ex, cfg, PAD, EOS)
    assert float(a_own["pg_clipfrac_lower"]) > 0.5  # dual clip 10 active
    assert float(a_tun["pg_clipfrac_lower"]) == 0.0
    with pytest.raises(ValueError, match="use_tunix_clip"):
        el_tunix.register("x", forking_token_loss, clip_ratio_c=3.0, use_tunix_clip=True)
    gspo = dataclasses.replace(cfg, loss_algo="gspo-token")
    gspo.temperature = 1.0
    with pytest.raises(ValueError, match="loss_algo"):
        own(model, ex, gspo, PAD, EOS)


def test_register_refuses_what_cannot_carry_over():
    adaptive = ObjectiveConfig(
        policy_loss="ppo_clip",
        regularizers=(("adaptive_entropy", {"target": 0.5}),),
    )
    with pytest.raises(ValueError, match="state"):
        el_tunix.register("x", adaptive)
    with pytest.raises(ValueError, match="ref_logp"):
        el_tunix.register("x", ObjectiveConfig(policy_loss="ppo_clip", kl_coef=0.1))
    with pytest.raises(TypeError, match="not a registered"):
        el_tunix.register("x", lambda *a: a)
    with pytest.raises(ValueError):
        el_tunix.register("x", ppo_clip_loss, no_such_hparam=1.0)


# ------------------------------------------------------------------ GRPO runs (README block)
def _readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    body = text.split("## Use with tunix", 1)[1]
    body = re.split(r"^## ", body, maxsplit=1, flags=re.M)[0]
    (code,) = re.findall(r"^```python\n(.*?)^```", body, flags=re.S | re.M)
    return code


class _CharVocab:
    """Character tokenizer with the SentencePiece-style methods tunix calls."""

    ALPHABET = "0123456789+= "

    def __init__(self):
        self.to_id = {c: i + 3 for i, c in enumerate(self.ALPHABET)}
        self.to_ch = {i: c for c, i in self.to_id.items()}

    def pad_id(self):
        return PAD

    def bos_id(self):
        return 1

    def eos_id(self):
        return EOS

    def GetPieceSize(self):  # noqa: N802
        return V

    def DecodeIds(self, ids):  # noqa: N802
        return "".join(self.to_ch.get(int(i), "") for i in ids)

    def EncodeAsIds(self, text, **kw):  # noqa: N802
        return [self.to_id[c] for c in text if c in self.to_id]


def _grpo_run(algo_config, steps=2):
    import sentencepiece as spm

    class Vocab(_CharVocab, spm.SentencePieceProcessor):
        def __init__(self):
            spm.SentencePieceProcessor.__init__(self)
            _CharVocab.__init__(self)

    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    with jax.set_mesh(mesh):
        model = _model(seed=0)
    before = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
    cluster = rl_cluster_lib.RLCluster(
        actor=model,
        reference=model,
        tokenizer=Vocab(),
        cluster_config=rl_cluster_lib.ClusterConfig(
            role_to_mesh={r: mesh for r in rl_cluster_lib.Role},
            rollout_engine="vanilla",
            offload_to_cpu=False,
            training_config=rl_cluster_lib.RLTrainingConfig(
                actor_optimizer=optax.adamw(1e-2),
                eval_every_n_steps=10**6,
                max_steps=steps,
            ),
            rollout_config=base_rollout.RolloutConfig(
                max_tokens_to_generate=4,
                max_prompt_length=6,
                kv_cache_size=12,
                temperature=1.0,
                top_p=1.0,
                top_k=None,
            ),
        ),
    )

    def reward(prompts, completions, **kw):  # a reward that varies within a group
        return [float(str(c).count("1") + 0.1 * len(str(c))) for c in completions]

    learner = grpo_learner.GRPOLearner(
        rl_cluster=cluster, algo_config=algo_config, reward_fns=reward
    )
    prompts = np.array(["12+3=", "45+6=", "7+89=", "3+21="])
    batches = [{"prompts": prompts[i : i + 2]} for i in range(0, 2 * (steps + 1), 2)]
    learner.train(batches)
    after = [np.asarray(x) for x in jax.tree.leaves(nnx.state(cluster.actor_trainer.model))]
    return int(cluster.actor_trainer.train_steps), before, after


def test_readme_block_then_grpo_steps_per_registered_loss():
    ns: dict = {"__name__": "__readme__"}
    exec(compile(_readme_block(), "README.md:use-with-tunix", "exec"), ns)
    base = ns["grpo_config"]
    assert base.policy_loss_fn == "el_forking"
    for name in ("el_grpo", "el_forking", "el_clip_cov", "el_kl_cov"):
        cfg = dataclasses.replace(base, policy_loss_fn=name)
        steps, before, after = _grpo_run(cfg)
        assert steps == 2, (name, steps)
        assert all(np.isfinite(a).all() for a in after), name
        moved = max(float(np.max(np.abs(a - b))) for a, b in zip(after, before))
        assert moved > 0, name  # the policy was updated through our loss
        print(f"{name}: {steps} GRPO steps, max |dparam| {moved:.3g}")
