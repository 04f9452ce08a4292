"""The baseline for the engine-overhead benchmark: plain transformers + PEFT, no studio engine.

It loads a model folder in 4-bit with BitsAndBytesConfig, runs PEFT's k-bit preparation and
LoRA, and trains with the transformers Trainer: the textbook QLoRA script. The tokenized data
is written by `engine_overhead.py` (the studio's data module, so both sides see identical
batches); this script only times the optimizer steps and prints one JSON line with the
per-step wall times and
non-padding tokens.

    python benchmarks/plain_qlora.py MODEL_FOLDER DATA_FOLDER STEPS
"""

from __future__ import annotations

import json
import sys
import time


def main(model_folder: str, data_folder: str, steps: int) -> None:
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_folder, quantization_config=quant, dtype=torch.bfloat16, device_map={"": "cpu"}
    )
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
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
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    train = load_from_disk(data_folder)

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.tokens: list[int] = []
            self._last = None
            self._seen = 0

        def on_step_begin(self, args, state, control, **kwargs):
            if self._last is None:
                self._last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.times.append(now - self._last)
            self._last = now
            seen = int(state.num_input_tokens_seen)
            self.tokens.append(seen - self._seen)
            self._seen = seen

    timer = StepTimes()
    args = TrainingArguments(
        output_dir=f"{data_folder}-plain-out",
        max_steps=steps,
        per_device_train_batch_size=2,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        optim="paged_adamw_8bit",
        seed=42,
        data_seed=42,
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=[timer],
    )
    trainer.train()
    print("STEP_TIMES", json.dumps({"times": timer.times, "tokens": timer.tokens}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
