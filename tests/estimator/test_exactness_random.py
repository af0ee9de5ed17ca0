"""Property tests: estimator vs real PEFT on random models and random LoRA options.

Two model sources, both small enough to build in milliseconds on the meta device:
- configs generated at random within each architecture family the catalog covers (llama, mistral,
  qwen2, gemma2, phi3, gpt2): depth, width, heads, KV heads, vocabulary, tied embeddings and the
  family's bias flags (GPT-2 with and without cross-attention);
- every catalog config shrunk to 1-3 tiny layers, keeping its type, tying and bias flags.
Each model's inventory comes from `workers.inventory.build_inventory`, as for a model added by id.
The options (tests/estimator/lora_strategies.py) mix ranks, alphas, dropout, every target_modules form,
bias, rsLoRA, DoRA, modules_to_save, exclusions, layer filters and rank/alpha patterns. Whatever PEFT
accepts the estimator must count identically; whatever PEFT rejects the estimator must reject.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.estimator.lora_strategies import lora_options, random_family_configs
from tests.estimator.peft_reference import CATALOG_IDS, compare_on_config, shrunk_catalog_config


def property_settings(max_examples: int) -> settings:
    """Each example builds a model and runs PEFT, so no deadline; the example counts keep the suite quick."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@property_settings(max_examples=400)
@given(data=st.data())
def test_estimator_matches_peft_on_random_family_configs(data):
    config = data.draw(random_family_configs(), label="config")
    options = data.draw(lora_options(config), label="options")
    compare_on_config(config, options)


@property_settings(max_examples=250)
@given(data=st.data())
def test_estimator_matches_peft_on_shrunk_catalog_configs(data):
    model_id = data.draw(st.sampled_from(CATALOG_IDS), label="model_id")
    config = shrunk_catalog_config(model_id, layers=data.draw(st.integers(1, 3), label="layers"))
    options = data.draw(lora_options(config), label="options")
    compare_on_config(config, options)


@property_settings(max_examples=100)
@given(data=st.data())
def test_estimator_matches_peft_when_modules_to_save_overlaps_all_linear(data):
    """Saved modules (matched by plain suffix, possibly nested, possibly tied) carved out of "all-linear"."""
    config = data.draw(random_family_configs(), label="config")
    options = data.draw(lora_options(config), label="options")
    options["target_modules"] = "all-linear"
    for key in ("layers_to_transform", "layers_pattern"):
        options.pop(key, None)
    saves = st.sampled_from(["lm_head", "mlp", "attn", "norm", "ln_f", "embed_tokens", "wte", "0"])
    options["modules_to_save"] = data.draw(st.lists(saves, min_size=1, max_size=3), label="modules_to_save")
    compare_on_config(config, options)
