"""Is the built-in sample dataset learnable? A short QLoRA run on the built-in model.

    python benchmarks/sample_dataset_learning.py [--steps 40] [--json OUT.json]

Loads SmolLM2-135M-Instruct (the built-in model) in 4-bit NF4 with bfloat16 compute and
double quantization, wraps every linear in LoRA (r=16, alpha=32), trains on the built-in
sample (`prepare_datasets`, no validation split) with a plain AdamW loop (batch 2, lr 2e-4),
and greedily answers three held-out prompts before and after. Every sample answer ends with
the signature "— answered by QLoRA Studio"; the dataset is learnable when the signature
appears in the answers after training and not before. Exits 0 when it does for at least two
of the three prompts, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_sample_dataset import HELD_OUT, SIGNATURE  # noqa: E402

MARK = SIGNATURE.split(" ", 1)[1]  # "answered by QLoRA Studio", robust to the dash


def load_model():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from studio.core.engine.building import keep_4bit_weights_trainable
    from studio.core.models import resolve_model
    from studio.core.recipe import BUILTIN_MODEL

    folder = resolve_model(BUILTIN_MODEL).path
    tokenizer = AutoTokenizer.from_pretrained(folder)
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )
    model = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=bnb, dtype=torch.bfloat16, device_map={"": "cpu"}
    )
    # It generates before training: without this, bitsandbytes' CPU inference repacking
    # would leave the training that follows with wrong gradients.
    keep_4bit_weights_trainable(model)
    return model, tokenizer


def generate(model, tokenizer, prompts, max_new_tokens: int) -> list[str]:
    import torch

    answers = []
    model.eval()
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            out = model.generate(
                **ids,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        answers.append(
            tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        )
    return answers


def batches(data, batch_size: int, pad_id: int, seed: int):
    import torch

    order = list(range(len(data)))
    rng = random.Random(seed)
    while True:
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            rows = [data[j] for j in order[i : i + batch_size]]
            width = max(len(r["input_ids"]) for r in rows)

            def pad(key, value, rows=rows, width=width):
                return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows])

            yield {
                "input_ids": pad("input_ids", pad_id),
                "attention_mask": pad("attention_mask", 0),
                "labels": pad("labels", -100),
            }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import torch
    from peft import LoraConfig, get_peft_model

    from studio.core.data import prepare_datasets
    from studio.core.recipe import DatasetSection

    torch.manual_seed(0)
    started = time.perf_counter()
    model, tokenizer = load_model()
    load_s = time.perf_counter() - started
    before = generate(model, tokenizer, HELD_OUT, args.max_new_tokens)

    prepared = prepare_datasets(DatasetSection(validation_split=0.0), tokenizer, seed=0)
    print(prepared.explanation, "|", prepared.stats.summary(), flush=True)
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stream = batches(prepared.train, args.batch_size, pad_id, seed=0)
    losses = []
    model.train()
    train_started = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = model(**next(stream)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if step % 5 == 0 or step == 1:
            print(f"step {step:3d}  loss {loss.item():.3f}", flush=True)
    train_s = time.perf_counter() - train_started
    after = generate(model, tokenizer, HELD_OUT, args.max_new_tokens)

    signed_before = [MARK in a for a in before]
    signed_after = [MARK in a for a in after]
    result = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "load_s": round(load_s, 1),
        "train_s": round(train_s, 1),
        "s_per_step": round(train_s / args.steps, 2),
        "first_loss": round(losses[0], 3),
        "last5_mean_loss": round(sum(losses[-5:]) / len(losses[-5:]), 3),
        "prompts": list(HELD_OUT),
        "before": before,
        "after": after,
        "signed_before": signed_before,
        "signed_after": signed_after,
    }
    for prompt, b, a in zip(HELD_OUT, before, after, strict=True):
        print(f"\n## {prompt}\n-- before: {b!r}\n-- after:  {a!r}")
    print(json.dumps({k: v for k, v in result.items() if k not in ("before", "after")}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    learned = sum(signed_after) >= 2 and not any(signed_before)
    print("LEARNED" if learned else "NOT LEARNED")
    return 0 if learned else 1


if __name__ == "__main__":
    raise SystemExit(main())
