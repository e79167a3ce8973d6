"""The four entropy methods of issue 9 (entropy-based advantage arXiv:2506.14758, ERC
arXiv:2512.05591, Light-IF arXiv:2508.03178, EntroPIC arXiv:2511.15248) on 8 devices equal one
device (``shard_map``), values and gradients."""

import numpy as np
from dist_util import assert_matches_distributed

from entropylab.losses import (
    entropic_adjustment_loss,
    entropy_advantage,
    entropy_sft_loss,
    erc_loss,
    tea_rl_entropy_loss,
)


def test_new_methods_equal_one_device_under_shard_map():
    """Every batch statistic of the four new methods is global over ``axis_name`` (EntroPIC's
    high-probability aggregate, ERC, TEA-RL's batch means, Entropy-SFT's global top-k):
    8 devices equal one device, values and gradients (one compiled function)."""
    rng = np.random.default_rng(5)
    b, t = 16, 6
    lp = np.log(rng.uniform(0.3, 1.0, (b, t))).astype(np.float32)
    lp = np.where(rng.uniform(size=(b, t)) < 0.4, np.log(0.97), lp).astype(np.float32)
    old = (lp + 0.2 * rng.normal(size=(b, t))).astype(np.float32)
    adv = rng.normal(size=(b, t)).astype(np.float32)
    m = rng.uniform(size=(b, t)) < 0.8
    m[3] = False
    h_old = rng.uniform(0.2, 2.0, (b, t)).astype(np.float32)
    h = (h_old * rng.uniform(0.9, 1.1, (b, t))).astype(np.float32)

    def four(lp, old, adv, m, h, h_old, axis_name=None):
        ax = dict(axis_name=axis_name)
        shaped, _ = entropy_advantage(adv, h, m, **ax)
        out = {
            "entropic": entropic_adjustment_loss(lp, old, shaped, m, alpha=0.3, **ax)[0],
            "erc": erc_loss(lp, old, adv, m, entropy=h, old_entropy=h_old, **ax)[0],
            "tea_rl": tea_rl_entropy_loss(lp, adv, h, m, **ax)[0],
            "sft": entropy_sft_loss(lp, h, m, token_ratio=0.3, **ax)[0],
        }
        return sum(out.values()), out

    assert_matches_distributed(
        four, (lp, old, adv, m, h, h_old), {}, atol=1e-5, grad_argnums=(0,), methods=("shard_map",)
    )
