"""Tests for entropylab.train.data: tokenizer, stdlib corpus, token files, resumable batches."""

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropylab.train.data import (
    ByteTokenizer,
    LMBatches,
    SFTBatches,
    load_token_file,
    sft_example,
    stdlib_corpus,
    stdlib_files,
    write_token_file,
)


def test_byte_tokenizer_hand_cases():
    tok = ByteTokenizer()
    np.testing.assert_array_equal(tok.encode("abc"), [97, 98, 99])
    np.testing.assert_array_equal(tok.encode("é"), [0xC3, 0xA9])  # two UTF-8 bytes
    assert tok.encode("abc").dtype == np.int32
    assert tok.decode([104, 105]) == "hi"
    assert tok.decode([0xFF]) == "\ufffd"
    with pytest.raises(ValueError, match="ids must be in"):
        tok.decode([256])


@settings(max_examples=25, deadline=None)
@given(st.text(max_size=50))
def test_byte_tokenizer_roundtrip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.min(initial=0) >= 0 and ids.max(initial=0) < tok.vocab_size
    assert tok.decode(ids) == text


def _fake_stdlib(root):
    files = {
        "a.py": b"print('a')\n",
        "pkg/b.py": b"x = 1\n",
        "pkg/c.py": b"y = 2\n",
        "test/test_a.py": b"assert 0\n",
        "site-packages/z.py": b"zz\n",
        "notes.txt": b"not python\n",
    }
    for i in range(40):
        files[f"m/mod{i:02d}.py"] = f"v{i} = {i}\n".encode()
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def test_stdlib_corpus_split_and_order(tmp_path):
    files = _fake_stdlib(tmp_path)
    train, held, info = stdlib_corpus(root=tmp_path, holdout_fraction=0.2)
    rels = [p.relative_to(tmp_path).as_posix() for p in stdlib_files(tmp_path)]
    expected = [r for r in files if r.endswith(".py") and not r.startswith(("test/", "site-"))]
    assert rels == sorted(expected)
    assert "test/test_a.py" not in rels and "site-packages/z.py" not in rels
    # independent reference of the split rule
    ref_train = b"".join(files[r] + b"\n\n" for r in rels if zlib.crc32(r.encode()) % 1000 >= 200)
    ref_held = b"".join(files[r] + b"\n\n" for r in rels if zlib.crc32(r.encode()) % 1000 < 200)
    assert train.tobytes() == ref_train and held.tobytes() == ref_held
    assert info.n_train_files + info.n_heldout_files == len(rels)
    assert info.n_train_tokens == len(ref_train) and info.n_heldout_tokens == len(ref_held)
    train2, held2, info2 = stdlib_corpus(root=tmp_path, holdout_fraction=0.2)
    assert info2.sha256 == info.sha256 and np.array_equal(train2, train)
    t3, h3, _ = stdlib_corpus(root=tmp_path, holdout_fraction=0.2, max_bytes=10)
    assert t3.tobytes() == ref_train[:10] and h3.tobytes() == ref_held[:10]


def test_stdlib_corpus_real_interpreter():
    train, held, info = stdlib_corpus()
    assert info.n_train_files > 100 and info.n_heldout_files > 5
    assert train.dtype == np.uint8 and info.n_train_tokens > 1_000_000
    assert 0.01 < info.n_heldout_tokens / (info.n_train_tokens + info.n_heldout_tokens) < 0.15


def test_stdlib_corpus_bad_input(tmp_path):
    with pytest.raises(ValueError, match="holdout_fraction"):
        stdlib_corpus(holdout_fraction=1.5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        stdlib_corpus(root=tmp_path / "missing")


@pytest.mark.parametrize(
    "name,dtype", [("t.bin", "uint16"), ("t.bin", "uint8"), ("t.npy", "int32")]
)
def test_token_file_roundtrip(tmp_path, name, dtype):
    tokens = np.arange(200) % 250
    path = write_token_file(tmp_path / name, tokens, dtype=dtype)
    arr = load_token_file(path, dtype=dtype, vocab_size=256)
    np.testing.assert_array_equal(arr, tokens)
    assert isinstance(arr, np.memmap) or arr.base is not None  # memory-mapped, not copied
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp files left


def test_token_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_token_file(tmp_path / "nope.bin")
    bad = tmp_path / "odd.bin"
    bad.write_bytes(b"\x01\x00\x02")  # 3 bytes: not a whole number of uint16
    with pytest.raises(ValueError, match="not a multiple"):
        load_token_file(bad, dtype="uint16")
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_token_file(empty)
    oov = write_token_file(tmp_path / "oov.bin", [1, 2, 300], dtype="uint16")
    with pytest.raises(ValueError, match="outside"):
        load_token_file(oov, vocab_size=256)
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not an npy file at all")
    with pytest.raises(ValueError, match="not a valid .npy"):
        load_token_file(junk)
    np.save(tmp_path / "two_d.npy", np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="1-D integer"):
        load_token_file(tmp_path / "two_d.npy")
    with pytest.raises(ValueError, match="do not fit"):
        write_token_file(tmp_path / "big.bin", [70000], dtype="uint16")
    with pytest.raises(ValueError, match="dtype"):
        load_token_file(oov, dtype="float32")


def test_lm_batches_reference_and_epoch_cover():
    tokens = np.arange(1000) % 251
    it = LMBatches(tokens, batch_size=4, seq_len=10, seed=3)
    assert it.n_windows == 99 and it.batches_per_epoch == 24
    seen = []
    for i in range(it.batches_per_epoch):
        b = it.batch_at(i)
        assert b["inputs"].shape == (4, 10) and b["inputs"].dtype == np.int32
        np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
        for row_in, row_tg in zip(b["inputs"], b["targets"]):
            start = [s for s in range(0, 990, 10) if tokens[s] == row_in[0]][0]
            np.testing.assert_array_equal(row_in, tokens[start : start + 10])
            np.testing.assert_array_equal(row_tg, tokens[start + 1 : start + 11])
            seen.append(start)
    assert len(set(seen)) == len(seen) == 96  # each window at most once per epoch
    # epochs are shuffled differently, seeds differ
    assert not np.array_equal(it.batch_at(0)["inputs"], it.batch_at(24)["inputs"])
    other = LMBatches(tokens, batch_size=4, seq_len=10, seed=4)
    assert not np.array_equal(it.batch_at(0)["inputs"], other.batch_at(0)["inputs"])
    plain = LMBatches(tokens, batch_size=4, seq_len=10, shuffle=False)
    np.testing.assert_array_equal(plain.batch_at(0)["inputs"][1], tokens[10:20])


def test_lm_batches_resume_is_exact():
    tokens = np.random.default_rng(0).integers(0, 256, 5000)
    a = LMBatches(tokens, batch_size=3, seq_len=16, seed=7)
    first = [next(a) for _ in range(5)]
    state = a.state()
    rest_a = [next(a)["inputs"] for _ in range(60)]  # crosses epoch boundaries
    b = LMBatches(tokens, batch_size=3, seq_len=16, seed=7)
    b.restore(state)
    rest_b = [next(b)["inputs"] for _ in range(60)]
    assert state == {"position": 5} and len(first) == 5
    for x, y in zip(rest_a, rest_b):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="state"):
        b.restore({"pos": 1})


def test_lm_batches_bad_sizes():
    with pytest.raises(ValueError, match="fewer than batch_size"):
        LMBatches(np.arange(20), batch_size=4, seq_len=8)
    with pytest.raises(ValueError, match="positive"):
        LMBatches(np.arange(20), batch_size=0, seq_len=8)


def test_sft_example_mask_hand_case():
    row = sft_example([1, 2, 3], [4, 5], seq_len=6, pad_id=0)
    # sequence 1 2 3 4 5 -> inputs 1 2 3 4, targets 2 3 4 5; response targets are 4, 5
    np.testing.assert_array_equal(row["inputs"], [1, 2, 3, 4, 0, 0])
    np.testing.assert_array_equal(row["targets"], [2, 3, 4, 5, 0, 0])
    np.testing.assert_array_equal(row["loss_mask"], [0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(row["attention_mask"], [1, 1, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="seq_len"):
        sft_example([1] * 6, [2], seq_len=5)
    with pytest.raises(ValueError, match="non-empty"):
        sft_example([1], [], seq_len=5)


def test_sft_batches_resume():
    pairs = [([i, i + 1], [i + 2]) for i in range(10)]
    a = SFTBatches(pairs, batch_size=4, seq_len=4, seed=1)
    assert a.batches_per_epoch == 2
    next(a)
    b = SFTBatches(pairs, batch_size=4, seq_len=4, seed=1)
    b.restore(a.state())
    for _ in range(5):
        x, y = next(a), next(b)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert float(x["loss_mask"].sum()) == 4.0  # one response token per row
