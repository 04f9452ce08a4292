"""Building the pieces of a run from a recipe: k-bit preparation, the LoRA wrapper, the
Trainer's arguments, and measuring the peak memory afterwards."""

from __future__ import annotations

import dataclasses
import os
import sys

from studio.core.recipe import Recipe


def prepare_for_training(model, *, quantized: bool, upcast: bool, gradient_checkpointing: bool):
    """PEFT's k-bit preparation, with or without its fp32 upcast of non-quantized weights.

    With ``upcast`` on a quantized model this is ``peft.prepare_model_for_kbit_training``.
    Without it (or for an unquantized model) it does the same minus the cast: freeze every
    parameter, and turn on gradient checkpointing (non-reentrant, so the frozen embeddings
    need no input-gradient hook).
    """
    checkpointing_kwargs = {"use_reentrant": False}
    if quantized and upcast:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing_kwargs,
        )
    for param in model.parameters():
        param.requires_grad = False
    if gradient_checkpointing:
        # transformers 5.2x renamed gradient to activation checkpointing; older 5.x lack it.
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs=checkpointing_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs)
    return model


def keep_4bit_weights_trainable(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a `Linear4bit` weight the first
    time the layer runs in eval mode without gradients (an evaluation, a generation) and
    from then on uses a kernel without autograd support: every later training step gets
    wrong gradients, silently (measured on a tiny llama: lora_A's gradient norm 0.0323
    before, 0.0251 after one evaluation forward). Returns how many layers were changed.
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def apply_lora(model, lora):
    """Wrap ``model`` in a PEFT LoRA model built from the recipe's ``[lora]`` section."""
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def training_arguments(recipe: Recipe, output_dir: str, torch_device: str, *, has_validation: bool):
    """The `TrainingArguments` for ``recipe``: every value from the recipe, nothing reported
    to outside services, mixed precision per the resolved compute dtype."""
    from transformers import TrainingArguments

    t = recipe.training
    on_cpu = torch_device == "cpu"
    dtype = recipe.quantization.compute_dtype
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    prefix = "activation" if "activation_checkpointing" in names else "gradient"
    checkpointing = {
        f"{prefix}_checkpointing": t.gradient_checkpointing,
        f"{prefix}_checkpointing_kwargs": {"use_reentrant": False},
    }
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        optim=t.optimizer,
        seed=t.seed,
        data_seed=t.seed,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if has_validation else "no",
        eval_steps=t.eval_steps if has_validation else None,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        # Mixed-precision autocast only on GPUs: on the CPU it made a QLoRA step several times
        # slower (measured on the built-in model). Without it the 4-bit matmuls still compute
        # in the compute dtype (bitsandbytes casts to it); the rest runs in its own dtype.
        bf16=dtype == "bfloat16" and not on_cpu,
        fp16=dtype == "float16" and not on_cpu,
        use_cpu=on_cpu,
        **checkpointing,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=not on_cpu,
        report_to="none",
        disable_tqdm=True,
        save_only_model=False,
    )


def _proc_status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux) in bytes, or None where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cuda_context_bytes(torch_device: str) -> dict:
    """What this process holds on the GPU besides torch's reserved blocks, and NVML's view.

    NVML's per-process figure (what nvidia-smi shows for the engine) is the CUDA context,
    torch's reserved memory and CUDA managed memory (paged optimizer state) together, so the
    context (with any managed memory) is that figure minus what torch has reserved now. None
    where NVML cannot say (no nvidia-ml-py, Windows WDDM).
    """
    import torch

    from studio.core import gpu

    reserved = int(torch.cuda.memory_reserved(torch_device))
    index = torch.device(torch_device).index or 0
    nvml_bytes = gpu.process_gpu_memory(index, os.getpid())
    context = None if nvml_bytes is None else max(nvml_bytes - reserved, 0)
    return {"nvml_process_bytes": nvml_bytes, "cuda_context_bytes": context}


def measure_peak(torch_device: str) -> dict:
    """The exact measured peak of this (the engine) process, read at the end of training.

    CPU (Linux): ``VmHWM``, the kernel's high-water mark of this process's resident memory,
    exact rather than sampled. It includes the Python runtime and libraries (the estimate's
    ``cpu_runtime`` term). ``ru_maxrss`` is not used on Linux: in a process started by
    fork + exec (the engine is a spawn child) it also carries the *parent's* high-water mark
    from before the exec, so a large parent (the window, a test runner) inflated it.
    CUDA: torch's peak reserved memory plus the CUDA context (NVML's per-process figure minus
    the memory torch has reserved now); NVML's per-process figure is kept beside it.
    """
    if torch_device.startswith("cuda"):
        import torch

        reserved_peak = int(torch.cuda.max_memory_reserved(torch_device))
        context = cuda_context_bytes(torch_device)
        extra = context["cuda_context_bytes"]
        return {
            "kind": "cuda_peak_reserved_plus_context",
            "bytes": reserved_peak + (extra or 0),
            "max_memory_reserved_bytes": reserved_peak,
            "allocated_peak_bytes": int(torch.cuda.max_memory_allocated(torch_device)),
            "context_measured": extra is not None,
            **context,
        }
    hwm = _proc_status_bytes("VmHWM")
    if hwm is not None:
        from studio.core.engine.allocator import APPLIED

        return {
            "kind": "cpu_peak_rss",
            "source": "VmHWM",
            "bytes": hwm,
            "rss_at_end_bytes": _proc_status_bytes("VmRSS"),
            "allocator": dict(APPLIED) or None,
        }
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # macOS reports bytes (other BSD-likes KiB).
        return {
            "kind": "cpu_peak_rss",
            "source": "ru_maxrss",
            "bytes": int(rss if sys.platform == "darwin" else rss * 1024),
        }
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return {
            "kind": "cpu_peak_rss",
            "source": "peak_wset",
            "bytes": int(getattr(info, "peak_wset", info.rss)),
        }
