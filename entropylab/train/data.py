"""Data: byte tokenizer, the stdlib code corpus, memory-mapped token files, resumable batches.

* :class:`ByteTokenizer` — one token per UTF-8 byte (vocabulary 256, no special tokens).
* :func:`stdlib_corpus` — the Python standard-library ``*.py`` sources of the running interpreter
  (the analogue of CodeParrot). Files are taken in sorted relative-path order; tests
  (``test``/``tests``/``idle_test`` folders) and ``site-packages`` are excluded. A file goes to the
  held-out split when ``crc32(relative_path) % 1000 < 1000 * holdout_fraction``, so the split
  does not depend on which other files exist. CPython 3.11.7 (holdout 5%): 692 training files /
  11,234,740 bytes and 42 held-out files / 885,369 bytes (sha256 2ebaf5e0…; ``CorpusInfo``).
* :func:`load_token_file` / :func:`write_token_file` — flat token files (nanoGPT-style raw
  ``.bin`` of a given dtype, or ``.npy``), memory-mapped, validated, written atomically.
* :class:`LMBatches` / :class:`SFTBatches` — batch ``i`` is a pure function of ``(seed, i)``, so
  the iterator state is one integer (``position``) and a resumed run sees the same batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sysconfig
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages"})
_RAW_DTYPES = ("uint8", "uint16", "int32", "uint32")


class ByteTokenizer:
    """UTF-8 bytes as tokens: ``encode(s) = list(s.encode())``, vocabulary size 256."""

    vocab_size = 256

    def encode(self, text: str | bytes) -> np.ndarray:
        """``str``/``bytes`` -> int32 ``[N]`` token ids in [0, 256)."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        """Token ids -> text; invalid UTF-8 sequences become U+FFFD."""
        arr = np.asarray(ids)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(
                f"ByteTokenizer.decode: ids must be in [0, 255], got {arr.min()}..{arr.max()}"
            )
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CorpusInfo:
    """What :func:`stdlib_corpus` read: file counts, byte counts and a content digest."""

    root: str
    n_train_files: int
    n_heldout_files: int
    n_train_tokens: int
    n_heldout_tokens: int
    sha256: str


def stdlib_files(root: str | os.PathLike | None = None) -> list[Path]:
    """Stdlib ``*.py`` files under ``root`` (default: this interpreter's), sorted, no tests."""
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"stdlib_corpus: source folder {root} does not exist")
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _EXCLUDED_DIRS.intersection(rel.parts[:-1]) or not path.is_file():
            continue
        files.append(rel)
    return [root / rel for rel in sorted(files, key=lambda p: p.as_posix())]


def stdlib_corpus(
    *,
    holdout_fraction: float = 0.05,
    max_bytes: int | None = None,
    root: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray, CorpusInfo]:
    """Byte-tokenised Python stdlib sources -> ``(train [N] uint8, heldout [M] uint8, info)``.

    Files are concatenated in sorted order, each followed by ``b"\\n\\n"``. ``max_bytes`` truncates
    each split (for smoke runs; the prefix is deterministic).
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive or None, got {max_bytes}")
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    files = stdlib_files(root)
    train_parts, held_parts = [], []
    digest = hashlib.sha256()
    threshold = int(round(1000 * holdout_fraction))
    for path in files:
        rel = path.relative_to(root).as_posix()
        data = path.read_bytes() + b"\n\n"
        digest.update(rel.encode() + b"\0" + data)
        held = zlib.crc32(rel.encode()) % 1000 < threshold
        (held_parts if held else train_parts).append(data)
    if not train_parts or not held_parts:
        raise ValueError(f"stdlib_corpus: {root} gave an empty split ({len(files)} files)")
    train = np.frombuffer(b"".join(train_parts), dtype=np.uint8)
    held = np.frombuffer(b"".join(held_parts), dtype=np.uint8)
    if max_bytes is not None:
        train, held = train[:max_bytes], held[:max_bytes]
    info = CorpusInfo(
        root=str(root),
        n_train_files=len(train_parts),
        n_heldout_files=len(held_parts),
        n_train_tokens=int(train.size),
        n_heldout_tokens=int(held.size),
        sha256=digest.hexdigest(),
    )
    return train, held, info


def write_token_file(path: str | os.PathLike, tokens, *, dtype: str = "uint16") -> Path:
    """Write ``tokens`` as a raw ``.bin`` (or ``.npy`` if the name ends so), atomically."""
    path = Path(path)
    if dtype not in _RAW_DTYPES:
        raise ValueError(f"dtype must be one of {_RAW_DTYPES}, got {dtype!r}")
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {arr.shape}")
    info = np.iinfo(dtype)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise ValueError(f"tokens {arr.min()}..{arr.max()} do not fit dtype {dtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if path.suffix == ".npy":
                np.save(f, arr.astype(dtype))
            else:
                f.write(arr.astype(dtype).tobytes())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_token_file(
    path: str | os.PathLike, *, dtype: str = "uint16", vocab_size: int | None = None
) -> np.ndarray:
    """Memory-map a token file -> read-only ``[N]`` array (no copy).

    ``.npy`` files carry their dtype; any other suffix is a raw little-endian array of ``dtype``
    (nanoGPT ``train.bin`` layout). Raises ``FileNotFoundError`` if missing, ``ValueError`` if
    empty, mis-sized (byte count not a multiple of the item size), not 1-D/integer, or holding an
    id outside ``[0, vocab_size)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token file {path} does not exist")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"token file {path} is not a valid .npy file: {e}") from e
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"token file {path} must hold a 1-D integer array, got {arr.dtype}{arr.shape}"
            )
    else:
        if dtype not in _RAW_DTYPES:
            raise ValueError(f"dtype must be one of {_RAW_DTYPES}, got {dtype!r}")
        itemsize = np.dtype(dtype).itemsize
        size = path.stat().st_size
        if size % itemsize:
            raise ValueError(
                f"token file {path} has {size} bytes, not a multiple of the {dtype} item size "
                f"{itemsize}: truncated or wrong dtype"
            )
        if size == 0:
            raise ValueError(f"token file {path} is empty")
        arr = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")
    if arr.size == 0:
        raise ValueError(f"token file {path} is empty")
    if vocab_size is not None:
        lo, hi = _chunked_min_max(arr)
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f"token file {path} holds ids {lo}..{hi}, outside [0, vocab_size={vocab_size})"
            )
    return arr


def _chunked_min_max(arr, chunk: int = 1 << 24) -> tuple[int, int]:
    lo, hi = None, None
    for start in range(0, arr.size, chunk):
        block = np.asarray(arr[start : start + chunk])
        bl, bh = int(block.min()), int(block.max())
        lo = bl if lo is None else min(lo, bl)
        hi = bh if hi is None else max(hi, bh)
    return lo, hi


class LMBatches:
    """Deterministic, resumable next-token batches over a flat token array.

    The array is cut into ``W = (N - 1) // seq_len`` windows of ``seq_len + 1`` tokens (window
    ``w`` starts at ``w * seq_len``). With ``shuffle``, epoch ``e`` visits the windows in the order
    ``default_rng([seed, e]).permutation(W)``; the last ``W mod batch_size`` windows of an epoch
    are dropped. Batch ``i`` is a pure function of ``(seed, i)``:

        inputs  = window[:, :-1]   [B, T] int32
        targets = window[:, 1:]    [B, T] int32
        loss_mask = 1              [B, T] float32
        attention_mask = 1         [B, T] int32   (same keys as SFT batches: one compiled step)

    State for checkpoints: ``{"position": i}`` (the next batch index).
    """

    def __init__(self, tokens, *, batch_size: int, seq_len: int, seed: int = 0, shuffle=True):
        if batch_size <= 0 or seq_len <= 0:
            raise ValueError(
                f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}"
            )
        self.tokens = tokens
        self.batch_size, self.seq_len, self.seed, self.shuffle = batch_size, seq_len, seed, shuffle
        self.n_windows = (len(tokens) - 1) // seq_len
        self.batches_per_epoch = self.n_windows // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(tokens)} tokens give {self.n_windows} windows of seq_len={seq_len}, "
                f"fewer than batch_size={batch_size}"
            )
        self.position = 0
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n_windows)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perm_epoch = epoch
        return self._perm

    def batch_at(self, index: int) -> dict[str, np.ndarray]:
        """Batch number ``index`` (0-based) as a dict of NumPy arrays."""
        epoch, j = divmod(index, self.batches_per_epoch)
        windows = self._order(epoch)[j * self.batch_size : (j + 1) * self.batch_size]
        starts = windows * self.seq_len
        idx = starts[:, None] + np.arange(self.seq_len + 1)[None, :]
        chunk = np.asarray(self.tokens[idx.ravel()]).reshape(idx.shape).astype(np.int32)
        return {
            "inputs": chunk[:, :-1],
            "targets": chunk[:, 1:],
            "loss_mask": np.ones((self.batch_size, self.seq_len), np.float32),
            "attention_mask": np.ones((self.batch_size, self.seq_len), np.int32),
        }

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch_at(self.position)
        self.position += 1
        return batch

    def state(self) -> dict[str, int]:
        return {"position": int(self.position)}

    def restore(self, state: dict) -> None:
        if not isinstance(state, dict) or "position" not in state or int(state["position"]) < 0:
            raise ValueError(f"data iterator state must be {{'position': int >= 0}}, got {state!r}")
        self.position = int(state["position"])


def sft_example(prompt, response, *, seq_len: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """One SFT row: ``prompt + response`` shifted for next-token loss on response tokens only.

    Returns ``inputs``/``targets`` int32 ``[T]``, ``loss_mask`` float32 ``[T]`` (1 where the target
    is a response token) and ``attention_mask`` int32 ``[T]`` (1 on real tokens). Raises
    ``ValueError`` if the pair does not fit ``seq_len + 1`` tokens or the response is empty.
    """
    p, r = np.asarray(prompt, np.int32).ravel(), np.asarray(response, np.int32).ravel()
    if r.size == 0:
        raise ValueError("sft_example: response must be non-empty")
    seq = np.concatenate([p, r])
    if seq.size > seq_len + 1:
        raise ValueError(
            f"sft_example: prompt+response has {seq.size} tokens > seq_len+1={seq_len + 1}"
        )
    n = seq.size - 1
    inputs = np.full(seq_len, pad_id, np.int32)
    targets = np.full(seq_len, pad_id, np.int32)
    inputs[:n], targets[:n] = seq[:-1], seq[1:]
    loss_mask = np.zeros(seq_len, np.float32)
    loss_mask[max(p.size - 1, 0) : n] = 1.0  # target index t predicts seq[t + 1]
    attention_mask = np.zeros(seq_len, np.int32)
    attention_mask[:n] = 1
    return {
        "inputs": inputs,
        "targets": targets,
        "loss_mask": loss_mask,
        "attention_mask": attention_mask,
    }


class SFTBatches(LMBatches):
    """Resumable batches of (prompt, response) pairs; loss on response tokens only.

    Same ordering rule and state as :class:`LMBatches`, over examples instead of windows.
    """

    def __init__(
        self,
        pairs: Sequence[tuple],
        *,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        shuffle: bool = True,
        pad_id: int = 0,
    ):
        if batch_size <= 0 or seq_len <= 0:
            raise ValueError(
                f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}"
            )
        rows = [sft_example(p, r, seq_len=seq_len, pad_id=pad_id) for p, r in pairs]
        if len(rows) < batch_size:
            raise ValueError(f"{len(rows)} SFT pairs are fewer than batch_size={batch_size}")
        self.rows = {k: np.stack([row[k] for row in rows]) for k in rows[0]}
        self.batch_size, self.seq_len, self.seed, self.shuffle = batch_size, seq_len, seed, shuffle
        self.n_windows = len(rows)
        self.batches_per_epoch = self.n_windows // batch_size
        self.position = 0
        self._perm_epoch, self._perm = -1, None

    def batch_at(self, index: int) -> dict[str, np.ndarray]:
        epoch, j = divmod(index, self.batches_per_epoch)
        idx = self._order(epoch)[j * self.batch_size : (j + 1) * self.batch_size]
        return {k: v[idx] for k, v in self.rows.items()}
