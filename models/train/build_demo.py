#!/usr/bin/env python3
"""Turn the trained demo checkpoint into the shipped GGUF and check it against llama.cpp.

1. convert OUT/hf with llama.cpp's convert_hf_to_gguf.py (F32), labelling the tokenizer's
   pre-tokenizer "gpt-2" (it was trained with GPT-2's byte-level regex),
2. quantize to Q8_0 with llama.cpp's quantizer -> models/odmoe-demo-shakespeare-Q8_0.gguf,
3. record llama.cpp's logits on a fixed prompt (tests/fixtures/ref/demo.llamacpp.json) and a
   greedy sample, so odmoe can be checked against llama.cpp on the shipped file.

Usage: python build_demo.py --run OUT --llama-cpp PATH/TO/vendor/llama.cpp
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "gen"))
import gen_models as gm  # noqa: E402

NAME = "odmoe-demo-shakespeare-Q8_0.gguf"
PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET:\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="output folder of train_demo.py")
    ap.add_argument("--llama-cpp", type=Path, required=True)
    a = ap.parse_args()
    import llama_cpp as lc

    f32 = a.run / "demo.f32.gguf"
    os.environ["ODMOE_TOKENIZER_PRE"] = "gpt-2"
    gm.convert(a.llama_cpp.resolve(), a.run / "hf", f32, "f32")
    out = ROOT / "models" / NAME
    params = lc.llama_model_quantize_default_params()
    params.ftype = 7  # Q8_0
    params.nthread = 2
    assert lc.llama_model_quantize(str(f32).encode(), str(out).encode(), params) == 0
    print(f"{out.relative_to(ROOT)}: {out.stat().st_size / 1e6:.1f} MB")

    llm = lc.Llama(model_path=str(out), n_ctx=256, logits_all=True, type_k=0, type_v=0, n_threads=2, verbose=False)
    tokens = llm.tokenize(PROMPT.encode(), add_bos=False, special=False)
    llm.eval(tokens)
    logits = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    llm.reset()
    sample = llm.create_completion("ROMEO:\n", max_tokens=80, temperature=0.0)["choices"][0]["text"]
    print("llama.cpp greedy sample:\nROMEO:\n" + sample)
    (ROOT / "tests" / "fixtures" / "ref" / "demo.llamacpp.json").write_text(json.dumps({
        "source": f"llama.cpp via llama-cpp-python {lc.__version__}, F32 KV cache", "model": NAME,
        "prompt": PROMPT, "tokens": tokens, "logits": logits.tolist(),
        "greedy_prompt": "ROMEO:\n", "greedy_text": sample}))
    stats = json.loads((a.run / "training.json").read_text())
    stats.pop("log", None)
    (ROOT / "models" / "train" / "training.json").write_text(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
