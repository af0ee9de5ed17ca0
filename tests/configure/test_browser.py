"""The configuration page in a real headless Chromium: live estimates, the module picture, presets, the picker.

Expected numbers come from the models' configs (r * (in + out) * layers), not from the app.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from playwright.sync_api import expect

from tests.configure.conftest import LIVE_REDIS
from tests.configure.lora_math import (
    GPT2,
    LLAMA_MODULES,
    PHI3,
    SMOL,
    config,
    gpt2_shapes,
    layers,
    llama_shapes,
    lora_params,
    phi3_shapes,
)

pytestmark = pytest.mark.browser

SMOL_CFG = config(SMOL)
SMOL_SHAPES = llama_shapes(SMOL_CFG)
SMOL_LAYERS = layers(SMOL_CFG)


def smol(r: int, targets=LLAMA_MODULES) -> str:
    """Trainable count on the default model, formatted as the page shows it."""
    return f"{lora_params(r, SMOL_SHAPES, targets, SMOL_LAYERS):,d}"


def posts_to(page, path: str) -> list:
    """A live list of the POST requests the page sends to `path`."""
    seen = []
    page.on("request", lambda request: seen.append(request)
            if request.method == "POST" and request.url.endswith(path) else None)
    return seen


def open_page(page, query: str = ""):
    page.goto(f"/{query}")
    expect(page.locator("#peft-line")).to_be_visible()
    page.evaluate("window.__sameDocument = true")


def screenshot_at_400px(page, selector: str, path: Path) -> None:
    """Narrow the tab to a phone's width, bring `selector` into view and screenshot what shows."""
    page.set_viewport_size({"width": 400, "height": 900})
    page.locator(selector).scroll_into_view_if_needed()
    page.screenshot(path=str(path), full_page=False)


def block_targets(page) -> list[str]:
    return page.locator(".block-diagram .section:not(.outside) .module-box").evaluate_all(
        "boxes => boxes.map(b => b.dataset.target)")


def test_page_loads_without_console_errors(page):
    open_page(page)
    expect(page.locator("#trainable-params")).to_have_text(smol(16))
    assert page.problems == []


def test_typing_a_rank_updates_the_estimate_debounced_without_a_reload(page):
    open_page(page)
    estimates = posts_to(page, "/estimate")
    rank = page.locator("#r")
    rank.select_text()
    rank.press_sequentially("128", delay=30)
    expect(page.locator("#trainable-params")).to_have_text(smol(128))
    expect(page.locator("#peft-line")).to_contain_text(f"trainable params: {smol(128)} ||")
    # The answer for 128 is in, so every request the keystrokes made (each sent before the last one) is counted.
    assert len(estimates) < 3, "keystrokes inside the 250 ms debounce window must share a request"
    assert parse_qs(estimates[-1].post_data)["r"] == ["128"]
    assert page.evaluate("window.__sameDocument") is True
    q = SMOL_SHAPES["q_proj"]
    expect(page.locator('.module-box[data-target="q_proj"] .per-module')).to_have_text(f"{128 * (q[0] + q[1]):,d}")


def test_rank_slider_drives_the_number_and_the_estimate(page):
    open_page(page)
    page.locator("#r-range").evaluate("el => { el.value = 4; el.dispatchEvent(new Event('input', {bubbles: true})); }")
    expect(page.locator("#r")).to_have_value("4")
    expect(page.locator("#trainable-params")).to_have_text(smol(4))


def test_clicking_mlp_boxes_off_leaves_attention_only(page):
    open_page(page)
    for name in ("gate_proj", "up_proj", "down_proj"):
        page.locator(f'.module-box[data-target="{name}"]').click()
    attention = ["q_proj", "k_proj", "v_proj", "o_proj"]
    expect(page.locator("#trainable-params")).to_have_text(smol(16, attention))
    expect(page.locator('.module-box[data-target="gate_proj"]')).not_to_have_class(re.compile(r"\bon\b"))
    expect(page.locator('.module-box[data-target="q_proj"]')).to_have_class(re.compile(r"\bon\b"))
    expect(page.locator("#breakdown tbody tr")).to_have_count(4)
    assert page.evaluate("window.__sameDocument") is True


def test_clicking_a_box_in_all_linear_mode_switches_back_to_picking(page):
    open_page(page)
    page.locator('input[name=target_mode][value="all-linear"]').check()
    expect(page.locator("#block-diagram")).to_have_attribute("data-mode", "all-linear")
    page.locator('.module-box[data-target="down_proj"]').click()  # turns it off, and picks modules again
    expect(page.locator('input[name=target_mode][value="modules"]')).to_be_checked()
    expect(page.locator("#trainable-params")).to_have_text(smol(16, LLAMA_MODULES[:-1]))


def test_conservative_preset_sets_rank_alpha_dropout_and_query_value(page):
    open_page(page)
    page.locator('.preset[data-preset="conservative"]').click()
    expect(page.locator("#trainable-params")).to_have_text(smol(8, ["q_proj", "v_proj"]))
    expect(page.locator("#r")).to_have_value("8")
    expect(page.locator("#lora_alpha")).to_have_value("8")
    expect(page.locator("#lora_dropout")).to_have_value("0.05")
    checked = page.locator("input[name=target_modules]:checked").evaluate_all("cbs => cbs.map(c => c.value)")
    assert checked == ["q_proj", "v_proj"]
    expect(page.locator("#export-python")).to_contain_text("lora_dropout=0.05")


def test_alpha_follows_the_rank_while_locked_and_is_free_when_unlocked(page):
    open_page(page)
    alpha, rank = page.locator("#lora_alpha"), page.locator("#r")
    expect(alpha).to_have_js_property("readOnly", True)
    rank.fill("24")
    expect(alpha).to_have_value("24")
    expect(page.locator("#export-python")).to_contain_text("lora_alpha=24,")
    page.get_by_text("alpha = rank").click()
    expect(page.locator("#alpha_locked")).not_to_be_checked()
    expect(alpha).to_have_js_property("readOnly", False)
    alpha.fill("48")
    expect(page.locator("#scale")).to_contain_text("2")  # 48 / 24
    expect(page.locator("#export-python")).to_contain_text("lora_alpha=48,")
    rank.fill("12")
    expect(page.locator("#export-python")).to_contain_text("r=12,")
    expect(alpha).to_have_value("48")
    expect(page.locator("#scale")).to_contain_text("4")  # 48 / 12
    page.locator("#alpha_locked").check()
    expect(alpha).to_have_value("12")
    expect(page.locator("#export-python")).to_contain_text("lora_alpha=12,")


def test_export_tabs_switch_and_survive_an_estimate_refresh(page):
    open_page(page)
    python, yaml = page.locator("#export-python"), page.locator("#export-yaml")
    expect(python).to_be_visible()
    expect(yaml).to_be_hidden()
    page.locator('.tab[data-tab="yaml"]').click()
    expect(yaml).to_be_visible()
    expect(python).to_be_hidden()
    expect(yaml).to_contain_text("r: 16")
    page.locator("#r").fill("20")
    expect(page.locator("#export-yaml")).to_contain_text("r: 20")
    expect(page.locator("#export-yaml")).to_be_visible()
    expect(page.locator('.tab[data-tab="yaml"]')).to_have_class(re.compile(r"\bon\b"))


def test_copy_puts_the_visible_pane_on_the_clipboard(page):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    open_page(page)
    page.locator("[data-copy]").click()
    expect(page.locator("[data-copy]")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == page.locator("#export-python").text_content()
    page.locator('.tab[data-tab="yaml"]').click()
    page.locator("[data-copy]").click()
    clipboard = page.evaluate("navigator.clipboard.readText()")
    assert clipboard == page.locator("#export-yaml").text_content() and clipboard.startswith("lora:")


def test_copy_works_without_the_clipboard_api_on_a_plain_http_host(page):
    # http://gpu-box:8000 is not a secure context, so navigator.clipboard is undefined there.
    page.add_init_script("Object.defineProperty(Navigator.prototype, 'clipboard', {get: () => undefined})")
    open_page(page)
    page.locator("[data-copy]").click()
    expect(page.locator("[data-copy]")).to_have_text(re.compile("Copied|Press Ctrl\\+C"))
    assert page.problems == []


def test_regex_box_shows_only_in_regex_mode(page):
    open_page(page)
    expect(page.locator("#target_regex")).to_be_hidden()
    page.locator('input[name=target_mode][value="regex"]').check()
    expect(page.locator("#target_regex")).to_be_visible()
    page.locator("#target_regex").fill(r".*\.(q|v)_proj")
    expect(page.locator("#trainable-params")).to_have_text(smol(16, ["q_proj", "v_proj"]))


def test_rank_zero_shows_the_error_beside_the_rank(page):
    open_page(page)
    page.locator("#r").fill("0")
    expect(page.locator('#msg-r [data-error-for="r"]')).to_contain_text("greater than or equal to 1")
    expect(page.locator("#estimate-invalid")).to_be_visible()
    page.locator("#r").fill("16")
    expect(page.locator("#trainable-params")).to_have_text(smol(16))
    expect(page.locator("#msg-r .field-error")).to_have_count(0)


def test_switching_to_gpt2_draws_its_block_and_counts_its_conv1d_layers(page):
    open_page(page)
    page.locator("#model").fill(GPT2)
    page.locator("#model").press("Enter")
    expect(page.locator('.module-box[data-target="attn.c_proj"]')).to_be_visible()
    shapes = gpt2_shapes(config(GPT2))
    assert block_targets(page) == list(shapes)
    for target, (d_in, d_out) in shapes.items():
        expect(page.locator(f'.module-box[data-target="{target}"] .box-shape')).to_have_text(f"{d_in} → {d_out}")
    expected = lora_params(16, shapes, shapes, layers(config(GPT2)))
    expect(page.locator("#trainable-params")).to_have_text(f"{expected:,d}")
    assert page.evaluate("window.__sameDocument") is True


def test_picking_phi3_from_the_suggestions_draws_its_fused_projections(page):
    open_page(page)
    configures = posts_to(page, "/configure")
    page.locator("#model").click()
    page.locator("#model").fill("phi-3")
    expect(page.locator("#model-results .result")).to_have_count(1)
    expect(page.locator("#peft-line")).to_be_visible()  # the suggestions open under the box, not over the estimate
    page.locator(f'#model-results .result[data-model-id="{PHI3}"]').click()
    expect(page.locator('.module-box[data-target="qkv_proj"]')).to_be_visible()
    shapes = phi3_shapes(config(PHI3))
    assert sorted(block_targets(page)) == sorted(shapes)
    for target, (d_in, d_out) in shapes.items():
        expect(page.locator(f'.module-box[data-target="{target}"] .box-shape')).to_have_text(f"{d_in} → {d_out}")
    expected = lora_params(16, shapes, shapes, layers(config(PHI3)))
    expect(page.locator("#trainable-params")).to_have_text(f"{expected:,d}")
    # The half-typed "phi-3" must never be sent as a model (a blur would do that and race the pick).
    assert [parse_qs(r.post_data)["model"] for r in configures] == [[PHI3]]


def test_local_model_shows_pending_then_exact_numbers_and_keeps_the_rank(page, tiny_llama_dir):
    open_page(page)
    page.locator("#r").fill("8")
    expect(page.locator("#trainable-params")).to_have_text(smol(8))
    page.locator("#model").fill(str(tiny_llama_dir))
    page.locator("#model").press("Enter")
    expect(page.locator("#inventory-pending")).to_be_visible()
    cfg = json.loads((tiny_llama_dir / "config.json").read_text())
    expected = lora_params(8, llama_shapes(cfg), LLAMA_MODULES, layers(cfg))
    expect(page.locator("#trainable-params")).to_have_text(f"{expected:,d}", timeout=120_000)
    expect(page.locator("#r")).to_have_value("8")
    assert page.evaluate("window.__sameDocument") is True


def test_an_estimate_answering_after_a_model_change_leaves_the_new_page_alone(page, tiny_llama_dir):
    """A settings edit's estimate still in flight when Enter in the model field swaps the form in: its answer is
    for a form that is gone, and its field messages must not land on the new page (or fail to find it)."""
    open_page(page)
    held = []
    page.route("**/estimate", lambda route: held.append(route))
    page.locator("#r").fill("12")
    for _ in range(100):  # the edit's estimate leaves after its 250 ms debounce
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1
    page.locator("#model").fill(str(tiny_llama_dir))
    page.locator("#model").press("Enter")
    expect(page.locator("#inventory-pending")).to_be_visible()
    with page.expect_response("**/estimate") as answered:
        held[0].continue_()
    answered.value.finished()
    page.unroute("**/estimate")
    expect(page.locator("#inventory-pending")).to_be_visible()
    page.wait_for_function("() => !document.querySelector('.htmx-request')")
    assert page.problems == []


OVERFLOW_JS = """() => {
  const clipped = [];
  const boxes = '.card, .block-diagram, .section, .module-box, pre, table, .figures div';
  for (const el of document.querySelectorAll(boxes)) {
    if (el.scrollWidth > el.clientWidth + 1) clipped.push(`${el.tagName.toLowerCase()}.${el.className} #${el.id}`);
  }
  if (document.documentElement.scrollWidth > window.innerWidth) clipped.push('page');
  return clipped;
}"""


@pytest.mark.parametrize(("name", "model"), [("configure", SMOL), ("configure-gpt2", GPT2), ("configure-phi3", PHI3),
                                             ("configure-gemma3-4b", "google/gemma-3-4b-it")])
def test_configuration_page_screenshot_has_nothing_cut_off(page, tmp_path, name, model):
    """Full-page shots at 1400px; set TUNEBOARD_SCREENSHOT_DIR to keep them (docs/screenshots/configure.png)."""
    open_page(page, f"?model={model}")
    assert page.evaluate(OVERFLOW_JS) == []
    out = Path(os.environ.get("TUNEBOARD_SCREENSHOT_DIR") or tmp_path) / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=out, full_page=True)
    assert 20_000 < out.stat().st_size < 400_000
    assert page.problems == []


def test_api_docs_render_with_no_request_leaving_the_server(page, live_server):
    outside: list[str] = []

    def only_this_server(route):
        if route.request.url.startswith(live_server):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    page.goto("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Tuneboard 0.1.0")
    expect(page.locator(".opblock-summary-path[data-path='/v1/fine_tuning/estimate']")).to_be_visible()
    assert outside == []
    assert not page.problems, page.problems


def test_a_mixtral_folder_draws_stacked_experts_that_click_into_target_parameters(page, tmp_path):
    """An MoE block: the router and the experts' stacked weights are boxes; the experts count PEFT's per-expert
    LoRA (r × experts × (in + out) a layer), and the presets that mean "the MLP" tick them."""
    directory = tmp_path / "tiny-mixtral"
    directory.mkdir()
    cfg = {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "hidden_size": 64,
           "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 512, "max_position_embeddings": 64}
    (directory / "config.json").write_text(json.dumps(cfg))
    open_page(page)
    page.locator("#r").fill("4")
    page.locator("#model").fill(str(directory))
    page.locator("#model").press("Enter")
    experts = page.locator('.module-box.experts[data-target="experts.gate_up_proj"]')
    expect(experts).to_be_visible(timeout=120_000)
    expect(experts).to_contain_text("×8 experts, stacked")
    expect(page.locator('.module-box.router[data-target="gate.weight"]')).to_be_visible()
    # Attention + MLP, the starting preset, means the experts on an MoE model: they start ticked.
    expect(experts).to_have_class(re.compile(r"\bon\b"))
    expect(page.locator('.module-box[data-target="experts.down_proj"]')).to_have_class(re.compile(r"\bon\b"))
    before = int(page.locator("#trainable-params").inner_text().replace(",", ""))
    experts.click()
    # gate_up_proj is (8, 2·96, 64): A is (4·8, 64), B is (192, 4·8), in each of 2 layers.
    expected = before - 4 * 8 * (64 + 192) * 2
    expect(page.locator("#trainable-params")).to_have_text(f"{expected:,d}")
    expect(experts).not_to_have_class(re.compile(r"\bon\b"))
    page.locator('.preset[data-preset="attention-qv"]').click()
    expect(page.locator('.module-box[data-target="experts.down_proj"]')).not_to_have_class(re.compile(r"\bon\b"))
    page.locator('.preset[data-preset="balanced"]').click()
    expect(experts).to_have_class(re.compile(r"\bon\b"))
    out = Path(os.environ.get("TUNEBOARD_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    page.locator("#block-diagram").screenshot(path=out / "configure-mixtral-block.png")
    page.set_viewport_size({"width": 400, "height": 900})
    assert page.evaluate(OVERFLOW_JS) == []
    assert page.problems == []


def test_choosing_dpo_shows_its_beta_and_doubles_the_sequences_the_memory_holds(page):
    open_page(page)
    beta = page.locator("#beta")
    expect(beta).to_be_hidden()
    total = page.locator("#memory-total")
    before = total.inner_text()
    page.locator("#method_type").select_option("dpo")
    expect(beta).to_be_visible()
    expect(page.locator("#dpo_loss")).to_be_visible()
    # A micro-batch of 4 pairs is 8 sequences: more activations and logits.
    expect(page.locator(".estimate h2", has_text="GPU memory")).to_contain_text("pairs (2 sequences each)")
    expect(total).not_to_have_text(before)
    page.locator("#beta").fill("0")
    expect(page.locator('[data-error-for="beta"]')).to_contain_text("greater than 0")
    page.locator("#beta").fill("0.2")
    expect(page.locator('[data-error-for="beta"]')).to_have_count(0)
    page.locator("#method_type").select_option("supervised")
    expect(beta).to_be_hidden()
    expect(total).to_have_text(before)
    assert page.problems == []


def test_gpus_and_strategy_turn_the_memory_card_per_gpu_live(page, tmp_path):
    open_page(page, "?model=meta-llama/Llama-3.1-70B")
    page.fill("input[name=sequence_length]", "4096")
    page.fill("input[name=batch_size]", "1")
    page.check("input[name=gradient_checkpointing]")
    expect(page.locator("#memory-per-gpu")).to_have_count(0)
    single = page.locator("#memory-total").inner_text()
    page.fill("input[name=gpus]", "8")
    expect(page.locator("#memory-per-gpu")).to_have_text("per GPU, 8 GPUs, FSDP")
    expect(page.locator("#effective-batch")).to_contain_text("Effective batch: 8 examples a step")
    assert page.locator("#memory-total").inner_text() != single
    expect(page.locator("#fits [data-gpu='80']")).to_have_text("80 GB fits")
    page.select_option("#strategy", "ddp")
    expect(page.locator("#memory-per-gpu")).to_have_text("per GPU, 8 GPUs, DDP")
    expect(page.locator("#fits [data-gpu='80']")).to_have_text("80 GB too small")
    screenshot_at_400px(page, "#memory-total", tmp_path / "gpus-400px.png")
    page.fill("input[name=gpus]", "1")
    expect(page.locator("#msg-strategy")).to_contain_text("set gpus to 2 or more")
    assert page.problems == []


def test_the_queue_field_warns_live_when_no_worker_has_the_gpus(page, live_server, tmp_path):
    import redis

    from app.fleet.worker_registry import KEY_PREFIX

    redis_url, prefix = LIVE_REDIS[live_server]
    client = redis.Redis.from_url(redis_url)
    key = f"{prefix}{KEY_PREFIX}onegpu-host"
    worker = {"hostname": "onegpu-host", "host": "elsewhere", "queues": ["default"], "seen_at": time.time(),
              "device": "NVIDIA H100 80GB HBM3", "gpu_memory_bytes": 80 * 1024**3, "gpu_count": 1}
    client.set(key, json.dumps(worker), px=120_000)
    try:
        open_page(page, "?model=meta-llama/Llama-3.1-70B")
        expect(page.locator("#msg-queue")).not_to_contain_text("GPUs")
        page.fill("input[name=gpus]", "4")
        page.keyboard.press("Enter")  # a user confirming the field must not submit a launch
        expect(page.locator("#msg-queue")).to_contain_text(
            "No live worker on queue 'default' has 4 GPUs: the most is 1 (NVIDIA H100 80GB HBM3 on onegpu-host)")
        assert page.evaluate("window.__sameDocument") is True, "Enter left the page"
        screenshot_at_400px(page, "#msg-queue", tmp_path / "queue-gpus-400px.png")
        page.fill("input[name=gpus]", "1")
        expect(page.locator("#msg-queue")).not_to_contain_text("GPUs")
        assert page.problems == []
    finally:
        client.delete(key)
