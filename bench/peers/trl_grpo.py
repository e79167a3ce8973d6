"""TRL ``GRPOTrainer`` step time at the ``bench.grpo_step`` shapes (run as a subprocess).

Usage: ``python -m bench.peers.trl_grpo --steps 5 --warmup 2``; prints one JSON line
``{"step_s": [...], "rollout_s": [...], "completion_len": ..., ...}``.

Model: Hugging Face ``LlamaForCausalLM`` (d 256, 4 layers, 4 heads, SwiGLU 1024, vocabulary 64,
float32, random init), a character-level ``PreTrainedTokenizerFast`` built in memory (nothing
downloaded), prompts from ``entropylab.rl.tasks.AdditionTask`` and its verifier as the reward.
One TRL step = ``per_device_train_batch_size = prompts × group`` completions generated with HF
``generate`` (``max_completion_length`` new tokens, temperature 1), rewards, group advantages and
one AdamW update (``num_iterations=1``, ``beta=0``: TRL's defaults, so no old/reference
log-prob pass). ``rollout_s`` is the time inside ``_generate_and_score_completions``; the rest
of the step is the update.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def build(args):
    import torch
    from datasets import Dataset
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from entropylab.rl import tasks as T

    torch.manual_seed(0)
    ctok = T.CharTokenizer()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab.update({c: i + 3 for i, c in enumerate(ctok.alphabet)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tok.padding_side = "left"
    hf_cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(hf_cfg).float()

    task = T.AdditionTask()
    n_steps = args.warmup + args.steps
    probs = task.sample(T.problem_rng(0, 0), args.prompts * n_steps, (2, 3))
    by_prompt = {p.prompt: p for p in probs}
    ds = Dataset.from_dict({"prompt": [p.prompt for p in probs]})

    def reward(prompts, completions, **kw):
        out = []
        for p, c in zip(prompts, completions):
            out.append(task.verify(by_prompt[p], c.replace("</s>", ""), finished=True))
        return out

    out_dir = tempfile.mkdtemp(prefix="trl_grpo_")
    cfg = GRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=args.prompts * args.group,
        gradient_accumulation_steps=1,
        num_generations=args.group,
        max_completion_length=args.new_tokens,
        temperature=1.0,
        learning_rate=3e-4,
        max_steps=n_steps,
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=tok
    )
    rec = {"step_s": [], "rollout_s": [], "completion_len": []}
    orig = trainer._generate_and_score_completions

    def timed(batch):
        t = time.perf_counter()
        out = orig(batch)
        rec["rollout_s"].append(time.perf_counter() - t)
        rec["completion_len"].append(float(out["completion_mask"].sum(1).float().mean()))
        return out

    trainer._generate_and_score_completions = timed

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            rec["step_s"].append(time.perf_counter() - self.t)

    trainer.add_callback(StepTimer())
    return trainer, rec


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)
    import torch
    import trl

    trainer, rec = build(args)
    trainer.train()
    w = args.warmup
    out = {
        "peer": f"TRL {trl.__version__} (torch {torch.__version__}, {torch.get_num_threads()} thr)",
        "step_s": rec["step_s"][w:],
        "rollout_s": rec["rollout_s"][w:],
        "completion_len": rec["completion_len"][w:],
    }
    print("PEER_JSON " + json.dumps(out))


if __name__ == "__main__":
    main()
