"""The inference engine in this process, on the tiny model and real PEFT adapters: adapters are swapped on one
loaded base (counted), each reply is the one PEFT gives with that adapter loaded on its own, the base answers
with the adapters disabled, the least recently used adapter is the one dropped, and a generation stops when asked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from workers.inference.engine import InferenceEngine  # noqa: E402
from workers.inference.generation import GenerationSettings, InferenceFailure, generate  # noqa: E402

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "The quick brown fox"}]
GREEDY = GenerationSettings(max_new_tokens=12, temperature=0)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Three LoRA adapters of the tiny model, with random (not zero) B matrices, so each changes the replies."""
    folders = {}
    for seed, name in enumerate(("first", "second", "third"), start=1):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                                init_lora_weights=False))
        folders[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(folders[name])
    return folders


@pytest.fixture
def engine(tiny_model_dir, tmp_path) -> InferenceEngine:
    return InferenceEngine(tmp_path, max_adapters=2)


def _reference(tiny_model_dir: Path, adapter: Path | None) -> str:
    """The greedy reply of the base, or of the base with this one adapter, loaded the plain PEFT way."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    inputs = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=GREEDY.max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def _reply(engine: InferenceEngine, *, adapter: bool, settings: GenerationSettings = GREEDY, **options) -> str:
    pieces: list[str] = []
    result = generate(engine, MESSAGES, settings, use_adapter=adapter, on_text=pieces.append, **options)
    assert "".join(pieces) == result.text  # what streamed is the reply, nothing more
    return result.text


def test_two_adapters_share_one_loaded_base_and_each_answers_as_peft_alone_would(engine, tiny_model_dir, adapters):
    base_reply = _reference(tiny_model_dir, None)
    expected = {name: _reference(tiny_model_dir, adapters[name]) for name in ("first", "second")}
    assert len({base_reply, *expected.values()}) == 3  # the adapters do change the replies

    loaded = engine.prepare(str(tiny_model_dir), None)
    assert loaded.base_loaded and _reply(engine, adapter=False) == base_reply
    for name in ("first", "second", "first", "second"):
        loaded = engine.prepare(str(tiny_model_dir), (name, adapters[name]))
        assert not loaded.base_loaded
        assert _reply(engine, adapter=True) == expected[name], name
        assert _reply(engine, adapter=False) == base_reply  # the base, adapters disabled, on the same weights
    assert engine.stats.base_loads == 1 and engine.stats.adapter_loads == 2  # switching back loaded nothing
    assert engine.adapters() == ["first", "second"]


def test_switching_to_and_from_an_adapter_with_a_saved_module_answers_as_peft_does(engine, tiny_model_dir, adapters,
                                                                                    tmp_path):
    """The engine switches adapters by setting each adapted layer's active adapter itself (PEFT's set_adapter walks
    the whole model): a modules_to_save copy must follow too, and fall back to the original without its adapter."""
    torch.manual_seed(9)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["k_proj"], modules_to_save=["lm_head"],
                                      init_lora_weights=False))
    with torch.no_grad():
        model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)  # the saved copy differs
    model.save_pretrained(tmp_path / "saver")
    expected = {"saver": _reference(tiny_model_dir, tmp_path / "saver"),
                "first": _reference(tiny_model_dir, adapters["first"])}
    assert expected["saver"] != expected["first"]
    engine.max_adapters = 3
    folders = {"saver": tmp_path / "saver", "first": adapters["first"]}
    for name in ("first", "saver", "first", "saver", "first"):
        engine.prepare(str(tiny_model_dir), (name, folders[name]))
        assert _reply(engine, adapter=True) == expected[name], name
    assert engine.stats.adapter_loads == 2


def test_the_least_recently_used_adapter_is_dropped_for_a_new_one(engine, tiny_model_dir, adapters):
    for name in ("first", "second", "first", "third"):  # "second" is then the least recently used
        engine.prepare(str(tiny_model_dir), (name, adapters[name]))
    assert engine.adapters() == ["first", "third"] and engine.stats.adapter_evictions == 1
    assert _reply(engine, adapter=True) == _reference(tiny_model_dir, adapters["third"])
    loaded = engine.prepare(str(tiny_model_dir), ("second", adapters["second"]))
    assert loaded.adapter_loaded and engine.adapters() == ["third", "second"]
    assert engine.stats.base_loads == 1


def test_stop_sequences_end_the_reply_before_them(engine, tiny_model_dir):
    engine.prepare(str(tiny_model_dir), None)
    whole = _reply(engine, adapter=False, settings=GenerationSettings(max_new_tokens=30, temperature=0))
    stop = whole[4:7]
    assert len(stop) == 3 and stop.strip(), whole
    cut = _reply(engine, adapter=False, settings=GenerationSettings(max_new_tokens=30, temperature=0, stop=(stop,)))
    assert cut == whole[: whole.index(stop)]


def test_a_generation_stops_when_its_client_is_gone(engine, tiny_model_dir):
    engine.prepare(str(tiny_model_dir), None)
    asked = []

    def gone() -> bool:
        asked.append(1)
        return len(asked) > 5

    result = generate(engine, MESSAGES, GenerationSettings(max_new_tokens=500, min_new_tokens=500, temperature=0),
                      use_adapter=False, on_text=lambda _text: None, should_stop=gone)
    assert result.finish_reason == "cancelled" and result.completion_tokens < 20


def test_min_tokens_holds_the_end_of_turn_back_and_the_seed_repeats_a_sampled_reply(engine, tiny_model_dir):
    engine.prepare(str(tiny_model_dir), None)
    long = generate(engine, MESSAGES, GenerationSettings(max_new_tokens=40, min_new_tokens=40, temperature=0),
                    use_adapter=False, on_text=lambda _text: None)
    assert long.completion_tokens == 40 and long.finish_reason == "length"
    sampled = GenerationSettings(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=7)
    assert _reply(engine, adapter=False, settings=sampled) == _reply(engine, adapter=False, settings=sampled)


def test_a_conversation_longer_than_the_model_reads_is_refused_by_name(engine, tiny_model_dir):
    engine.prepare(str(tiny_model_dir), None)
    limit = engine.model.config.max_position_embeddings
    too_long = [{"role": "user", "content": "fox " * (limit * 2)}]
    with pytest.raises(InferenceFailure) as caught:
        generate(engine, too_long, GREEDY, use_adapter=False, on_text=lambda _text: None)
    assert caught.value.code == "context_length_exceeded" and str(limit) in caught.value.message
