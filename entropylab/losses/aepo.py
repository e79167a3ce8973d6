"""AEPO (Arbitrary Entropy Policy Optimization): REINFORCE on temperature-adjusted samples.

AEPO moves the policy entropy toward a target H* without an entropy term in the loss. Each step
it draws extra samples from the temperature-scaled policy π_θ^T, with T chosen by the entropy
switch, and adds a REINFORCE term on them to the GRPO/PPO objective::

    ∇J_AEPO = ∇J_GRPO + α · E_{q, o ∼ π_θ^T}[ ∇ log π_θ(o|q) · R(q, o) ]

    T = T_high  if  H(π_old) < H*   else  T_low            (the target-entropy switch)

REINFORCE on samples of the hotter (T_high > 1) distribution pulls π toward π^T and raises
entropy; on the colder one it lowers entropy.

Paper vs released code (``597358816/AEPO``, EasyR1 fork):

* The code compares ``H ≤ H*`` (the paper writes ``<``); ``inclusive=True`` gives the code's
  tie rule.
* The code has no explicit α: it keeps the samples of the temperature batch whose GRPO advantage
  is > 0.05, sets their advantage to +1, and swaps the first ``S`` of them into the PPO-clip
  batch (``S = min(60, |Pos|)`` if ``H ≤ H*`` else half that). α is then the token share of the
  swapped samples (≈ 2.3% with the defaults). :func:`aepo_select_reinforce_samples` is that
  selection rule; ``pooled=True`` in :func:`aepo_loss` builds the code's training batch
  ``Pos[:S] ++ B[S:]`` (it drops the first ``S`` GRPO rows itself) and aggregates it as one
  batch; ``reinforce_estimator="ppo_clip"`` uses the code's PPO-clip surrogate (ratio to the
  recomputed old log-probs) instead of the paper's plain REINFORCE ``−R·log π``.
* The entropy signal in the code is ``−mean log π(sampled token)`` of the previous update's
  batch (:func:`aepo_entropy_estimate`), not the full-vocabulary entropy.

References: arXiv:2510.08141; released code ``597358816/AEPO`` @ b353a05 (2026-01-19):
``verl/trainer/ray_trainer.py`` (the ``AEPO`` branch of ``fit``, ``_select_by_advantage``),
``verl/trainer/core_algos.py`` (``compute_policy_loss``), ``verl/workers/actor/dp_actor.py``
(the ``actor/entropy_loss`` metric), ``examples/qwen-math-7b-AEPO.sh``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropylab.losses.policy import (
    _nan_probe,
    check_loss_agg_mode,
    clipped_surrogate,
    log_ratio,
    policy_batch,
    ppo_clip_per_token,
    reduce_policy_loss,
)
from entropylab.losses.registry import register_policy_loss, register_regularizer
from entropylab.ops.masked import aggregate, masked_count, masked_mean

__all__ = [
    "aepo_entropy_estimate",
    "aepo_loss",
    "aepo_reinforce_loss",
    "aepo_select_reinforce_samples",
    "aepo_temperature",
]

_ESTIMATORS = ("reinforce", "ppo_clip")


def aepo_temperature(
    entropy,
    target_entropy,
    *,
    temperature_high: float = 1.2,
    temperature_low: float = 0.8,
    inclusive: bool = False,
) -> jax.Array:
    """Target-entropy temperature switch: ``T_high if H < H* else T_low``.

    ``inclusive=True`` uses ``H ≤ H*`` (the released code's comparison). Pure and jittable;
    ``entropy`` may be a scalar or any array (elementwise).

    Defaults: ``T_high = 1.2``, ``T_low = 0.8`` (code); the paper's best target is H* = 0.75, the
    script's default 0.5.

    References: arXiv:2510.08141 (Eq. for T); checked against the ``AEPO`` branch of ``fit`` in
    ``597358816/AEPO`` @ b353a05 ``verl/trainer/ray_trainer.py``.
    """
    if not temperature_high > 0 or not temperature_low > 0:
        raise ValueError(
            "temperature_high and temperature_low must be > 0, got "
            f"{temperature_high}, {temperature_low}"
        )
    h = jnp.asarray(entropy)
    below = h <= target_entropy if inclusive else h < target_entropy
    return jnp.where(below, temperature_high, temperature_low).astype(
        jnp.result_type(h.dtype, jnp.float32)
    )


def aepo_entropy_estimate(logp, mask, *, axis_name=None) -> jax.Array:
    """Monte-Carlo entropy ``−mean_t log π(o_t)`` over valid tokens (the code's switch signal).

    Shapes: ``logp``, ``mask`` ``[B, T]`` → scalar (global over ``axis_name``); 0 for an empty
    mask. Stop-gradient: it is a control signal, not a loss.

    Released code: ``actor/entropy_loss`` of ``597358816/AEPO`` @ b353a05
    ``verl/workers/actor/dp_actor.py`` (read from the previous update's metrics).
    """
    return jax.lax.stop_gradient(-masked_mean(logp, mask, axis_name=axis_name))


def aepo_select_reinforce_samples(
    advantages,
    entropy,
    target_entropy,
    *,
    threshold: float = 0.05,
    max_samples: int = 60,
    inclusive: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """The release's choice of REINFORCE samples from the temperature batch.

    ``Pos = {i : A_i > threshold}`` (correct answers in mixed groups, ``A_i`` the GRPO advantage
    of temperature sample i); ``S = min(max_samples, |Pos|)`` when ``H ≤ H*`` (raising entropy)
    else ``min(max_samples, |Pos|) // 2``; the first ``S`` members of ``Pos`` (batch order) are
    kept and get advantage +1.

    Args:
      advantages: ``[B]`` sequence advantages of the temperature samples.
      entropy: scalar current entropy estimate. target_entropy: H*.
    Returns:
      ``(keep [B] bool, S int32 scalar)``. Operates on the batch it is given (call it on the
      gathered rollout batch; the order "first S" is a property of that batch).

    Checked against ``_select_by_advantage(batch_bak, threshold=0.05, absolute=False)`` and the
    ``sample_num`` rule in ``597358816/AEPO`` @ b353a05 ``verl/trainer/ray_trainer.py``.
    """
    if max_samples < 0:
        raise ValueError(f"max_samples must be >= 0, got {max_samples}")
    adv = jnp.asarray(advantages)
    if adv.ndim != 1:
        raise ValueError(f"advantages must be [B] sequence advantages, got shape {adv.shape}")
    pos = adv > threshold
    n_pos = jnp.sum(pos.astype(jnp.int32))
    s_all = jnp.minimum(max_samples, n_pos)
    below = entropy <= target_entropy if inclusive else entropy < target_entropy
    s = jnp.where(below, s_all, s_all // 2).astype(jnp.int32)
    rank = jnp.cumsum(pos.astype(jnp.int32))  # 1-based rank among positives
    keep = pos & (rank <= s)
    return keep, s


def aepo_reinforce_loss(
    logp,
    rewards,
    mask,
    *,
    old_logp=None,
    estimator: str = "reinforce",
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """REINFORCE regulariser on temperature samples: ``L_RF = agg(−R · log π_θ(o_t))``.

    ``estimator="reinforce"`` (paper): gradient ``−R ∇log π``. ``estimator="ppo_clip"`` (code):
    the PPO-clip surrogate with advantage R against ``old_logp`` (recomputed at the training
    temperature, so the ratio starts at 1 and the first gradient is the same).

    Shapes: ``logp``, ``mask`` ``[B, T]``; ``rewards`` ``[B]`` (broadcast over tokens) or
    ``[B, T]``. Returns ``(loss, metrics)``.

    Released code: the REINFORCE samples go through ``compute_policy_loss`` of
    ``597358816/AEPO`` @ b353a05 ``verl/trainer/core_algos.py`` with advantage +1
    (``estimator="ppo_clip"``); the plain ``"reinforce"`` form is the paper's (no code).
    """
    if estimator not in _ESTIMATORS:
        raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
    check_loss_agg_mode(loss_agg_mode)
    logp = jnp.asarray(logp)
    r = jnp.asarray(rewards, dtype=logp.dtype)
    if r.ndim == 1:
        r = r[:, None]
    r = jnp.broadcast_to(r, logp.shape)
    if estimator == "reinforce":
        safe_logp = jnp.where(jnp.asarray(mask) != 0, logp, 0.0)
        per_tok = -r * safe_logp
    else:
        if old_logp is None:
            raise ValueError("estimator='ppo_clip' needs old_logp")
        per_tok, _ = ppo_clip_per_token(
            logp, old_logp, r, clip_ratio_low=clip_ratio_low, clip_ratio_high=clip_ratio_high
        )
    loss = aggregate(
        per_tok, mask, loss_agg_mode, loss_scale_factor=loss_scale_factor, axis_name=axis_name
    )
    metrics = {
        "aepo/reinforce_loss": loss,
        "aepo/reinforce_tokens": masked_count(mask, axis_name=axis_name),
    }
    return loss, metrics


@register_policy_loss("aepo", extras=("temp_logp", "temp_rewards", "temp_mask", "temp_old_logp"))
def aepo_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    temp_logp,
    temp_rewards,
    temp_mask,
    temp_old_logp=None,
    reinforce_coef: float = 1.0,
    pooled: bool = False,
    replace_grpo_rows: bool = True,
    reinforce_estimator: str = "reinforce",
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float | None = None,
    clip_ratio_c: float | None = 3.0,
    log_ratio_clamp: float = 20.0,
    token_weights=None,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """AEPO loss: PPO-clip on the GRPO batch plus α × REINFORCE on the temperature samples.

    ``pooled=False`` (paper)::

        L = agg(ℓ_PPO(logp, old_logp, A)) + α · agg(−R · log π_θ^{temp})

    ``pooled=True`` (code): the release trains on ``Pos[:S] ++ B[S:]``: the S REINFORCE samples
    *replace* the first S rows of the GRPO batch. Here S is the number of rows of the
    temperature batch with at least one valid token in ``temp_mask`` (global with
    ``axis_name``), and with ``replace_grpo_rows=True`` (default) the first S rows of the GRPO
    batch (global order: device index, then row) are dropped from the loss. The per-token PPO
    losses of the remaining rows and the REINFORCE losses (weight α) are then aggregated as one
    batch, so the REINFORCE share is the token share of the temperature samples.

    To reproduce the release exactly: pass as ``temp_mask`` only the kept samples
    (``temp_mask & keep[:, None]`` with ``keep`` from :func:`aepo_select_reinforce_samples`),
    ``temp_rewards = 1``, ``reinforce_estimator="ppo_clip"`` with ``temp_old_logp``,
    ``reinforce_coef=1`` and ``loss_agg_mode="token-mean"``; the GRPO batch in rollout order.
    Then the loss equals the release's PPO-clip token mean over the mixed batch
    (``597358816/AEPO`` @ b353a05: ``DataProto.concat([entropy_controller[:sample_num],
    batch[sample_num:]])`` in ``ray_trainer.py``, ``compute_policy_loss`` in ``core_algos.py``).
    ``replace_grpo_rows=False`` adds the samples instead of swapping them.

    Shapes: ``logp, old_logp, advantages, mask`` ``[B, T]``; ``temp_logp``, ``temp_mask``
    ``[B', T]``; ``temp_rewards`` ``[B']`` or ``[B', T]`` (e.g. +1 on the samples kept by
    :func:`aepo_select_reinforce_samples`, 0 elsewhere — or set ``temp_mask`` to 0 on dropped
    samples). The temperature samples' log-probs are those of π_θ at the *training*
    temperature (their sampling temperature only changed what was sampled).

    α (``reinforce_coef``) is not reported as a number in the paper; see the module docstring.
    The PPO part is the shared surrogate (:mod:`entropylab.losses.policy`: ``[B]`` advantages,
    ``old_logp=None``, ``token_weights`` on the GRPO rows, the NaN policy, the base metrics).

    References: arXiv:2510.08141.
    """
    if reinforce_coef < 0:
        raise ValueError(f"reinforce_coef must be >= 0, got {reinforce_coef}")
    b = policy_batch(
        "aepo_loss",
        logp,
        old_logp,
        advantages,
        mask,
        token_weights=token_weights,
        loss_agg_mode=loss_agg_mode,
    )
    logp = b.logp
    temp_logp = jnp.asarray(temp_logp)
    if temp_logp.ndim != 2 or logp.shape[1] != temp_logp.shape[1]:
        raise ValueError(
            f"logp [B, T] and temp_logp [B', T] must share T, got {logp.shape}, {temp_logp.shape}"
        )
    d = log_ratio(b.logp, b.old_logp, log_ratio_clamp)
    ppo_tok, info = clipped_surrogate(
        jnp.exp(d),
        b.advantages,
        clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high,
        clip_ratio_c=clip_ratio_c,
    )
    rf_kw = dict(
        old_logp=temp_old_logp,
        estimator=reinforce_estimator,
        clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high,
    )
    main_mask = b.valid
    n_replaced = jnp.zeros((), jnp.int32)
    if pooled and replace_grpo_rows:
        # The release's `Pos[:S] ++ B[S:]`: the S REINFORCE rows take the first S GRPO rows' place.
        rows_t = jnp.any(jnp.asarray(temp_mask) != 0, axis=-1).astype(jnp.int32)
        n_replaced = jnp.sum(rows_t)
        row = jnp.arange(logp.shape[0])
        if axis_name is not None:
            n_replaced = jax.lax.psum(n_replaced, axis_name)
            row = row + jax.lax.axis_index(axis_name) * logp.shape[0]
        main_mask = main_mask & (row >= n_replaced)[:, None]
    mask = main_mask
    red_kw = dict(
        loss_agg_mode=loss_agg_mode,
        loss_scale_factor=loss_scale_factor,
        axis_name=axis_name,
        clipped=info["clipped"],
        dual_clipped=info["dual_clipped"],
        clip_mask=mask,
        log_ratio_values=d,
    )
    if pooled:
        # Per-token REINFORCE losses, aggregated together with the PPO tokens.
        r = jnp.asarray(temp_rewards, dtype=temp_logp.dtype)
        r = jnp.broadcast_to(r[:, None] if r.ndim == 1 else r, temp_logp.shape)
        if reinforce_estimator == "reinforce":
            rf_tok = -r * jnp.where(jnp.asarray(temp_mask) != 0, temp_logp, 0.0)
        elif reinforce_estimator == "ppo_clip":
            if temp_old_logp is None:
                raise ValueError("reinforce_estimator='ppo_clip' needs temp_old_logp")
            rf_tok, _ = ppo_clip_per_token(
                temp_logp,
                temp_old_logp,
                r,
                clip_ratio_low=clip_ratio_low,
                clip_ratio_high=clip_ratio_high,
            )
        else:
            raise ValueError(f"reinforce_estimator must be one of {_ESTIMATORS}")
        w_tok = ppo_tok if b.weights is None else ppo_tok * b.weights
        per_tok = jnp.concatenate([w_tok, reinforce_coef * rf_tok], axis=0)
        all_mask = jnp.concatenate([mask, jnp.asarray(temp_mask) != 0], 0)
        loss = aggregate(
            per_tok,
            all_mask,
            loss_agg_mode,
            loss_scale_factor=loss_scale_factor,
            axis_name=axis_name,
        ) + _nan_probe(b, axis_name)
        pg_loss, base = reduce_policy_loss(ppo_tok, b, agg_mask=mask, **red_kw)
        rf_loss, _ = aepo_reinforce_loss(
            temp_logp,
            temp_rewards,
            temp_mask,
            loss_agg_mode=loss_agg_mode,
            loss_scale_factor=loss_scale_factor,
            axis_name=axis_name,
            **rf_kw,
        )
    else:
        pg_loss, base = reduce_policy_loss(ppo_tok, b, agg_mask=mask, **red_kw)
        rf_loss, _ = aepo_reinforce_loss(
            temp_logp,
            temp_rewards,
            temp_mask,
            loss_agg_mode=loss_agg_mode,
            loss_scale_factor=loss_scale_factor,
            axis_name=axis_name,
            **rf_kw,
        )
        loss = pg_loss + reinforce_coef * rf_loss
    n_main = masked_count(mask, axis_name=axis_name)
    n_temp = masked_count(temp_mask, axis_name=axis_name)
    metrics = {
        **base,
        "aepo/loss": loss,
        "aepo/reinforce_loss": rf_loss,
        "aepo/reinforce_token_share": jnp.where(
            n_main + n_temp > 0, n_temp / jnp.maximum(n_main + n_temp, 1.0), 0.0
        ),
        "aepo/replaced_rows": n_replaced.astype(pg_loss.dtype),
        "aepo/entropy_estimate": aepo_entropy_estimate(
            jnp.concatenate([logp, temp_logp], 0),
            jnp.concatenate([mask, jnp.asarray(temp_mask) != 0], 0),
            axis_name=axis_name,
        ),
    }
    return loss, metrics


# ------------------------------------------------------------------ objective registration
def _aepo_reinforce_component(inputs, ctx, *, coef=1.0, **kw):
    """``α · agg(−R·log π_θ)`` on the temperature samples (AEPO paper form, not pooled)."""
    ex = inputs.extras or {}
    for n in ("temp_logp", "temp_rewards", "temp_mask"):
        if n not in ex:
            raise ValueError(f"regularizer 'aepo_reinforce' needs inputs.extras[{n!r}]")
    loss, m = aepo_reinforce_loss(
        ex["temp_logp"],
        ex["temp_rewards"],
        ex["temp_mask"],
        old_logp=ex.get("temp_old_logp"),
        loss_agg_mode=ctx.loss_agg_mode,
        loss_scale_factor=ctx.loss_scale_factor,
        axis_name=ctx.axis_name,
        **kw,
    )
    return coef * loss, {**m, "aepo/reinforce_coef": jnp.asarray(coef, loss.dtype)}


def _validate_coef(kw):
    if not kw.get("coef", 1.0) >= 0:
        raise ValueError(f"coef must be >= 0, got {kw['coef']}")


register_regularizer(
    "aepo_reinforce",
    _aepo_reinforce_component,
    accepts=frozenset({"coef", "estimator", "clip_ratio_low", "clip_ratio_high"}),
    needs=("extras.temp_logp", "extras.temp_rewards", "extras.temp_mask"),
    validate=_validate_coef,
)
