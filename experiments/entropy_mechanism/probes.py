"""Claim-3 probes of arXiv:2505.22617 §4: the per-state lemma and counterfactual updates.

Two kinds of measurement, both from a *saved* parameter state, so nothing here changes a run:

**1. The exact per-state lemma** (paper Lemma 1 and Prop. 1 / Thm. 2). For a softmax policy
π = softmax(z) over the vocabulary at one state, a logit change Δz changes the entropy by

    H(softmax(z + Δz)) − H(softmax(z)) = −Cov_{a∼π}(log π(a), Δz(a)) + O(‖Δz‖²),

with Cov_{a∼π}(x, y) = Σ_a π(a) x(a) y(a) − (Σ_a π(a) x(a)) (Σ_a π(a) y(a)) over the *full*
vocabulary. With the logits themselves as parameters, natural PG gives Δz = η·A, so
ΔH ≈ −η·Cov(log π, A) (Prop. 1), and vanilla PG gives Δz = η·π⊙(A − E_π A), so
ΔH ≈ −η·Cov(log π, π·A) (Thm. 2; the constant shift E_π A does not change the covariance). On a
network the logits are not the parameters: one SGD step θ' = θ + η ∇_θ J, J = Σ_a π_θ(a) A(a),
moves the logits by Δz = η·J_z ∇_θ J + O(η²) (J_z the Jacobian of the state's logits), and the
lemma predicts ΔH ≈ −Cov(log π, η·J_z ∇_θ J). :func:`lemma_check` measures both sides on the
real network at one state, full vocabulary, for a decreasing sequence of step sizes, and passes
when the residual |ΔH − prediction| shrinks like η² (the prediction is right to first order;
a wrong first-order term leaves a residual ∝ η). It is exact mathematics: a failure is a bug
in the forward, the entropy or the covariance, never a finding. ``flip=True`` negates the
prediction (the test checks that this fails).

**2. Counterfactual updates** (:func:`counterfactual_step`). From the saved parameters, one
policy-gradient step on the same rollout batch with a modified token mask, token weights or
advantages, with SGD or Adam (from a fresh optimizer state), and the entropy change measured
in-sample (the same response tokens, teacher-forced) and on a fixed probe set of states. The
surrogate is on-policy PG, L = −Σ_t w_t A_t log π(y_t) / Σ_t m_t (ratio 1, no clip), the
gradient every clipped objective reduces to at its first update. Uses:

* token-estimator correlation — the per-token estimator of the paper,
  c_t = (log π(y_t) − mean log π)(A_t − mean A) over the batch's response tokens, against the
  observed per-state ΔH_t, under SGD and under Adam (whose first step is ≈ η·sign(g) and breaks
  the proportionality);
* sign flip — the same step with −A: the antisymmetric part (ΔH(A) − ΔH(−A))/2 is the
  first-order, A-driven change; the lemma says it has the sign of the predicted change;
* detach orderings — the step with the top-k, a random k or the bottom-k tokens by c_t
  removed from the gradient (weight 0; Clip-Cov's mechanism): the paper's account predicts
  ΔH(top detached) > ΔH(random) > ΔH(bottom detached).

Pure functions of ``(graphdef, rest, params)``; no trainer state is touched.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from entropylab.ops import logprobs_and_entropy


def _positions(mask):
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def response_forward(graphdef, rest, params, tokens, mask, prompt_width: int):
    """Teacher-forced ``(logp [B, N], entropy [B, N], logits [B, N, V])`` of the response part
    of ``tokens [B, P + N]`` (left-padded prompt of width P, then N response positions)."""
    model = nnx.merge(graphdef, params, rest)
    logits, _ = model(tokens, positions=_positions(mask), attention_mask=mask)
    z = logits[:, prompt_width - 1 : -1].astype(jnp.float32)
    lp, ent = logprobs_and_entropy(z, tokens[:, prompt_width:])
    return lp, ent, z


def softmax_entropy(z):
    """Full-vocabulary entropy of softmax(z), ``z [..., V]``."""
    logp = jax.nn.log_softmax(z, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def policy_cov(p, x, y):
    """Cov_{a∼p}(x(a), y(a)) over the last axis (full vocabulary)."""
    ex = jnp.sum(p * x, axis=-1)
    ey = jnp.sum(p * y, axis=-1)
    return jnp.sum(p * x * y, axis=-1) - ex * ey


def _log_softmax64(z):
    z = np.asarray(z, np.float64)
    m = np.max(z, axis=-1, keepdims=True)
    return z - m - np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True))


def _entropy64(z):
    """:func:`softmax_entropy` in float64 NumPy (the lemma check's arithmetic)."""
    lp = _log_softmax64(z)
    return -np.sum(np.exp(lp) * lp, axis=-1)


def _cov64(p, x, y):
    """:func:`policy_cov` in float64 NumPy."""
    return np.sum(p * x * y, axis=-1) - np.sum(p * x, axis=-1) * np.sum(p * y, axis=-1)


@dataclasses.dataclass(frozen=True)
class LemmaResult:
    mode: str  # natural | vanilla | network_sgd
    steps: tuple[float, ...]  # step sizes η (decreasing)
    observed: tuple[float, ...]  # H(after) − H(before)
    predicted: tuple[float, ...]  # −Cov(log π, Δz) (first order)
    rel_err: tuple[float, ...]  # |observed − predicted| / |predicted|
    residual: tuple[float, ...]  # |observed − predicted|
    order: float  # log-log slope of the residual over the two smallest steps (2 if right)
    passed: bool
    min_order: float


def lemma_check(
    state_logits,
    params,
    advantages,
    *,
    mode: str = "network_sgd",
    max_dz=(0.16, 0.08, 0.04, 0.02),
    min_order: float = 1.6,
    rel_tol: float = 0.01,
    flip: bool = False,
) -> LemmaResult:
    """Check ΔH ≈ −Cov_{a∼π}(log π, Δz) at one state on the real network (module docstring).

    Args:
      state_logits: ``params -> z [V]``, the network's logits at the state (full vocabulary).
      params: the saved parameters (an ``nnx.State`` / pytree).
      advantages: ``[V]`` an advantage per action.
      mode: ``natural`` (Δz = η·A), ``vanilla`` (Δz = η·π⊙(A − E_π A)) — logits updated as
        parameters of the softmax, the paper's statement — or ``network_sgd`` (one SGD step of
        the network parameters on J = Σ_a π(a) A(a); the prediction uses the linearised logit
        change η·J_z ∇_θ J).
      max_dz: the steps, given as the largest |Δz| over the vocabulary (η = max_dz / max|Δz₁|,
        Δz₁ the change per unit step), in decreasing order.
      min_order, rel_tol: pass when the residual |ΔH − prediction| shrinks like η^order
        between the two smallest steps with order ≥ ``min_order`` (2 when the first-order
        term is right, 1 when it is wrong), or the relative error at the smallest step is ≤
        ``rel_tol``, or every residual is < 1e-7 (the float32 network's floor). A wrong
        first-order term fails both (residual ∝ η, relative error O(1)).
        The order, not the relative error, is the criterion: near a uniform policy log π is
        almost constant, the first-order term vanishes and ΔH is all second order, so a
        relative error says nothing there while the order still does.
      flip: negate the prediction (a deliberately wrong lemma; must fail wherever the first-
        order term is not negligible).
    """
    if mode not in ("natural", "vanilla", "network_sgd"):
        raise ValueError(f"mode must be natural, vanilla or network_sgd, got {mode!r}")
    if not len(max_dz) >= 2 or any(not b < a for a, b in zip(max_dz, max_dz[1:])):
        raise ValueError(f"max_dz must be >= 2 decreasing step sizes, got {max_dz}")
    a = jnp.asarray(advantages, jnp.float32)
    z0 = state_logits(params)
    if a.shape != z0.shape:
        raise ValueError(f"advantages must have the logits' shape {z0.shape}, got {a.shape}")
    # The network and its SGD step run in float32 (the real thing); the check's own arithmetic
    # (entropies, covariance, the softmax-parameter steps) runs in float64 on the host
    # (:func:`lemma_measure`). In float32 the rounding of H is ~1e-7–1e-6 at a near-deterministic
    # state (H ≈ 0.01 nats, log π down to −15), as large as the second-order residual at the
    # smallest step, and two checks of the full study failed on that alone (README, "c3_lemma").
    if mode == "network_sgd":
        g, dz1 = _sgd_direction(state_logits, params, a)
        dz1 = np.asarray(dz1, np.float64)
    else:
        dz1 = softmax_direction(mode, z0, a)
    scale = float(np.max(np.abs(dz1)))
    if not scale > 0:
        raise ValueError("the update direction is zero (constant advantages?)")
    etas = [m / scale for m in max_dz]
    z1s = None
    if mode == "network_sgd":
        z1s = [state_logits(jax.tree.map(lambda t, gt, e=eta: t + e * gt, params, g))
               for eta in etas]  # fmt: skip
    obs, pred, err, res, order, passed = lemma_measure(
        z0, dz1, etas, z1s, flip=flip, min_order=min_order, rel_tol=rel_tol
    )
    return LemmaResult(
        mode, tuple(etas), tuple(obs), tuple(pred), tuple(err), tuple(res), order, passed,
        min_order,
    )  # fmt: skip


def softmax_direction(mode: str, z0, a):
    """Δz per unit step with the logits as the softmax's parameters (float64): ``natural``
    Δz = A, ``vanilla`` Δz = π⊙(A − E_π A)."""
    a = np.asarray(a, np.float64)
    if mode == "natural":
        return a
    p0 = np.exp(_log_softmax64(z0))
    return p0 * (a - np.sum(p0 * a))


def lemma_measure(z0, dz1, etas, z1s=None, *, flip=False, min_order=1.6, rel_tol=0.01):
    """The lemma check's arithmetic, float64 NumPy: for each step η the observed
    ΔH = H(z1) − H(z0) and the prediction −Cov_π(log π, η·Δz₁), with z1 = ``z1s[i]`` (a
    network's logits after its step) or, when ``z1s`` is None, z0 + η·Δz₁. Returns
    ``(observed, predicted, rel_err, residual, order, passed)`` with the pass rule of
    :func:`lemma_check`."""
    z0 = np.asarray(z0, np.float64)
    dz1 = np.asarray(dz1, np.float64)
    lp0 = _log_softmax64(z0)
    p0 = np.exp(lp0)
    h0 = _entropy64(z0)
    sign = -1.0 if flip else 1.0
    obs, pred, err, res = [], [], [], []
    for i, eta in enumerate(etas):
        z1 = z0 + eta * dz1 if z1s is None else np.asarray(z1s[i], np.float64)
        o = float(_entropy64(z1) - h0)
        q = sign * float(-_cov64(p0, lp0, eta * dz1))
        obs.append(o)
        pred.append(q)
        err.append(abs(o - q) / max(abs(q), 1e-30))
        res.append(abs(o - q))
    r = np.maximum(np.array(res), 1e-30)
    order = float(np.log(r[-2] / r[-1]) / np.log(etas[-2] / etas[-1]))
    passed = bool(order >= min_order or err[-1] <= rel_tol or np.all(r < 1e-7))
    return obs, pred, err, res, order, passed


@functools.partial(jax.jit, static_argnums=0)
def _sgd_direction(state_logits, params, a):
    """∇_θ J for J = Σ_a π_θ(a) A(a), and the linearised logit change J_z ∇_θ J."""

    def objective(th):
        return jnp.sum(jax.nn.softmax(state_logits(th)) * a)

    g = jax.grad(objective)(params)
    return g, jax.jvp(state_logits, (params,), (g,))[1]


def state_logits_fn(graphdef, rest, tokens, mask, row: int, pos: int):
    """``params -> z [V]``: logits predicting position ``pos`` of row ``row`` (full vocab)."""
    t = jnp.asarray(tokens)[row : row + 1]
    m = jnp.asarray(mask)[row : row + 1]

    def f(params):
        model = nnx.merge(graphdef, params, rest)
        logits, _ = model(t, positions=_positions(m), attention_mask=m)
        return logits[0, pos - 1].astype(jnp.float32)

    return jax.jit(f)


# -- counterfactual updates ---------------------------------------------------------------------


def token_cov_terms(logp, adv, mask):
    """Per-token centred covariance terms c_t = (log π_t − mean)(A_t − mean) (masked means)."""
    m = mask.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(m), 1.0)
    lp_c = logp - jnp.sum(logp * m) / n
    a_c = adv - jnp.sum(adv * m) / n
    return lp_c * a_c * m


def counterfactual_step(
    graphdef,
    rest,
    params,
    batch: dict,
    *,
    prompt_width: int,
    lr: float,
    optimizer: str = "sgd",
    weights=None,
    advantages=None,
    probe: dict | None = None,
) -> dict:
    """One on-policy PG step from ``params`` with a modified mask/weights/advantages.

    ``batch``: ``tokens``, ``mask`` ``[B, P + N]``, ``response_mask``, ``advantages`` ``[B, N]``.
    ``weights [B, N]`` multiplies each token's gradient (0 = detached); ``advantages``
    replaces the batch's. ``probe``: optional ``tokens``/``mask``/``response_mask`` of a fixed
    probe set. Returns ``dH_in`` (masked mean entropy on the batch's response tokens, after −
    before), ``dH_tok [B, N]`` (per state), ``dH_probe`` and ``pred_tok`` (the per-token
    estimator −lr·c_t, for correlations).
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    rmask = jnp.asarray(batch["response_mask"]).astype(jnp.float32)
    adv = jnp.asarray(batch["advantages"] if advantages is None else advantages, jnp.float32)
    w = rmask if weights is None else rmask * jnp.asarray(weights, jnp.float32)
    if probe is None:
        pt, pk, pm = batch["tokens"][:1], batch["mask"][:1], jnp.zeros_like(rmask[:1])
    else:
        pt, pk, pm = probe["tokens"], probe["mask"], probe["response_mask"]
    dh_tok, pred_tok, dh_probe = _cf_core(
        graphdef, rest, prompt_width, optimizer, params,
        jnp.asarray(batch["tokens"]), jnp.asarray(batch["mask"]), rmask, adv, w,
        jnp.asarray(lr, jnp.float32),
        jnp.asarray(pt), jnp.asarray(pk), jnp.asarray(pm).astype(jnp.float32),
    )  # fmt: skip
    n = max(float(jnp.sum(rmask)), 1.0)
    out = {
        "dH_in": float(jnp.sum(dh_tok)) / n,
        "dH_tok": np.asarray(dh_tok),
        "pred_tok": np.asarray(pred_tok),
        "mask": np.asarray(rmask),
    }
    if probe is not None:
        out["dH_probe"] = float(dh_probe)
    return out


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _cf_core(graphdef, rest, prompt_width, optimizer, params, tokens, mask, rmask, adv, w, lr,
             ptok, pmask, presp):  # fmt: skip
    n = jnp.maximum(jnp.sum(rmask), 1.0)

    def loss(th):
        lp, _, _ = response_forward(graphdef, rest, th, tokens, mask, prompt_width)
        return -jnp.sum(w * adv * lp) / n

    lp0, ent0, _ = response_forward(graphdef, rest, params, tokens, mask, prompt_width)
    g = jax.grad(loss)(params)
    if optimizer == "sgd":
        new = jax.tree.map(lambda t, gt: t - lr * gt, params, g)
    else:  # Adam's first step from a fresh state: m̂ = g, v̂ = g², update −lr·g/(|g| + eps)
        new = jax.tree.map(lambda t, gt: t - lr * gt / (jnp.abs(gt) + 1e-8), params, g)
    _, ent1, _ = response_forward(graphdef, rest, new, tokens, mask, prompt_width)
    _, pe0, _ = response_forward(graphdef, rest, params, ptok, pmask, prompt_width)
    _, pe1, _ = response_forward(graphdef, rest, new, ptok, pmask, prompt_width)
    dh_probe = jnp.sum((pe1 - pe0) * presp) / jnp.maximum(jnp.sum(presp), 1.0)
    return (ent1 - ent0) * rmask, -lr * token_cov_terms(lp0, adv, rmask), dh_probe


def masked_pearson(x, y, mask) -> float:
    m = np.asarray(mask) > 0
    a, b = np.asarray(x, np.float64)[m], np.asarray(y, np.float64)[m]
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def claim3_probes(
    graphdef,
    rest,
    params,
    batch,
    *,
    prompt_width: int,
    lr: float,
    adam_lr: float | None = None,
    probe=None,
    frac=0.2,
    seed=0,
) -> dict:
    """All claim-3 counterfactual measurements at one saved state, as ``probe3/*`` metrics.

    * ``probe3/r_sgd``, ``probe3/r_adam``: Pearson r over response tokens of the per-token
      estimator −lr·c_t vs the observed per-state ΔH_t (SGD step of ``lr``; Adam's first step
      of ``adam_lr``, default ``lr`` — Adam moves every parameter by ≈ adam_lr, so it needs a
      far smaller step than SGD);
    * ``probe3/flip_sgd``: sign(Σ pred)·(ΔH(A) − ΔH(−A))/2, in-sample, SGD (> 0: the A-driven
      part of the change goes the predicted way);
    * ``probe3/dH_top``, ``dH_random``, ``dH_bottom``: in-sample ΔH (SGD) with the top / a
      random / the bottom ``frac`` of tokens by c_t detached; ``probe3/top_minus_bottom`` and
      ``probe3/top_minus_random`` the orderings' differences (> 0 predicted);
    * ``probe3/dH_in``, ``probe3/dH_probe``: the unmodified step's change in-sample and on the
      probe set, and ``probe3/pred_dH`` its covariance prediction (mean of −lr·c_t).
    """
    kw = dict(prompt_width=prompt_width, lr=lr, probe=probe)
    base = counterfactual_step(graphdef, rest, params, batch, optimizer="sgd", **kw)
    adam = counterfactual_step(
        graphdef, rest, params, batch, optimizer="adam", **{**kw, "lr": adam_lr or lr}
    )
    neg = counterfactual_step(
        graphdef, rest, params, batch, optimizer="sgd",
        advantages=-np.asarray(batch["advantages"]), **kw,
    )  # fmt: skip
    mask = base["mask"]
    pred = base["pred_tok"]
    n = max(float(mask.sum()), 1.0)
    pred_mean = float(pred.sum() / n)
    out = {
        "probe3/dH_in": base["dH_in"],
        "probe3/pred_dH": pred_mean,
        "probe3/r_sgd": masked_pearson(pred, base["dH_tok"], mask),
        "probe3/r_adam": masked_pearson(pred, adam["dH_tok"], mask),
        "probe3/flip_sgd": float(np.sign(pred_mean) * (base["dH_in"] - neg["dH_in"]) / 2),
        "probe3/dH_in_adam": adam["dH_in"],
    }
    if "dH_probe" in base:
        out["probe3/dH_probe"] = base["dH_probe"]
        out["probe3/dH_probe_adam"] = adam["dH_probe"]
    # detach orderings by the token covariance term c_t = −pred/lr
    c = np.where(mask > 0, -pred, np.nan).ravel()
    idx = np.flatnonzero(np.isfinite(c))
    k = max(1, int(round(frac * idx.size)))
    order = idx[np.argsort(c[idx], kind="stable")]
    rng = np.random.default_rng(seed)
    sel = {"top": order[-k:], "bottom": order[:k], "random": rng.choice(idx, k, replace=False)}
    for name, ids in sel.items():
        wts = np.ones(mask.size, np.float32)
        wts[ids] = 0.0
        r = counterfactual_step(
            graphdef, rest, params, batch, optimizer="sgd", weights=wts.reshape(mask.shape), **kw
        )
        out[f"probe3/dH_{name}"] = r["dH_in"]
    out["probe3/top_minus_bottom"] = out["probe3/dH_top"] - out["probe3/dH_bottom"]
    out["probe3/top_minus_random"] = out["probe3/dH_top"] - out["probe3/dH_random"]
    return out
