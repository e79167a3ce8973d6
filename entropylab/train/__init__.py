"""Training stack: byte data + stdlib corpus, AdamW schedule, orbax checkpoints, metrics, LM loop.

Example::

    train_tokens, heldout, info = stdlib_corpus()
    batches = LMBatches(train_tokens, batch_size=32, seq_len=128, seed=0)
    result = train(model, batches, TrainConfig(steps=1000, optim=OptimConfig()), workdir="runs/x")
"""

from entropylab.train.checkpoint import Checkpointer, abstract_like
from entropylab.train.data import (
    ByteTokenizer,
    CorpusInfo,
    LMBatches,
    SFTBatches,
    load_token_file,
    sft_example,
    stdlib_corpus,
    stdlib_files,
    write_token_file,
)
from entropylab.train.loop import (
    TrainConfig,
    TrainResult,
    evaluate,
    init_state,
    lm_loss,
    make_eval_step,
    make_train_step,
    train,
)
from entropylab.train.metrics import MetricWriter, ProgressBar, read_jsonl
from entropylab.train.optim import OptimConfig, decay_mask, lr_schedule, make_optimizer

__all__ = [
    "ByteTokenizer",
    "Checkpointer",
    "CorpusInfo",
    "LMBatches",
    "MetricWriter",
    "OptimConfig",
    "ProgressBar",
    "SFTBatches",
    "TrainConfig",
    "TrainResult",
    "abstract_like",
    "decay_mask",
    "evaluate",
    "init_state",
    "lm_loss",
    "load_token_file",
    "lr_schedule",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "read_jsonl",
    "sft_example",
    "stdlib_corpus",
    "stdlib_files",
    "train",
    "write_token_file",
]
