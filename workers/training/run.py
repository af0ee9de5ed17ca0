"""`train()`: one LoRA fine-tuning attempt, from base model to saved adapter, on TRL's trainers (SFTTrainer for
supervised runs, DPOTrainer for preference pairs).

Owns the order of things (load, tokenise, wrap with PEFT, train or resume, evaluate, save) and the
translation of known failures into `TrainingFailure`. The loop itself is the Trainer's.
"""

from __future__ import annotations

import gc
from functools import partial
from pathlib import Path
from typing import Any

from workers.training.contract import Reporter, TrainingFailure, TrainingResult, TrainingRun
from workers.training.held_out_answers import HeldOutAnswers
from workers.training.step_sync import rank, world_size
from workers.training.strategies import SHARDING_STRATEGIES, run_strategy, strategy_arguments, trainer_checkpointing


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    # Some kernels report OOM as a bare RuntimeError ("CUDA error: out of memory").
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _out_of_memory(exc: BaseException, what: str) -> TrainingFailure:
    where = "GPU" if "cuda" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError" else "worker"
    return TrainingFailure(
        "out_of_memory",
        f"The {where} ran out of memory {what}. Lower batch_size or sequence_length, turn on "
        "gradient_checkpointing, or use load_in_4bit.",
    )


def _device_label(device: str, strategy: str) -> str:
    import torch

    if device == "cuda":
        index = torch.cuda.current_device()
        label = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    else:
        threads = torch.get_num_threads()
        label = f"cpu ({threads} thread{'' if threads == 1 else 's'})"
    return label if strategy == "single" else f"{label} x {world_size()} processes ({strategy})"


def _prepare(examples: list[Any], tokenizer: Any, run: TrainingRun, reporter: Reporter, what: str) -> Any:
    from workers.training.supervised import prepare_examples

    settings = run.config.training
    data = prepare_examples(examples, tokenizer, sequence_length=settings.sequence_length, loss_on=settings.loss_on)
    if data.truncated:
        reporter.on_event(
            f"{data.truncated} of {data.examples} {what} examples were longer than {settings.sequence_length} "
            "tokens and were truncated.", level="warning",
        )
    if data.dropped:
        target = "assistant/completion" if settings.loss_on == "assistant" else "trainable"
        reporter.on_event(
            f"{data.dropped} of {data.examples} {what} examples had no {target} tokens left to learn from "
            "and were skipped.", level="warning",
        )
    if data.kept:
        kinds = ", ".join(f"{n} {kind.replace('_', '/')}" for kind, n in sorted(data.kinds.items()))
        reporter.on_event(f"Tokenised {data.kept} {what} examples ({kinds}; {data.tokens:,} tokens).")
    return data


def _last_logged(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The latest train and eval loss in a restored Trainer's log history."""
    found: dict[str, float] = {}
    for entry in reversed(log_history):
        for key in ("loss", "eval_loss"):
            if key not in found and isinstance(entry.get(key), (int, float)):
                found[key] = float(entry[key])
    return found


def _base_eval_loss(log_history: list[dict[str, Any]]) -> float | None:
    """The held-out loss evaluated before the first step: the base model's, the adapter not yet trained."""
    return next((entry["eval_loss"] for entry in log_history
                 if entry.get("step") == 0 and entry.get("eval_loss") is not None), None)


def _wrap_with_lora(model: Any, run: TrainingRun) -> Any:
    import torch
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    from app.estimator.matching import check_pattern_cost
    from app.estimator.pattern_cost import PatternTooCostly
    from workers.lora_config import to_peft_config

    settings = run.config.training
    if settings.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=settings.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    # The LoRA A matrices are initialised randomly: seed first so a job is reproducible.
    set_seed(settings.seed)
    try:
        check_pattern_cost(run.config.lora, [name for name, _ in model.named_modules()])
    except PatternTooCostly as exc:  # PEFT's `re` matching would hold this worker for minutes
        raise TrainingFailure("unsupported", exc.message) from exc
    try:
        if run.start_adapter is not None:
            # The team's adapter this run continues, trainable: its shape is its own (the launch copied its LoRA
            # settings into this job's config, so the estimate counted the same matrices).
            peft_model = PeftModel.from_pretrained(model, run.start_adapter, is_trainable=True)
        else:
            peft_model = get_peft_model(model, to_peft_config(run.config.lora))
    except ValueError as exc:  # e.g. "Target modules {...} not found in the base model"
        raise TrainingFailure("unsupported", f"LoRA cannot be applied to this model as configured: {exc}") from exc
    # PEFT keeps LoRA matrices in fp32 over a bf16/fp16 base, but not modules_to_save copies or freed
    # biases: train every parameter in fp32 (mixed precision autocasts the maths), as fp16 AMP requires.
    for param in peft_model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return peft_model


def _answer_held_out(samples: HeldOutAnswers, reporter: Reporter, model: Any, step: int) -> None:
    """Answer the held-out prompts with the base and the adapter as trained to `step`, and report the answers."""
    reporter.on_event(f"Answering {len(samples.turns)} held-out prompts with the base model and the adapter "
                      f"(step {step}).")
    answered = samples.answer(model, reporter.should_stop)
    if answered is not None:
        rows, seconds = answered
        reporter.on_samples(step=step, samples=rows, seconds=seconds)


def train(run: TrainingRun, reporter: Reporter) -> TrainingResult:
    """Fine-tune run.config.model with LoRA on run's examples; report progress; return what was produced."""
    import torch

    try:
        return _train(run, reporter)
    except TrainingFailure:
        raise
    except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        if _is_out_of_memory(exc):
            raise _out_of_memory(exc, "while training") from exc
        raise
    finally:
        # A worker process runs many jobs: once _train's frame (model, optimizer) is gone, hand the
        # cached GPU memory back before the next job.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _supervised_data(run: TrainingRun, tokenizer: Any, reporter: Reporter) -> tuple[Any, Any]:
    """The training and validation examples of a supervised run, tokenized by TRL."""
    settings = run.config.training
    train_data = _prepare(run.train_examples, tokenizer, run, reporter, "training")
    if not train_data.kept:
        target = "assistant/completion" if settings.loss_on == "assistant" else "trainable"
        cut = f", {train_data.truncated} of them truncated" if train_data.truncated else ""
        raise TrainingFailure(
            "dataset_problem",
            f"none of the {train_data.examples} training examples has a {target} token within the first "
            f"{settings.sequence_length} tokens{cut}: raise sequence_length or shorten the prompts",
        )
    eval_data = _prepare(run.eval_examples or [], tokenizer, run, reporter, "validation")
    return train_data, eval_data if eval_data.kept else None


def _sft_trainer(run: TrainingRun, model: Any, tokenizer: Any, callback: Any, common: dict[str, Any],
                 data: tuple[Any, Any], pad_to_multiple_of: int | None) -> Any:
    from trl import SFTConfig

    from workers.training.arguments import training_arguments
    from workers.training.supervised import sft_settings, sft_trainer

    args = training_arguments(**common, arguments_class=SFTConfig, **sft_settings(run.config.training))
    return sft_trainer(model, tokenizer, args, *data, [callback], pad_to_multiple_of=pad_to_multiple_of)


def _dpo_trainer(run: TrainingRun, model: Any, tokenizer: Any, callback: Any, common: dict[str, Any],
                 pad_to_multiple_of: int | None) -> Any:
    from trl import DPOConfig

    from workers.training.arguments import training_arguments
    from workers.training.preference import dpo_settings, dpo_trainer

    settings = run.config.training
    args = training_arguments(**common, arguments_class=DPOConfig, **dpo_settings(run.config.method.dpo, settings))
    trainer = dpo_trainer(model, tokenizer, args, run.train_examples, run.eval_examples or None, [callback],
                          pad_to_multiple_of=pad_to_multiple_of)
    if len(trainer.train_dataset) == 0:
        raise TrainingFailure("dataset_problem", f"every one of the {len(run.train_examples)} training pairs has a "
                              f"prompt of {settings.sequence_length} tokens or more, which leaves no answer to learn "
                              "from: raise sequence_length or shorten the prompts")
    return trainer


def _without_evaluation(trainer: Any) -> None:
    """Turn off a built trainer's evaluations (its held-out set turned out empty once tokenized)."""
    from transformers.trainer_utils import IntervalStrategy

    trainer.eval_dataset = None
    trainer.args.eval_strategy = IntervalStrategy.NO
    trainer.args.eval_on_start = False


def _train(run: TrainingRun, reporter: Reporter) -> TrainingResult:
    from transformers.trainer_callback import PrinterCallback

    from workers.base_models import load_base
    from workers.training.adapter_metadata import name_base_model
    from workers.training.callbacks import ReporterCallback, RunAlreadyComplete

    settings = run.config.training
    resume_from = Path(run.resume_from) if run.resume_from else None
    if resume_from is not None and not (resume_from / "trainer_state.json").is_file():
        # Starting over silently would break "continue from its step exactly"; let the caller decide.
        raise FileNotFoundError(f"checkpoint {resume_from} is missing or incomplete (no trainer_state.json)")

    strategy = run_strategy(settings.gpus, settings.strategy)
    sharded = strategy in SHARDING_STRATEGIES
    base = load_base(run.config.model, data_dir=run.data_dir, precision=settings.precision,
                     load_in_4bit=settings.load_in_4bit, sharded=sharded, on_event=reporter.on_event)
    preference = run.config.method.type == "dpo"
    # Tokenized before the model is wrapped, so a dataset problem fails the run before any LoRA work; DPOTrainer
    # tokenizes its pairs itself.
    supervised = None if preference else _supervised_data(run, base.tokenizer, reporter)

    leader = rank() == 0  # the one process that reports, samples and saves (all of them, with one GPU)
    model = _wrap_with_lora(base.model, run)
    if run.start_adapter is not None and run.config.start_from is not None:
        reporter.on_event(f"Continuing the adapter {run.config.start_from.model} (job {run.config.start_from.job_id}).")
    trainable_params, all_params = model.get_nb_trainable_parameters()
    if sharded and settings.held_out_samples and run.eval_examples:
        reporter.on_event(f"Held-out answers are not generated under {strategy}: each GPU holds only a shard of the "
                          "model.", level="warning")
    # With several processes the leader answers alone, on its own replica (DDP); a shard cannot answer.
    samples = HeldOutAnswers(run.eval_examples, base.tokenizer,
                             limit=settings.held_out_samples if leader and not sharded else 0,
                             max_new_tokens=settings.sample_max_new_tokens, sequence_length=settings.sequence_length)
    sample_at_checkpoint = partial(_answer_held_out, samples, reporter) if samples and settings.samples_at_checkpoints \
        else None
    callback = ReporterCallback(reporter, trainable_params=trainable_params, all_params=all_params,
                                device=_device_label(base.device, strategy), on_checkpoint_model=sample_at_checkpoint)
    has_eval = bool(run.eval_examples) if preference else supervised[1] is not None
    # Multiples of 8 keep tensor-core shapes on GPU; on CPU they would only add padding.
    pad_to_multiple_of = 8 if base.device == "cuda" else None
    # A resumed run has its base evaluation in the checkpoint's log history already.
    args_settings = settings.model_copy(update={
        "gradient_checkpointing": trainer_checkpointing(strategy, settings.gradient_checkpointing)})
    common = dict(settings=args_settings, checkpoints_dir=run.checkpoints_dir, mixed_precision=base.mixed_precision,
                  device=base.device, has_eval=has_eval, evaluate_base=resume_from is None,
                  **strategy_arguments(strategy, gradient_checkpointing=settings.gradient_checkpointing,
                                       no_split_modules=list(getattr(base.model, "_no_split_modules", None) or [])))
    if preference:
        trainer = _dpo_trainer(run, model, base.tokenizer, callback, common, pad_to_multiple_of)
        if has_eval and len(trainer.eval_dataset) == 0:
            has_eval = False
            _without_evaluation(trainer)
            reporter.on_event(f"None of the {len(run.eval_examples)} held-out pairs has a prompt shorter than "
                              f"{settings.sequence_length} tokens: the run is not evaluated (raise sequence_length "
                              "or shorten the held-out prompts).", level="warning")
    else:
        trainer = _sft_trainer(run, model, base.tokenizer, callback, common, supervised, pad_to_multiple_of)
    # With tqdm off the Trainer prints every log dict to stdout; the reporter already has them.
    trainer.remove_callback(PrinterCallback)
    if resume_from is not None:
        reporter.on_event(f"Resuming from checkpoint {resume_from.name}.")
    try:
        trainer_metrics = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None).metrics
    except RunAlreadyComplete:
        # The last attempt ended after its final checkpoint: that checkpoint's adapter is the result.
        reporter.on_event(f"The checkpoint at step {trainer.state.global_step} already completes the run; "
                          "nothing is trained again.")
        trainer_metrics = {}
        callback.last_metrics.update(_last_logged(trainer.state.log_history))

    state = trainer.state
    if callback.diverged is not None:
        step, loss = callback.diverged
        raise TrainingFailure(
            "diverged", f"The training loss became {loss} at step {step}: the run diverged, and it was stopped "
            f"there. Lower the learning rate (it was {settings.learning_rate:g}), add warmup, or check the data.")
    # A stop asked for on the very last step still produced the complete run: keep it as finished.
    stopped = callback.stop_requested and state.global_step < state.max_steps
    if has_eval and not stopped and callback.last_eval_step != state.global_step:
        trainer.evaluate()  # the final adapter always gets an eval loss; the callback reports it
    adapter_dir = None
    if stopped:
        reporter.on_event(f"Stopped at step {state.global_step} of {state.max_steps}; its checkpoint is kept.")
    else:
        run.adapter_dir.mkdir(parents=True, exist_ok=True)
        if sharded:
            # Every rank joins in gathering the shards; the leader writes a normal PEFT adapter.
            trainer.save_model(str(run.adapter_dir))
        elif leader:
            # Only the trained adapter: DPO's frozen reference copy ("ref") is not part of the result.
            model.save_pretrained(run.adapter_dir, selected_adapters=["default"])
        if leader:
            name_base_model(run.adapter_dir, run.config.model.strip())
        adapter_dir = run.adapter_dir
        reporter.on_event(f"Saved the adapter after {state.global_step} steps.")
        if samples and callback.sampled_step != state.global_step:
            _answer_held_out(samples, reporter, model, state.global_step)

    runtime = float(callback.summary.get("train_runtime", trainer_metrics.get("train_runtime", 0.0)))
    final = {k: v for k, v in callback.last_metrics.items() if k in ("loss", "eval_loss")}
    if (base_eval := _base_eval_loss(state.log_history)) is not None:
        final["base_eval_loss"] = base_eval
    final["train_runtime"] = runtime
    final.update(trainer.compute.as_metrics())
    if runtime > 0:
        final["tokens_per_second"] = (state.num_input_tokens_seen - callback.start_tokens) / runtime
    return TrainingResult(
        trainable_params=trainable_params, all_params=all_params, global_step=state.global_step,
        total_steps=state.max_steps, stopped=stopped, adapter_dir=adapter_dir, final_metrics=final,
        trained_tokens=int(state.num_input_tokens_seen),
    )
