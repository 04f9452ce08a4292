"""A tiny llama GGUF (float32 tensors, byte-level BPE tokenizer) written with gguf-py.

`make_tiny_gguf(path)` writes the tiny llama of tiny_models.py as llama.cpp's converter would
(q/k rows permuted, GGUF tensor names, tokenizer in GGUF metadata) and returns the model's
state dict, so a test can check that converting the GGUF back gives the same weights.
"""

from __future__ import annotations

from pathlib import Path

from tiny_models import build_tiny_model


def _permute(w, n_head: int):
    # llama.cpp's convert_hf_to_gguf permutation of q/k rows (transformers undoes it)
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, dim, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def make_tiny_gguf(path: Path, seed: int = 0) -> dict:
    import gguf

    tokenizer, config, model = build_tiny_model("llama", seed)
    state = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokenizer))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])
    backend = tokenizer.backend_tokenizer.to_str()
    import json

    merges = json.loads(backend)["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for i in range(config.num_hidden_layers):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    for hf_name, tensor in state.items():
        array = tensor.numpy()
        if hf_name.endswith("q_proj.weight"):
            array = _permute(array, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            array = _permute(array, config.num_key_value_heads)
        writer.add_tensor(names[hf_name], array.copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return state
