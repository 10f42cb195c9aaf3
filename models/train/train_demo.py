#!/usr/bin/env python3
"""Train odmoe's demo model: a small Mixtral-architecture MoE (8 experts, top-2) on
Shakespeare, on the CPU, seeded and reproducible.

Steps: tokenizer (byte-level BPE, GPT-2 pre-tokenizer) -> model -> training with the
Switch/Mixtral load-balancing loss -> held-out loss -> Hugging Face checkpoint in OUT/hf.
Conversion to GGUF and quantization are done by build_demo.py.

Usage: python train_demo.py --corpus DIR --out DIR [--steps N]
"""
import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

SEED = 20261126
VOCAB = 4096
CTX = 256
CONFIG = dict(
    vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
    num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=CTX * 4,
    num_local_experts=8, num_experts_per_tok=2, router_aux_loss_coef=0.02,
    output_router_logits=True, rms_norm_eps=1e-5, rope_theta=10000.0,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, initializer_range=0.02,
)
# A chat template that turns a conversation into a scene: the user speaks as USER, the
# model answers as a character of the plays.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}USER:\n{{ m['content'] }}\n\n"
    "{% else %}{{ m.get('name', 'HAMLET') | upper }}:\n{{ m['content'] }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}HAMLET:\n{% endif %}"
)


def train_tokenizer(text: str, out: Path) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # GPT-2's byte-level pre-tokenizer (its regex), which llama.cpp knows as "gpt-2"
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text[i:i + 100_000] for i in range(0, len(text), 100_000)], trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": CTX * 4, "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE}, indent=1))
    return tok


def encode(tok: Tokenizer, text: str) -> np.ndarray:
    ids = []
    for chunk in text.split("\n\n"):
        ids.extend(tok.encode(chunk + "\n\n").ids)
    return np.array(ids, dtype=np.int64)


@torch.no_grad()
def evaluate(model, data: np.ndarray, batches: int, rng: np.random.Generator) -> float:
    model.eval()
    losses = []
    for _ in range(batches):
        x = batch(data, 16, rng)
        losses.append(model(input_ids=x, labels=x).loss.item() - 0.0)
    model.train()
    return float(np.mean(losses))


def batch(data: np.ndarray, bs: int, rng: np.random.Generator) -> torch.Tensor:
    idx = rng.integers(0, len(data) - CTX - 1, bs)
    return torch.from_numpy(np.stack([data[i:i + CTX] for i in idx]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, required=True, help="folder with train.txt and heldout.txt (prepare_corpus.py)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    a = ap.parse_args()

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    train_text = (a.corpus / "train.txt").read_text()
    held_text = (a.corpus / "heldout.txt").read_text()
    hf = a.out / "hf"
    tok = train_tokenizer(train_text, hf)
    train = encode(tok, train_text)
    held = encode(tok, held_text)
    print(f"tokens: {len(train)} train, {len(held)} held out")

    model = tf.MixtralForCausalLM(tf.MixtralConfig(**CONFIG))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params / 1e6:.2f} M")
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, a.steps // 30)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / a.steps)))))
    rng = np.random.default_rng(SEED)
    eval_rng = np.random.default_rng(SEED + 1)
    log = []
    t0 = time.time()
    bar = tqdm(range(a.steps), desc="training", unit="step")
    for step in bar:
        x = batch(train, a.batch, rng)
        out = model(input_ids=x, labels=x)
        loss = out.loss  # includes router_aux_loss_coef * load-balancing loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        lm = loss.item() - CONFIG["router_aux_loss_coef"] * out.aux_loss.item()
        bar.set_postfix(loss=f"{lm:.3f}", aux=f"{out.aux_loss.item():.3f}")
        if step % 250 == 0 or step == a.steps - 1:
            log.append({"step": step, "train_loss": lm, "aux_loss": out.aux_loss.item(), "seconds": time.time() - t0})
    train_loss = evaluate(model, train, 20, eval_rng)
    held_loss = evaluate(model, held, 20, eval_rng)
    # unigram baseline on the held-out text (add-one smoothed counts of the training tokens)
    counts = np.bincount(train, minlength=VOCAB) + 1
    logp = np.log(counts / counts.sum())
    unigram = float(-logp[held].mean())
    summary = {
        "seed": SEED, "config": CONFIG, "steps": a.steps, "batch": a.batch, "context": CTX, "lr": a.lr,
        "parameters": n_params, "tokens_seen": a.steps * a.batch * CTX,
        "train_tokens": int(len(train)), "heldout_tokens": int(len(held)),
        "train_loss": train_loss, "heldout_loss": held_loss, "heldout_perplexity": math.exp(held_loss),
        "unigram_heldout_loss": unigram, "unigram_heldout_perplexity": math.exp(unigram),
        "minutes": (time.time() - t0) / 60, "log": log,
    }
    model.config.output_router_logits = False
    model.save_pretrained(hf, safe_serialization=True)
    (a.out / "training.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("log", "config")}, indent=1))


if __name__ == "__main__":
    main()
