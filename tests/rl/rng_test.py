"""Named RNG streams: no key collides across (stream, step, epoch, minibatch, replica) for
realistic ranges, while the old arithmetic packing did."""

import jax
import jax.numpy as jnp
import numpy as np

from entropylab.rl import rng

STEPS, EPOCHS, MINIBATCHES, REPLICAS = 200, 12, 128, 4  # 1.2 M loss keys


def _key_bits(keys):
    return np.asarray(jax.random.key_data(keys)).reshape(keys.shape[0], -1)


@jax.jit
def _loss_keys(seeds):
    def one(seed, step, epoch, m):
        return rng.stream(jax.random.key(seed), rng.LOSS, step, epoch, m)

    s, st, e, m = jnp.meshgrid(
        seeds, jnp.arange(STEPS), jnp.arange(EPOCHS), jnp.arange(MINIBATCHES), indexing="ij"
    )
    return jax.vmap(one)(s.ravel(), st.ravel(), e.ravel(), m.ravel())


def test_loss_keys_never_collide():
    bits = _key_bits(_loss_keys(jnp.arange(REPLICAS, dtype=jnp.uint32)))
    assert bits.shape[0] == STEPS * EPOCHS * MINIBATCHES * REPLICAS
    assert len(np.unique(bits, axis=0)) == bits.shape[0]


def test_the_old_arithmetic_packing_collides():
    """``step*1000 + epoch*100 + m`` (the trainer before the named streams): epoch 9 /
    minibatch 100 and epoch 10 / minibatch 0 got the same key — the regression this prevents."""
    old = lambda step, epoch, m: step * 1000 + epoch * 100 + m  # noqa: E731
    assert old(3, 9, 100) == old(3, 10, 0)
    k = jax.random.key(0)
    a = rng.stream(k, rng.LOSS, 3, 9, 100)
    b = rng.stream(k, rng.LOSS, 3, 10, 0)
    assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(b))


def test_streams_are_distinct_and_sample_keys_per_sample():
    k = jax.random.key(0)
    names = (rng.ROLLOUT, rng.TEMP_ROLLOUT, rng.EVAL, rng.SHUFFLE, rng.LOSS)
    assert len(set(names)) == len(names)
    # the same indices under different streams and chains of different length all differ
    keys = [rng.stream(k, s, 1, 2) for s in names] + [rng.stream(k, rng.LOSS, 1, 2, 0)]
    keys += [rng.stream(k, rng.LOSS, 1)]
    bits = np.stack([np.asarray(jax.random.key_data(x)).ravel() for x in keys])
    assert len(np.unique(bits, axis=0)) == len(keys)
    # rollout keys for 300 steps × 64 prompts × 16 samples × 2 streams: all distinct
    pidx = jnp.repeat(jnp.arange(64), 16)
    sidx = jnp.tile(jnp.arange(16), 64)
    fn = jax.jit(jax.vmap(lambda s, st: rng.sample_keys(k, s, st, pidx, sidx), in_axes=(None, 0)))
    allk = [_key_bits(fn(s, jnp.arange(300)).reshape(-1)) for s in (rng.ROLLOUT, rng.TEMP_ROLLOUT)]
    allk = np.concatenate(allk)
    assert len(np.unique(allk, axis=0)) == allk.shape[0]
    # a sample's key does not depend on the batch it is in
    one = rng.sample_keys(k, rng.ROLLOUT, 7, jnp.array([5]), jnp.array([3]))
    many = rng.sample_keys(k, rng.ROLLOUT, 7, pidx, sidx)
    np.testing.assert_array_equal(
        jax.random.key_data(one[0]), jax.random.key_data(many[5 * 16 + 3])
    )
