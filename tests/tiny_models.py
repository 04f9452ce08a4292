"""Tiny random causal LMs with a real tokenizer, built in a temporary folder in milliseconds.

`make_tiny_model(folder, kind)` writes a Hugging Face folder (config, safetensors weights,
tokenizer with a chat template) for one of `KINDS`:
- ``llama``: grouped-query attention (4 heads, 2 KV heads), untied embeddings;
- ``qwen2``: tied input and output embeddings, biases on q/k/v;
- ``gpt2``: GPT-2's Conv1D linears, tied embeddings.
Sizes are chosen so every linear has at least 64 x 64 elements and 4-bit blocks are exercised.
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("llama", "qwen2", "gpt2")

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "QLoRA fine-tunes a frozen 4-bit base model with low-rank adapters.",
    "Instruction: say hello. Response: Hello there, friend!",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ! ? : ; ' \" ( ) [ ] { }",
]


def make_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained on a few sentences, with pad/eos and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|pad|>", "<|endoftext|>", "<|end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(kind: str, vocab_size: int, **token_ids):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    if kind == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=False,
            **token_ids,
        )
    if kind == "qwen2":
        return Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            **token_ids,
        )
    if kind == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=256,
            tie_word_embeddings=True,
            **token_ids,
        )
    raise ValueError(f"unknown tiny model kind {kind!r}; use one of {KINDS}")


def build_tiny_model(kind: str = "llama", seed: int = 0):
    """A random tiny model of ``kind`` in memory: (tokenizer, config, model)."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = make_tokenizer()
    config = _config(
        kind,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    return tokenizer, config, AutoModelForCausalLM.from_config(config)


def make_tiny_model(folder: Path, kind: str = "llama", seed: int = 0) -> Path:
    """Write a random tiny model of ``kind`` with its tokenizer to ``folder``; returns it."""
    folder = Path(folder)
    tokenizer, _, model = build_tiny_model(kind, seed)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
