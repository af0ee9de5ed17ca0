"""Clone: a stored job config turned back into configuration form values (the inverse of form_fields.parse and
form_fields.training_payload), and GET /?clone=<job> opening the form filled in with them."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.configure import form_fields
from app.configure.launch_form import job_config
from app.estimator.job_config import JobConfig

CONFIGS = [
    {"model": "m", "lora": {"r": 16, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}},
    {"model": "m", "lora": {"r": 8, "lora_alpha": 32.5, "lora_dropout": 0.05, "bias": "lora_only", "use_rslora": True,
                            "use_dora": True, "target_modules": "all-linear"}},
    {"model": "m", "lora": {"r": 4, "lora_alpha": 4.0, "target_modules": r".*\.(q|v)_proj$"}},
    {"model": "m", "lora": {"r": 64, "lora_alpha": 128, "target_modules": None, "modules_to_save": ["lm_head"]}},
    {"model": "m", "lora": {"r": 16, "lora_alpha": 16, "target_modules": ["down_proj", "up_proj", "gate_proj"],
                            "layers_to_transform": [0, 1, 2, 3, 7], "layers_pattern": "layers",
                            "exclude_modules": ["up_proj", "mlp.gate_proj"],
                            "rank_pattern": {"down_proj": 32, r"model\.layers\.0\..*": 4}}},
    {"model": "m", "lora": {"r": 8, "lora_alpha": 8, "target_modules": ["q_proj"], "layers_to_transform": [5]},
     "training": {"load_in_4bit": True, "precision": "bf16", "gradient_checkpointing": True}},
    {"model": "m", "training": {
        "learning_rate": 1e-5, "num_epochs": 2.5, "max_steps": 100, "gradient_accumulation_steps": 4,
        "warmup_ratio": 0.1, "lr_scheduler": "cosine", "weight_decay": 0.01, "seed": 7, "eval_steps": 10,
        "save_steps": 25, "loss_on": "all", "validation_split": 10, "sequence_length": 2048, "batch_size": 8,
        "precision": "fp16", "gradient_checkpointing": False}},
    {"model": "m", "training": {"precision": "fp32", "num_epochs": 1, "validation_split": 2.5}},
]


def round_trip(config: dict) -> JobConfig | None:
    """values_from_job_config, then the form's own parsing, as a launch would run it."""
    values = form_fields.values_from_job_config(config)
    values["training_file"] = "file-x"
    state = form_fields.parse(values)
    assert not state.errors, state.errors
    return job_config(state)


@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_parse_gives_back_the_same_lora_and_training_config(config):
    original = JobConfig.model_validate(config)
    assert round_trip(original.model_dump(mode="json")) == original
    assert form_fields.clone_gaps(original.model_dump(mode="json")) == []


def test_form_values_read_the_way_a_person_would_type_them():
    values = form_fields.values_from_job_config(JobConfig.model_validate(CONFIGS[4]).model_dump(mode="json"))
    assert values["layers_to_transform"] == "0-3, 7"
    assert values["rank_pattern"] == "down_proj = 32\nmodel\\.layers\\.0\\..* = 4"
    assert values["exclude_modules"] == "up_proj, mlp.gate_proj"
    assert values["alpha_locked"] is True and values["target_mode"] == "modules"
    four_bit = form_fields.values_from_job_config(JobConfig.model_validate(CONFIGS[5]).model_dump(mode="json"))
    assert four_bit["precision"] == "4bit" and four_bit["layers_to_transform"] == "5"
    values = form_fields.values_from_job_config({"model": "m", "lora": {"target_modules": None}})
    assert values["target_mode"] == "default"
    knobs = form_fields.values_from_job_config(JobConfig.model_validate(CONFIGS[6]).model_dump(mode="json"))
    assert (knobs["learning_rate"], knobs["num_epochs"], knobs["max_steps"], knobs["eval_steps"]) == \
        ("1e-05", "2.5", "100", "10")


def test_what_the_form_cannot_express_is_named():
    config = JobConfig.model_validate({"model": "m", "lora": {"alpha_pattern": {"q_proj": 4}, "exclude_modules": "x.*"},
                                       "training": {"logging_steps": 10}}).model_dump(mode="json")
    gaps = form_fields.clone_gaps(config)
    assert len(gaps) == 3 and gaps[0] == "alpha_pattern" and "logging_steps = 10" in gaps


MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@st.composite
def configs(draw) -> dict:
    """Configs the form can express: any targets mode, alpha locked or not, layers, rank patterns, knobs."""
    r = draw(st.integers(1, 256))
    mode = draw(st.sampled_from(["modules", "all-linear", "regex", "default"]))
    targets = {"modules": draw(st.lists(st.sampled_from(MODULES), min_size=1, unique=True)),
               "all-linear": "all-linear", "regex": draw(st.sampled_from([r".*\.q_proj", r"^model\..*mlp.*"])),
               "default": None}[mode]
    lora = {"r": r, "lora_alpha": r if draw(st.booleans()) else draw(st.integers(1, 512) | st.floats(0.5, 512)),
            "lora_dropout": draw(st.sampled_from([0.0, 0.05, 0.1, 0.5])), "target_modules": targets,
            "bias": draw(st.sampled_from(["none", "all", "lora_only"])), "use_rslora": draw(st.booleans()),
            "use_dora": draw(st.booleans()),
            "modules_to_save": draw(st.sampled_from([None, ["lm_head"], ["embed_tokens", "lm_head"]])),
            "rank_pattern": draw(st.dictionaries(st.sampled_from(MODULES), st.integers(1, 128), max_size=3))}
    if mode == "modules" and draw(st.booleans()):
        lora["layers_to_transform"] = sorted(draw(st.sets(st.integers(0, 40), min_size=1, max_size=8)))
        lora["layers_pattern"] = draw(st.sampled_from([None, "layers"]))
    four_bit = draw(st.booleans())
    training = {"learning_rate": draw(st.sampled_from([2e-4, 1e-5, 3e-3, 0.1])),
                "num_epochs": draw(st.sampled_from([1, 3, 0.5, 2.25])),
                "max_steps": draw(st.none() | st.integers(1, 10_000)),
                "gradient_accumulation_steps": draw(st.integers(1, 64)),
                "warmup_ratio": draw(st.sampled_from([0.0, 0.03, 0.1])),
                "lr_scheduler": draw(st.sampled_from(["linear", "cosine", "constant", "constant_with_warmup"])),
                "weight_decay": draw(st.sampled_from([0.0, 0.01])), "seed": draw(st.integers(0, 2**32 - 1)),
                "eval_steps": draw(st.none() | st.integers(1, 500)), "save_steps": draw(st.integers(1, 1000)),
                "loss_on": draw(st.sampled_from(["assistant", "all"])),
                "validation_split": draw(st.sampled_from([0, 5, 12.5])),
                "sequence_length": draw(st.integers(16, 8192)), "batch_size": draw(st.integers(1, 64)),
                "gradient_checkpointing": draw(st.booleans()),
                "precision": "bf16" if four_bit else draw(st.sampled_from(["bf16", "fp16", "fp32"])),
                "load_in_4bit": four_bit}
    return JobConfig.model_validate({"model": "m", "lora": lora, "training": training}).model_dump(mode="json")


@settings(max_examples=300, deadline=None)
@given(configs())
def test_any_form_expressible_config_round_trips(config):
    assert round_trip(config) == JobConfig.model_validate(config)


# The configuration page opened with ?clone=<job>.


def field(html: str, name: str) -> str:
    return re.search(rf'name="{name}"[^>]*value="([^"]*)"', html).group(1)


def selected(html: str, select_id: str) -> str:
    block = re.search(rf'<select name="{select_id}"[^>]*>(.*?)</select>', html, re.S).group(1)
    return re.search(r'<option value="([^"]*)" selected', block).group(1)


def test_clone_opens_the_configuration_page_filled_in(client, account):
    from tests.jobs.history_helpers import add_job, stored_file

    train, validation = stored_file(account, "train.jsonl", 40), stored_file(account, "valid.jsonl", 8)
    job = add_job(account, train, suffix="to-clone", validation_file_id=validation,
                  lora={"r": 32, "lora_alpha": 64, "lora_dropout": 0.05,
                        "target_modules": ["q_proj", "v_proj", "o_proj"]},
                  training={"learning_rate": 1e-4, "max_steps": 60, "batch_size": 2, "lr_scheduler": "cosine",
                            "eval_steps": 20})
    html = client.get(f"/?clone={job.id}").text
    assert 'id="clone-notice"' in html and f'href="/jobs/{job.id}">to-clone</a>' in html
    assert field(html, "model") == job.model
    assert (field(html, "r"), field(html, "lora_alpha"), field(html, "lora_dropout")) == ("32", "64", "0.05")
    assert 'id="alpha_locked" checked' not in html
    assert set(re.findall(r'name="target_modules" value="([^"]+)" checked', html)) == {"q_proj", "v_proj", "o_proj"}
    assert (field(html, "learning_rate"), field(html, "max_steps"), field(html, "batch_size")) == ("0.0001", "60", "2")
    assert (field(html, "eval_steps"), field(html, "suffix")) == ("20", "")
    assert selected(html, "training_file") == train and selected(html, "validation_file") == validation
    assert f'id="trainable-params">{job.estimate["trainable_params"]:,d}<' in html


def test_clone_of_another_teams_job_is_not_found(client, make_user):
    from tests.jobs.history_helpers import add_job, stored_file

    carol = make_user("carol@example.com", "Beta")
    theirs = add_job(carol, stored_file(carol))
    response = client.get(f"/?clone={theirs.id}")
    assert response.status_code == 404 and f"There is no job {theirs.id}" in response.text
