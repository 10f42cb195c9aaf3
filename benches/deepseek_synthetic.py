# Writes a DeepSeek-shaped synthetic model (latent attention, 64 heads like Kimi-K2's,
# kv-LoRA rank 512, rope 64, nope 128, value 128; hidden 1024, 4 layers, the first dense,
# 8 routed experts of 512 with two per token and one shared) with random f32 weights and
# the tokenizer of the DeepSeek-V2-Lite-shaped test fixture: 0.5 GB, for timing latent
# attention at long contexts (its text is noise):
#
#   python benches/deepseek_synthetic.py OUT.gguf     # needs numpy and gguf (gguf-py)
#   target/release/odmoe generate --model OUT.gguf --prompt "$(python3 -c \
#     'print(" ".join(["the king"] * 1000))')" --max-tokens 16
import os, sys
import numpy as np, gguf
import gguf_field  # beside this script
rng = np.random.default_rng(11)
src = gguf.GGUFReader(os.path.join(os.path.dirname(__file__), '..', 'tests', 'fixtures', 'models', 'deepseek2lite.f32.gguf'))
def field(name):
    return gguf_field.field(src, name)
tokens = field('tokenizer.ggml.tokens')
H, L, NH, LORA, ROPE, NOPE, VD, E, EFF, DFF, V = 1024, 4, 64, 512, 64, 128, 128, 8, 512, 1024, len(tokens)
w = gguf.GGUFWriter(sys.argv[1], 'deepseek2')
w.add_block_count(L); w.add_context_length(8192); w.add_embedding_length(H); w.add_feed_forward_length(DFF)
w.add_head_count(NH); w.add_head_count_kv(1); w.add_rope_freq_base(10000.0); w.add_layer_norm_rms_eps(1e-6)
w.add_expert_count(E); w.add_expert_used_count(2); w.add_vocab_size(V)
w.add_uint32('deepseek2.expert_group_count', 1); w.add_uint32('deepseek2.expert_group_used_count', 1)
w.add_key_length(LORA + ROPE); w.add_value_length(LORA)
w.add_uint32('deepseek2.leading_dense_block_count', 1)
w.add_uint32('deepseek2.attention.kv_lora_rank', LORA)
w.add_uint32('deepseek2.attention.key_length_mla', NOPE + ROPE); w.add_uint32('deepseek2.attention.value_length_mla', VD)
w.add_uint32('deepseek2.expert_feed_forward_length', EFF); w.add_uint32('deepseek2.expert_shared_count', 1)
w.add_float32('deepseek2.expert_weights_scale', 1.0); w.add_rope_dimension_count(ROPE)
w.add_tokenizer_model(field('tokenizer.ggml.model')); w.add_tokenizer_pre(field('tokenizer.ggml.pre'))
w.add_token_list(tokens); w.add_token_types(field('tokenizer.ggml.token_type')); w.add_token_merges(field('tokenizer.ggml.merges'))
w.add_bos_token_id(field('tokenizer.ggml.bos_token_id')); w.add_eos_token_id(field('tokenizer.ggml.eos_token_id'))
w.add_unk_token_id(field('tokenizer.ggml.unknown_token_id'))
def t(name, shape, scale):
    w.add_tensor(name, (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32))
t('token_embd.weight', (V, H), 0.02); t('output.weight', (V, H), 0.02)
w.add_tensor('output_norm.weight', np.ones(H, dtype=np.float32))
for l in range(L):
    p = f'blk.{l}.'
    w.add_tensor(p + 'attn_norm.weight', np.ones(H, dtype=np.float32))
    w.add_tensor(p + 'ffn_norm.weight', np.ones(H, dtype=np.float32))
    w.add_tensor(p + 'attn_kv_a_norm.weight', np.ones(LORA, dtype=np.float32))
    t(p + 'attn_q.weight', (NH * (NOPE + ROPE), H), 0.03)
    t(p + 'attn_kv_a_mqa.weight', (LORA + ROPE, H), 0.03)
    t(p + 'attn_k_b.weight', (NH, LORA, NOPE), 0.03)
    t(p + 'attn_v_b.weight', (NH, VD, LORA), 0.03)
    t(p + 'attn_output.weight', (H, NH * VD), 0.01)
    if l == 0:
        t(p + 'ffn_gate.weight', (DFF, H), 0.03); t(p + 'ffn_up.weight', (DFF, H), 0.03); t(p + 'ffn_down.weight', (H, DFF), 0.03)
    else:
        t(p + 'ffn_gate_inp.weight', (E, H), 0.05)
        t(p + 'ffn_gate_exps.weight', (E, EFF, H), 0.03); t(p + 'ffn_up_exps.weight', (E, EFF, H), 0.03); t(p + 'ffn_down_exps.weight', (E, H, EFF), 0.03)
        t(p + 'ffn_gate_shexp.weight', (EFF, H), 0.03); t(p + 'ffn_up_shexp.weight', (EFF, H), 0.03); t(p + 'ffn_down_shexp.weight', (H, EFF), 0.03)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print('wrote', sys.argv[1])
