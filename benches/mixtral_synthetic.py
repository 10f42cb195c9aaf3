# Writes a Mixtral-shaped synthetic model with random Q8_0 weights (hidden 1024, 8 layers,
# 8 experts top-2, expert FFN 3584, 16/4 heads, vocabulary 32000): 0.84 GB, larger than
# the last-level cache and small enough for memory, for batching figures on a model whose
# steps are bound by reading weights:
#
#   python benches/mixtral_synthetic.py OUT.gguf     # needs numpy and gguf (gguf-py)
#   ODMOE_BENCH_MODEL=OUT.gguf ODMOE_BENCH_STEPS=32 ODMOE_BENCH_LEVELS=1,16 \
#     cargo bench --bench batch_step
#
# (Its tokenizer is a placeholder: the model is for `batch_step`, not for text.)
import sys
import numpy as np, gguf
rng = np.random.default_rng(7)
H, L, E, FF, NH, NKV, V = 1024, 8, 8, 3584, 16, 4, 32000
HD = H // NH
w = gguf.GGUFWriter(sys.argv[1], 'llama')
w.add_block_count(L); w.add_context_length(4096); w.add_embedding_length(H); w.add_feed_forward_length(FF)
w.add_head_count(NH); w.add_head_count_kv(NKV); w.add_rope_freq_base(10000.0); w.add_layer_norm_rms_eps(1e-5)
w.add_expert_count(E); w.add_expert_used_count(2); w.add_vocab_size(V); w.add_rope_dimension_count(HD)
w.add_tokenizer_model('gpt2'); w.add_token_list([f't{i}'.encode() for i in range(V)]); w.add_token_types([1]*V)
w.add_token_merges([]); w.add_bos_token_id(1); w.add_eos_token_id(2)
def q8(shape, scale):
    # shape in numpy order (..., rows, cols); Q8_0 blocks along the last axis
    n = int(np.prod(shape)) // 32
    d = np.full((n, 1), scale, dtype=np.float16).view(np.uint8)
    q = rng.integers(-127, 128, size=(n, 32), dtype=np.int8).view(np.uint8)
    return np.concatenate([d, q], axis=1).reshape(list(shape[:-1]) + [shape[-1] // 32 * 34])
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
    add_q8(p + 'ffn_gate_exps.weight', (E, FF, H), 1e-3)
    add_q8(p + 'ffn_up_exps.weight', (E, FF, H), 1e-3)
    add_q8(p + 'ffn_down_exps.weight', (E, H, FF), 1e-3)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print('wrote', sys.argv[1])
