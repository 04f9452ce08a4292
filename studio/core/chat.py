"""Generating with a finished adapter bundle, for ``qlora-studio chat`` and the chat panel.

`load_chat_model` loads the bundle's base model the way it was trained (the bundle's own
``quantization_config.json`` and compute dtype), applies the adapter with
``PeftModel.from_pretrained`` and returns a `ChatModel`. `ChatModel.generate` answers one
prompt greedily through the tokenizer's chat template, with the adapter or, for comparison,
with it disabled (the bare base model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from studio.core.bundle import BundleInfo, read_bundle

DEFAULT_MAX_NEW_TOKENS = 128


@dataclass
class ChatModel:
    """A base model with the bundle's adapter applied, ready to generate."""

    model: object  # peft.PeftModel
    tokenizer: object
    bundle: BundleInfo
    device: str
    compute_dtype: str

    @property
    def context_length(self) -> int | None:
        """The most tokens (prompt and reply) the base model takes, when its config says."""
        config = getattr(self.model, "config", None)
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        value = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        return int(value) if isinstance(value, int) and value > 0 else None

    def prompt_text(self, prompt: str, history: list[dict] | None = None) -> str:
        """The model input for ``prompt`` (after ``history``): the chat template with the
        generation prompt, or the bare prompt for a tokenizer without a template."""
        messages = [*(history or []), {"role": "user", "content": prompt}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return prompt

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        adapter: bool = True,
        history: list[dict] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> str:
        """The reply to ``prompt`` (greedy). ``adapter=False`` answers with the bare base model.
        ``on_text`` receives the reply piece by piece while it is generated."""
        import torch

        tokenizer = self.tokenizer
        text = self.prompt_text(prompt, history)
        templated = bool(getattr(tokenizer, "chat_template", None))
        encoded = tokenizer(text, return_tensors="pt", add_special_tokens=not templated)
        encoded = {k: v.to(self.device) for k, v in encoded.items()}
        limit = self.context_length
        if limit:  # never generate past the model's context: it only degrades, and slowly
            max_new_tokens = max(1, min(max_new_tokens, limit - encoded["input_ids"].shape[1]))
        streamer = _callback_streamer(tokenizer, on_text) if on_text else None
        pad = (
            tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else (tokenizer.eos_token_id)
        )
        disabled = self.model.disable_adapter() if not adapter else contextlib.nullcontext()
        with torch.inference_mode(), disabled:
            output = self.model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
                streamer=streamer,
            )
        new_tokens = output[0, encoded["input_ids"].shape[1] :]
        return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def _callback_streamer(tokenizer, on_text: Callable[[str], None]):
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def load_chat_model(
    bundle_path: str | Path,
    *,
    device: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> ChatModel:
    """Load the bundle at ``bundle_path`` onto ``device`` (``auto``, ``cpu``, ``cuda:N``).

    Raises `studio.core.bundle.BundleError` for an incomplete bundle, `ModelSourceError` when
    the base model cannot be found, `QuantError` for a device that cannot be used.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from studio.core import gpu, models, quant

    say = progress or (lambda message: None)
    info = read_bundle(bundle_path)
    recipe = info.recipe
    target = quant.resolve_device(device, gpu.discover_gpus())
    try:
        dtype = quant.resolve_compute_dtype(recipe.quantization.compute_dtype, target)
    except quant.QuantError:
        dtype = quant.resolve_compute_dtype("auto", target)  # e.g. bf16 bundle on an old GPU
    say(f"finding the base model {recipe.model.source}")
    base_path = _base_model_path(info, models, say)
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    kwargs: dict = {
        "dtype": getattr(torch, dtype),
        "device_map": {"": target.torch_device},
        "trust_remote_code": recipe.model.trust_remote_code,
    }
    if info.quantization_config:
        bnb = dict(info.quantization_config)
        if "bnb_4bit_compute_dtype" in bnb:
            bnb["bnb_4bit_compute_dtype"] = dtype
        kwargs["quantization_config"] = BitsAndBytesConfig(**bnb)
    say(f"loading the base model on {target.name}")
    base = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
    say("applying the adapter")
    model = PeftModel.from_pretrained(base, str(info.path))
    model.eval()
    return ChatModel(model, tokenizer, info, target.torch_device, dtype)


def _base_model_path(info: BundleInfo, models, say) -> Path:
    """The base model folder: the recipe's source resolved again, else the folder recorded in
    the manifest when the bundle was made."""
    trust = info.recipe.model.trust_remote_code
    try:
        return models.resolve_model(
            info.recipe.model.source, progress=None, trust_remote_code=trust
        ).path
    except models.ModelSourceError:
        recorded = info.base_model_path
        if recorded and Path(recorded, "config.json").is_file():
            models.check_model_folder(recorded, trust)  # the same checks as any source
            say(f"using the recorded base model folder {recorded}")
            return Path(recorded)
        raise
