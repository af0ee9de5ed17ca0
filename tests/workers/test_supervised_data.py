"""Supervised data as TRL's SFTTrainer trains on it: which tokens carry loss for each format (TRL's preparation,
and Tuneboard's assistant masks for chat templates without generation markers), what a sequence length cuts and
drops, the collator's token count, and the data card's preview against the trainer's own batches."""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

import pytest

from app.datasets.format_common import Example
from tests.tiny_model import build_tiny_model
from tests.workers.test_training import FRENCH, TRAIN, chat
from workers.training.contract import TrainingFailure
from workers.training.supervised import IGNORE_INDEX, CountingCollator, prepare_examples


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-sft-data"))


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def tokenized(example: Example, tokenizer, loss_on: str = "assistant") -> tuple[list[int], list[int]]:
    row = prepare_examples([example], tokenizer, sequence_length=None, loss_on=loss_on).dataset[0]
    return row["input_ids"], row["labels"]


def labelled_runs(tokenizer, input_ids: list[int], labels: list[int]) -> list[str]:
    """Decode each maximal run of labelled tokens."""
    runs, current = [], []
    for token, label in zip(input_ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


CONVERSATION = (
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Reverse the word: stop"},
    {"role": "assistant", "content": "pots"},
    {"role": "user", "content": "Reverse the word: live"},
    {"role": "assistant", "content": "evil, of course"},
)


def test_assistant_only_labels_cover_exactly_the_assistant_turns(tokenizer):
    input_ids, labels = tokenized(Example(messages=CONVERSATION), tokenizer)
    assert input_ids == tokenizer.apply_chat_template(list(CONVERSATION), tokenize=True)["input_ids"]
    assert labelled_runs(tokenizer, input_ids, labels) == ["pots<|im_end|>\n", "evil, of course<|im_end|>\n"]
    # Exact spans: each run starts right after the generation prompt of its turn.
    prefix = tokenizer.apply_chat_template(list(CONVERSATION[:2]), tokenize=True, add_generation_prompt=True)
    start = len(prefix["input_ids"])
    assert labels[start - 1] == IGNORE_INDEX and labels[start] == input_ids[start]


def test_loss_on_all_labels_every_token_of_the_rendered_conversation(tokenizer):
    input_ids, labels = tokenized(Example(messages=CONVERSATION), tokenizer, loss_on="all")
    assert labels == input_ids
    assert input_ids == tokenizer.apply_chat_template(list(CONVERSATION), tokenize=True)["input_ids"]


def test_assistant_spans_without_a_generation_prompt_or_with_an_injected_system_turn(tokenizer):
    injected = deepcopy(tokenizer)
    # SmolLM2-style: a default system turn when the conversation has none.
    injected.chat_template = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nBe nice<|im_end|>\n' }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    no_prompt = deepcopy(tokenizer)
    no_prompt.chat_template = (  # ignores add_generation_prompt altogether
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    )
    for variant in (injected, no_prompt):
        input_ids, labels = tokenized(Example(messages=CONVERSATION[1:]), variant)
        runs = labelled_runs(variant, input_ids, labels)
        assert runs == ["pots<|im_end|>\n", "evil, of course<|im_end|>\n"], variant.chat_template


def test_prompt_completion_trains_on_the_completion_and_eos(tokenizer):
    example = Example(prompt="Capital of France?", completion=" Paris")
    input_ids, labels = tokenized(example, tokenizer)
    assert input_ids[0] == tokenizer.bos_token_id and input_ids[-1] == tokenizer.eos_token_id
    assert labelled_runs(tokenizer, input_ids, labels) == [" Paris<|im_end|>"]
    _, all_labels = tokenized(example, tokenizer, loss_on="all")
    assert all_labels == input_ids


def test_text_trains_on_every_token(tokenizer):
    input_ids, labels = tokenized(Example(text="The sky is blue."), tokenizer)
    assert labels == input_ids
    assert input_ids[0] == tokenizer.bos_token_id and input_ids[-1] == tokenizer.eos_token_id


def test_mixed_formats_keep_their_order_and_are_counted_by_kind(tokenizer):
    examples = [Example(text="one"), Example(prompt="two?", completion=" 2"), Example(text="three")]
    data = prepare_examples(examples, tokenizer, sequence_length=64, loss_on="assistant")
    assert data.kinds == {"text": 2, "prompt_completion": 1}
    decoded = [tokenizer.decode(ids) for ids in data.dataset["input_ids"]]
    assert ["one" in decoded[0], "two?" in decoded[1], "three" in decoded[2]] == [True, True, True]


def test_truncation_is_counted_and_unlearnable_examples_dropped(tokenizer):
    long_answer = chat("Hi", "word " * 60)
    late_answer = chat("word " * 60, "late")  # the assistant turn lies past the cut
    data = prepare_examples([long_answer, late_answer, TRAIN[0]], tokenizer, sequence_length=48, loss_on="assistant")
    assert (data.examples, data.truncated, data.dropped, data.kept) == (3, 2, 1, 2)
    assert data.tokens == 48 + len(data.dataset[2]["input_ids"])


def test_the_collator_pads_dynamically_and_counts_real_tokens():
    collator = CountingCollator(pad_token_id=0)
    batch = collator([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["num_tokens"] == 4
    padded = CountingCollator(0, pad_to_multiple_of=8)([{"input_ids": [1], "labels": [1]}])
    assert padded["input_ids"].shape == (1, 8)


def test_chat_data_needs_a_chat_template(tokenizer):
    plain = deepcopy(tokenizer)
    plain.chat_template = None
    for loss_on in ("assistant", "all"):
        with pytest.raises(TrainingFailure) as caught:
            prepare_examples([Example(messages=CONVERSATION)], plain, sequence_length=64, loss_on=loss_on)
        assert caught.value.code == "dataset_problem" and "chat template" in caught.value.reason


@pytest.mark.parametrize("layout", ["chat", "prompt_completion", "text"])
def test_the_preview_is_what_the_trainer_trains_on(tiny_dir, tokenizer, tmp_path, layout):
    """The data card's rows against the batch SFTTrainer builds from the same file: the tokens that carry loss and
    each row's length (cut to the sequence length by the trainer, shown whole by the preview)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    from workers.dataset_preview import build_preview
    from workers.training.supervised import sft_trainer

    english = list(FRENCH)
    records = {
        "chat": [{"messages": [{"role": "user", "content": f"French for {en}?"},
                               {"role": "assistant", "content": FRENCH[en]}]} for en in english[:3]],
        "prompt_completion": [{"prompt": f"French for {en}?", "completion": f" {FRENCH[en]}"} for en in english[:3]],
        "text": [{"text": f"The French for {en} is {FRENCH[en]}."} for en in english[:3]],
    }[layout]
    data_file = tmp_path / "data.jsonl"
    data_file.write_text("\n".join(json.dumps(r) for r in records))
    preview = build_preview(data_file, str(tiny_dir), data_dir=tmp_path, loss_on="assistant", column_mapping=None)
    assert preview["examples"] == 3 and len(preview["rows"]) == 3

    from app.datasets.validator import load_examples

    examples = list(load_examples(data_file).examples)
    prepared = prepare_examples(examples, tokenizer, sequence_length=64, loss_on="assistant")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), LoraConfig(r=4, target_modules=["q_proj"]))
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_length=64, report_to="none", use_cpu=True, bf16=False)
    trainer = sft_trainer(model, tokenizer, args, prepared, None, [], pad_to_multiple_of=None)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    for index, row in enumerate(preview["rows"]):
        labels = batch["labels"][index]
        trained = labels != IGNORE_INDEX
        trained_text = "".join(part["text"] for part in row["segments"] if part["trained"])
        assert trained_text == tokenizer.decode(batch["input_ids"][index][trained], skip_special_tokens=False)
        assert row["trained"] == int(trained.sum()) > 0
        assert row["tokens"] == int(batch["attention_mask"][index].sum())
    assert batch["num_tokens"] == sum(row["tokens"] for row in preview["rows"])
