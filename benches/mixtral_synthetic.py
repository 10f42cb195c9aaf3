# Writes a Mixtral-shaped synthetic model with random Q8_0 weights (hidden 1024, 8 layers,
# 8 experts top-2, expert FFN 3584, 16/4 heads) and the demo model's tokenizer (vocabulary
# 4096): 0.78 GB, larger than the last-level cache and small enough for memory, for
# batching figures on a model whose steps are bound by reading weights, in the engine and
# through the server (its text is noise):
#
#   python benches/mixtral_synthetic.py OUT.gguf [q4_k|q4_k_m]   # needs numpy and gguf (gguf-py)
#
# With `q4_k` the experts are Q4_K instead (0.43 GB in all), the format of the usual
# Q4_K_M files; with `q4_k_m` their down projections are Q6_K, as in half of a Q4_K_M
# file's layers.
#   ODMOE_BENCH_MODEL=OUT.gguf ODMOE_BENCH_STEPS=32 ODMOE_BENCH_LEVELS=1,16 \
#     cargo bench --bench batch_step
#   ODMOE_LOAD_MODEL=OUT.gguf cargo bench -p odmoe-actors --bench load
import os, sys
import numpy as np, gguf
import gguf_field  # beside this script
rng = np.random.default_rng(7)
demo = gguf.GGUFReader(os.path.join(os.path.dirname(__file__), '..', 'models', 'odmoe-demo-shakespeare-Q8_0.gguf'))
def field(name):
    return gguf_field.field(demo, name)
tokens = field('tokenizer.ggml.tokens')
H, L, E, FF, NH, NKV, V = 1024, 8, 8, 3584, 16, 4, len(tokens)
HD = H // NH
w = gguf.GGUFWriter(sys.argv[1], 'llama')
w.add_block_count(L); w.add_context_length(4096); w.add_embedding_length(H); w.add_feed_forward_length(FF)
w.add_head_count(NH); w.add_head_count_kv(NKV); w.add_rope_freq_base(10000.0); w.add_layer_norm_rms_eps(1e-5)
w.add_expert_count(E); w.add_expert_used_count(2); w.add_vocab_size(V); w.add_rope_dimension_count(HD)
w.add_tokenizer_model(field('tokenizer.ggml.model')); w.add_tokenizer_pre(field('tokenizer.ggml.pre'))
w.add_token_list(tokens); w.add_token_types(field('tokenizer.ggml.token_type')); w.add_token_merges(field('tokenizer.ggml.merges'))
w.add_bos_token_id(field('tokenizer.ggml.bos_token_id')); w.add_eos_token_id(field('tokenizer.ggml.eos_token_id'))
w.add_unk_token_id(field('tokenizer.ggml.unknown_token_id')); w.add_add_bos_token(field('tokenizer.ggml.add_bos_token'))
w.add_chat_template(field('tokenizer.chat_template'))
def q8(shape, scale):
    # shape in numpy order (..., rows, cols); Q8_0 blocks along the last axis
    n = int(np.prod(shape)) // 32
    d = np.full((n, 1), scale, dtype=np.float16).view(np.uint8)
    q = rng.integers(-127, 128, size=(n, 32), dtype=np.int8).view(np.uint8)
    return np.concatenate([d, q], axis=1).reshape(list(shape[:-1]) + [shape[-1] // 32 * 34])
def q4_k(shape, scale):
    # 144-byte super-blocks of 256 along the last axis: f16 d and dmin, 12 bytes of
    # packed 6-bit scales and mins (random), 128 bytes of nibbles (random)
    n = int(np.prod(shape)) // 256
    d = np.full((n, 1), scale, dtype=np.float16).view(np.uint8)
    dmin = np.full((n, 1), scale / 4, dtype=np.float16).view(np.uint8)
    rest = rng.integers(0, 256, size=(n, 140), dtype=np.uint8)
    return np.concatenate([d, dmin, rest], axis=1).reshape(list(shape[:-1]) + [shape[-1] // 256 * 144])
def q6_k(shape, scale):
    # 210-byte super-blocks of 256: 128 bytes of low nibbles, 64 of high bit pairs and 16
    # int8 scales (random), then the f16 d
    n = int(np.prod(shape)) // 256
    rest = rng.integers(0, 256, size=(n, 208), dtype=np.uint8)
    d = np.full((n, 1), scale, dtype=np.float16).view(np.uint8)
    return np.concatenate([rest, d], axis=1).reshape(list(shape[:-1]) + [shape[-1] // 256 * 210])
MODE = sys.argv[2] if len(sys.argv) > 2 else 'q8_0'
EXPERT_Q4_K = MODE in ('q4_k', 'q4_k_m')
def add_expert(name, shape, scale):
    if MODE == 'q4_k_m' and 'down' in name:
        w.add_tensor(name, q6_k(shape, scale), raw_dtype=gguf.GGMLQuantizationType.Q6_K)
    elif EXPERT_Q4_K:
        w.add_tensor(name, q4_k(shape, scale), raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    else:
        add_q8(name, shape, scale)
def add_q8(name, shape, scale):
    w.add_tensor(name, q8(shape, scale), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
add_q8('token_embd.weight', (V, H), 2e-3)
add_q8('output.weight', (V, H), 1e-3)
w.add_tensor('output_norm.weight', np.ones(H, dtype=np.float32))
for l in range(L):
    p = f'blk.{l}.'
    w.add_tensor(p + 'attn_norm.weight', np.ones(H, dtype=np.float32))
    w.add_tensor(p + 'ffn_norm.weight', np.ones(H, dtype=np.float32))
    add_q8(p + 'attn_q.weight', (H, H), 1e-3)
    add_q8(p + 'attn_k.weight', (NKV * HD, H), 1e-3)
    add_q8(p + 'attn_v.weight', (NKV * HD, H), 1e-3)
    add_q8(p + 'attn_output.weight', (H, H), 1e-3)
    w.add_tensor(p + 'ffn_gate_inp.weight', rng.standard_normal((E, H)).astype(np.float32) * 0.05)
    add_expert(p + 'ffn_gate_exps.weight', (E, FF, H), 1e-3)
    add_expert(p + 'ffn_up_exps.weight', (E, FF, H), 1e-3)
    add_expert(p + 'ffn_down_exps.weight', (E, H, FF), 1e-3)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print('wrote', sys.argv[1])
