#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target into fuzz/corpus/<target>/ (committed; the
fuzzers add what they find to it when run with it as their corpus directory).

    python3 fuzz/seeds.py
"""
import json
import os
import struct

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)


def put(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def tiny_gguf():
    """A valid GGUF v3: metadata of every kind (an array among them), two tensors."""
    kv = []
    kv.append(gguf_string("general.architecture") + struct.pack("<I", 8) + gguf_string("llama"))
    kv.append(gguf_string("llama.block_count") + struct.pack("<II", 4, 2))
    kv.append(gguf_string("llama.rope.freq_base") + struct.pack("<If", 6, 10000.0))
    kv.append(gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3) + b"".join(gguf_string(t) for t in ["<s>", "a", "b"]))
    kv.append(gguf_string("general.alignment") + struct.pack("<II", 4, 32))
    infos = b""
    infos += gguf_string("a.weight") + struct.pack("<IQQ", 2, 8, 2) + struct.pack("<IQ", 0, 0)
    infos += gguf_string("b.weight") + struct.pack("<IQ", 1, 32) + struct.pack("<IQ", 8, 64)
    head = b"GGUF" + struct.pack("<IQQ", 3, 2, len(kv)) + b"".join(kv) + infos
    head += b"\0" * (-len(head) % 32)
    data = struct.pack("<16f", *range(16)) + b"\0" * 32 + b"\0" * 34
    return head + data


put("gguf_header", "tiny.gguf", tiny_gguf())
with open(os.path.join(root, "models/odmoe-demo-shakespeare-Q8_0.gguf"), "rb") as f:
    put("gguf_header", "demo-head.gguf", f.read(8192))

layer = {"layer": 1, "file": "experts-001.bin", "n_expert": 2, "record_bytes": 65536,
         "gate": {"ty": "Q8_0", "rows": 64, "cols": 32, "bytes": 2176},
         "up": {"ty": "Q8_0", "rows": 64, "cols": 32, "bytes": 2176},
         "down": {"ty": "Q8_0", "rows": 32, "cols": 64, "bytes": 2176}, "crc32": [1, 2]}
manifest = {"format": "odmoe-expert-store", "version": 1,
            "source": {"files": ["m.gguf"], "bytes": 1, "sha256": "00"},
            "metadata": [["general.architecture", {"type": "string", "value": "llama"}],
                         ["llama.block_count", {"type": "u32", "value": 2}],
                         ["a", {"type": "array", "value": [{"type": "f32", "value": 1.5}]}]],
            "layers": [layer], "base_crc32": 7}
put("store_manifest", "small.json", json.dumps(manifest))

for i, t in enumerate(["ROMEO:\nBut soft, what light through yonder window breaks?",
                       "USER: hello</s><s>SYSTEM: <|im_end|> 日本語 🎭 \t\r\n  spaces",
                       "é\u0301 \u0000 \x7f"]):
    put("tokenizer", f"text{i}", t)

cases = json.load(open(os.path.join(root, "tests/fixtures/chat/cases.json")))
for i, c in enumerate(cases["cases"][:6]):
    put("chat_template", f"case{i}", bytes([i]) + json.dumps(c["messages"]).encode())

for i, body in enumerate([
        {"prompt": "ROMEO:", "max_tokens": 8, "temperature": 0.5, "stream": True, "stop": ["\n"]},
        {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 4, "seed": 3,
         "stream_options": {"include_usage": True}, "tools": [{"type": "function"}]},
        {"prompt": ["x"], "n": 1, "top_p": 0.9, "presence_penalty": 0.1, "frequency_penalty": -0.1}]):
    put("openai_request", f"body{i}", json.dumps(body))
