#!/usr/bin/env python3
"""Prompt and decode speed of odmoe against llama.cpp on the same GGUF file and CPU.

llama.cpp runs through llama-cpp-python (built from its source distribution as
docs/correctness.md's "Regenerating the fixtures" says); odmoe through
`target/release/odmoe generate`. Both read the same prompt (the same token count: both
tokenize with the file's own vocabulary), process it in one batch, then generate greedily;
each reports its own timings (llama.cpp's context counters, odmoe's `prompt:` and
`generated:` line), so process start-up and model loading are left out. Generation may stop early at the end
of text (each side's own greedy choice); the rates are per token either way. The two runs
alternate, `--reps` times each, and the best of each is kept: the machine is shared.

    /work/ref/venv/bin/python benches/vs_llamacpp.py MODEL.gguf [--prompt-tokens 256]
        [--tokens 64] [--threads 2] [--reps 3]
"""
import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prompt_text(n_words):
    """A prompt of plain words (the demo vocabulary's), about one token per word."""
    words = ("the king my lord and what is this that you have done to me sir good night "
             "for I will not be so bold as to say it but let us go").split()
    return " ".join(words[i % len(words)] for i in range(n_words))


def run_llamacpp(model, prompt, tokens, threads):
    import llama_cpp
    llm = llama_cpp.Llama(model_path=model, n_ctx=4096, n_batch=4096, n_ubatch=512, n_threads=threads,
                          n_threads_batch=threads, verbose=False, seed=1)
    ids = llm.tokenize(prompt.encode(), add_bos=True)
    llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
    out = llm.create_completion(ids, max_tokens=tokens, temperature=0.0, top_k=1)
    perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
    generated = out["usage"]["completion_tokens"]
    del llm
    # n_p_eval: prompt tokens in batches; n_eval: tokens decoded one at a time
    return (len(ids), perf.n_p_eval / (perf.t_p_eval_ms / 1e3), generated, perf.n_eval / (perf.t_eval_ms / 1e3))


def run_odmoe(model, prompt, tokens, threads):
    binary = os.path.join(ROOT, "target", "release", "odmoe")
    env = dict(os.environ, ODMOE_THREADS_COMPUTE=str(threads))
    r = subprocess.run([binary, "generate", "--model", model, "--prompt", prompt, "--max-tokens", str(tokens),
                        "--temperature", "0"], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"odmoe generate failed:\n{r.stderr}")
    m = re.search(r"prompt: (\d+) tokens in [\d.]+ s \(([\d.]+) tokens/s\); generated: (\d+) tokens in [\d.]+ s \(([\d.]+) tokens/s\)", r.stderr)
    if not m:
        sys.exit(f"no timings in odmoe's output:\n{r.stderr}")
    return (int(m.group(1)), float(m.group(2)), int(m.group(3)), float(m.group(4)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--prompt-tokens", type=int, default=256, help="about this many prompt tokens")
    ap.add_argument("--tokens", type=int, default=64, help="tokens to generate")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    prompt = prompt_text(a.prompt_tokens)
    best = {"llama.cpp": None, "odmoe": None}
    for _ in range(a.reps):
        for name, run in (("llama.cpp", run_llamacpp), ("odmoe", run_odmoe)):
            n_prompt, pp, n_gen, tg = run(a.model, prompt, a.tokens, a.threads)
            b = best[name]
            best[name] = (n_prompt, max(pp, b[1]) if b else pp, n_gen, max(tg, b[3]) if b else tg)
    (lp, lpp, lg, ltg), (op, opp, og, otg) = best["llama.cpp"], best["odmoe"]
    print(f"model: {a.model}; {a.threads} threads; best of {a.reps}")
    print("| | prompt tokens | prompt tokens/s | generated | decode tokens/s |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| llama.cpp | {lp} | {lpp:.1f} | {lg} | {ltg:.1f} |")
    print(f"| odmoe | {op} | {opp:.1f} ({opp / lpp:.2f}x) | {og} | {otg:.1f} ({otg / ltg:.2f}x) |")


if __name__ == "__main__":
    main()
