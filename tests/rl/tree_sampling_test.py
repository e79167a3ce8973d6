"""Tree (entropy-branching) sampler: +inf threshold == plain sampler bit for bit; forks exactly
where a NumPy replay of the rule on the logged entropies puts them; budget never exceeded;
children share their parent's prefix."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropylab.models import Transformer, TransformerConfig
from entropylab.rl import sampling as S
from entropylab.rl import tree_sampling as T
from entropylab.rl.tasks import CharTokenizer

B, N = 3, 8


def sharpen(z, t):
    """Makes entropies vary strongly with t (a random smoke model is nearly uniform)."""
    return z * (1.0 + 3.0 * (t % 3))


@pytest.fixture(scope="module")
def setup():
    tok = CharTokenizer()
    model = Transformer(TransformerConfig.smoke(vocab_size=tok.vocab_size), rngs=nnx.Rngs(0))
    gd, st = nnx.split(model)
    pt, pm = tok.encode_prompts(["1+2=", "12+34=", "7+88="])
    return gd, st, jnp.asarray(pt), jnp.asarray(pm)


def slot_keys(b, s, step=0):
    pi, si = np.meshgrid(np.arange(b), np.arange(s), indexing="ij")
    return S.sample_keys(0, step, jnp.asarray(pi.ravel()), jnp.asarray(si.ravel())).reshape(b, s)


def test_infinite_threshold_is_the_plain_sampler_bit_for_bit(setup):
    gd, st, pt, pm = setup
    cfg = S.SamplingConfig(max_new_tokens=N, eos_id=3)
    tc = T.TreeConfig(n_init=2, budget=3, threshold=float("inf"), init_tokens=2)
    s = tc.slots
    keys = slot_keys(B, s)
    tr = T.make_tree_sampler(gd, cfg, tc)(st, pt, pm, keys)
    # the plain sampler over the same B·S rows (XLA:CPU results depend on the batch size in the
    # last ulp, so the comparison is at the same layout; the free slots simply never start)
    plain = S.make_sampler(gd, cfg)(
        st, jnp.repeat(pt, s, 0), jnp.repeat(pm, s, 0), keys.reshape(-1)
    )
    alloc = np.asarray(tr.allocated).reshape(-1)
    assert alloc.sum() == B * 2 and not np.asarray(tr.allocated)[:, 2:].any()
    for f in ("response", "response_mask", "logp", "entropy", "temperature", "finished"):
        a, b = np.asarray(getattr(tr.rollout, f))[alloc], np.asarray(getattr(plain, f))[alloc]
        assert np.array_equal(a, b), f  # bit for bit
    np.testing.assert_array_equal(
        np.asarray(tr.rollout.tokens)[alloc], np.asarray(plain.tokens)[alloc]
    )
    assert not np.asarray(tr.rollout.response_mask)[~alloc].any()
    assert (np.asarray(tr.parent) == -1).all() and int(tr.saved_tokens) == 0
    # the trainer-facing adapter (plain-sampler calling convention, same compiled function)
    g = T.as_group_sampler(gd, cfg, tc)(
        st, jnp.repeat(pt, s, 0), jnp.repeat(pm, s, 0), keys.reshape(-1)
    )
    assert np.array_equal(np.asarray(g.logp), np.asarray(tr.rollout.logp))
    with pytest.raises(ValueError, match="consecutive"):
        T.as_group_sampler(gd, cfg, tc)(
            st, jnp.tile(pt, (s, 1)), jnp.tile(pm, (s, 1)), keys.reshape(-1)
        )


def replay(ent, valid, tc, n_prompts):
    """NumPy float64 replay of the 'delta' fork rule on the logged entropies."""
    s, k, w = tc.slots, tc.init_tokens, tc.window
    alloc = np.zeros((n_prompts, s), bool)
    alloc[:, : tc.n_init] = True
    parent = np.full((n_prompts, s), -1)
    fork = np.full((n_prompts, s), -1)
    last = np.full((n_prompts, s), -(10**9))
    ent = ent.reshape(n_prompts, s, -1).astype(np.float64)
    valid = valid.reshape(n_prompts, s, -1)
    for t in range(ent.shape[-1]):
        for i in range(n_prompts):
            free = [j for j in range(s) if not alloc[i, j]]
            before = alloc[i].copy()  # a child created at t is not a candidate at t
            for j in range(s):  # slot order
                if not free:
                    break
                # live at t: allocated before t and not finished (valid at t, as the parent
                # itself is: a child's history up to t is the parent's)
                if not before[j] or not valid[i, j, t] or t < k or t - last[i, j] < tc.min_gap:
                    continue
                h_init = ent[i, j, :k].mean()
                h_now = ent[i, j, max(0, t - w + 1) : t + 1].mean()
                if h_now - h_init > tc.threshold:
                    c = free.pop(0)
                    alloc[i, c] = True
                    parent[i, c], fork[i, c] = j, t
                    last[i, c] = last[i, j] = t
    return alloc, parent, fork


def test_forks_where_the_rule_says_within_budget(setup):
    gd, st, pt, pm = setup
    cfg = S.SamplingConfig(max_new_tokens=N, eos_id=-1)
    tc = T.TreeConfig(n_init=2, budget=4, threshold=0.05, init_tokens=2, window=2, min_gap=2)
    s = tc.slots
    tr = T.make_tree_sampler(gd, cfg, tc, logit_processors=(sharpen,))(
        st, pt, pm, slot_keys(B, s, step=3)
    )
    r = tr.rollout
    ent, valid = np.asarray(r.entropy), np.asarray(r.response_mask)
    # the scores are not within float32 noise of the threshold (the replay is float64)
    sc = np.asarray(tr.fork_score)
    assert np.min(np.abs(sc[np.isfinite(sc)] - tc.threshold)) > 1e-4
    alloc, parent, fork = replay(ent, valid, tc, B)
    np.testing.assert_array_equal(np.asarray(tr.allocated), alloc)
    np.testing.assert_array_equal(np.asarray(tr.parent), parent)
    np.testing.assert_array_equal(np.asarray(tr.fork_pos), fork)
    n_forks = (np.asarray(tr.parent) >= 0).sum(1)
    assert (n_forks <= tc.budget).all() and n_forks.sum() >= 2  # forks happened, within budget
    # a child equals its parent before the fork position (tokens, log-probs, entropies) and
    # generated the rest itself
    resp, own = np.asarray(r.response).reshape(B, s, N), np.asarray(tr.own_mask).reshape(B, s, N)
    lp = np.asarray(r.logp).reshape(B, s, N)
    saved = 0
    for i in range(B):
        for c in range(s):
            j, f = parent[i, c], fork[i, c]
            if j < 0:
                assert own[i, c].sum() == valid.reshape(B, s, N)[i, c].sum()
                continue
            np.testing.assert_array_equal(resp[i, c, :f], resp[i, j, :f])
            np.testing.assert_array_equal(lp[i, c, :f], lp[i, j, :f])
            assert not own[i, c, :f].any() and own[i, c, f:].all()
            saved += f
    assert int(tr.saved_tokens) == saved


def test_arpo_rule_replay_fill_and_validation(setup):
    gd, st, pt, pm = setup
    cfg = S.SamplingConfig(max_new_tokens=N, eos_id=-1)
    fill = N - 2
    tc = T.TreeConfig(
        n_init=1,
        budget=3,
        mode="arpo",
        entropy_weight=0.5,
        p_branch=0.15,
        init_tokens=1,
        fill_at=fill,
    )
    tr = T.make_tree_sampler(gd, cfg, tc, logit_processors=(sharpen,))(
        st, pt, pm, slot_keys(B, tc.slots)
    )
    u, sc = np.asarray(tr.fork_u, np.float64), np.asarray(tr.fork_score, np.float64)
    fire = np.clip(u - 0.5 * sc, 0, 1) <= 0.15
    fp, par = np.asarray(tr.fork_pos), np.asarray(tr.parent)
    assert np.asarray(tr.allocated).all()  # fill_at filled what the rule left free
    assert ((fp >= 0) & (fp < fill)).any()  # and the rule itself forked somewhere
    for i in range(B):
        for c in range(1, tc.slots):
            assert 0 <= fp[i, c] <= fill and par[i, c] >= 0
            if fp[i, c] < fill:  # a rule fork happened at a token where the parent's rule fired
                assert fire[i * tc.slots + par[i, c], fp[i, c]]
        # the first fork of the root is its first firing token (budget still free then)
        root_fire = np.nonzero(fire[i * tc.slots, 1:])[0] + 1
        first = root_fire[0] if root_fire.size and root_fire[0] < fill else fill
        assert fp[i][fp[i] >= 0].min() == first
    with pytest.raises(ValueError, match="mode"):
        T.TreeConfig(mode="beam")
    with pytest.raises(ValueError, match="fill_at"):
        T.TreeConfig(fill_at=-1)
    with pytest.raises(ValueError, match="keys"):
        T.generate_tree(None, pt, pm, slot_keys(B, 2), cfg, tc)


def test_bench_quick_mode_runs():
    from bench import tree_rollout

    plain, tree = tree_rollout.main(["--quick"])
    assert plain["responses"] == tree["responses"] == 8  # 2 prompts x (2 chains + 2 forks)
    assert plain["rollouts_per_s"] > 0 and tree["rollouts_per_s"] > 0
    # every response is 8 tokens (no EOS): own tokens + shared prefix tokens = all of them
    assert plain["tokens_generated"] == 64
    assert tree["tokens_generated"] + tree["prefix_tokens_saved"] == 64
    assert tree["prefix_tokens_saved"] > 0
