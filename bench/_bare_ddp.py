"""The bare side of bench/multi_gpu.py: what a plain script run under torchrun does, TRL's SFTTrainer with PEFT on
the same model, data and config values as Tuneboard's job. Prints one JSON line on rank 0: the real tokens all
ranks trained on and the Trainer's train_runtime.

    python -m torch.distributed.run --standalone --nproc-per-node=2 -m bench._bare_ddp ARGS.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(args_path: str) -> int:
    """Train once as the arguments say; rank 0 prints the figures."""
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from app.datasets.validator import load_examples
    from bench.training import TARGET_MODULES, CountingCollator, bare_arguments
    from workers.training.supervised import prepare_examples

    spec = json.loads(Path(args_path).read_text())
    dist.init_process_group(backend="gloo")
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    model.config.use_cache = False
    set_seed(42)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=TARGET_MODULES))
    args = bare_arguments(Path(spec["output_dir"]), method="supervised", steps=spec["steps"], batch=spec["batch"],
                          seq=spec["seq"], lr=spec["lr"])
    args.ddp_find_unused_parameters = False
    examples = list(load_examples(Path(spec["examples_path"])).examples)
    data = prepare_examples(examples, tokenizer, sequence_length=None, loss_on="assistant")
    collator = CountingCollator(DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id),
                                lambda rows: sum(len(r["input_ids"]) for r in rows))
    trainer = SFTTrainer(model=model, args=args, data_collator=collator, train_dataset=data.dataset,
                         processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    runtime = trainer.train().metrics["train_runtime"]
    tokens = torch.tensor([float(collator.tokens)])
    dist.all_reduce(tokens)
    if dist.get_rank() == 0:
        print(json.dumps({"tokens": int(tokens.item()), "train_runtime": runtime}), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from workers.training.rank import exit_without_teardown

    exit_without_teardown(lambda: main(sys.argv[1]))  # as Tuneboard's ranks end (a gloo teardown can deadlock)
