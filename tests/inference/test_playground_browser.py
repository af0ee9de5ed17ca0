"""The playground in Chromium, with a real training worker and a real inference worker: a job's "Try it" link opens
it with the adapter chosen beside the base; a held-out row of the job's validation split becomes the turn; Enter
sends it; both replies stream into their columns (seen arriving in pieces), each with its speed, beside the row's
reference answer; the conversation is saved, and its link opens it for the team (another team gets a 404). Back on
the job page, the held-out answers stand beside their references, and "Build merged model" shows its progress
until the download is there.
"""

from __future__ import annotations

import os

import httpx
import pytest

from tests.api.conftest import sdk_client
from tests.inference.conftest import trained_tiny_job
from tests.service_fixtures import make_account, signed_in_context, watch_problems

pytestmark = pytest.mark.browser

# Counts the changes of each reply bubble's text: more than one means the reply arrived in pieces.
COUNT_UPDATES = """
() => {
window.replyUpdates = {};
new MutationObserver((changes) => {
  for (const change of changes) {
    const node = change.target.closest ? change.target : change.target.parentElement;
    const bubble = node && node.closest('[data-reply]');
    if (bubble && bubble.textContent) {
      const model = bubble.dataset.reply;
      window.replyUpdates[model] = (window.replyUpdates[model] || 0) + 1;
    }
  }
}).observe(document.getElementById('columns'), {subtree: true, childList: true, characterData: true});
}
"""


def _shot(page, name: str) -> None:
    directory = os.environ.get("TUNEBOARD_SCREENSHOT_DIR")
    if directory:
        page.screenshot(path=os.path.join(directory, name), full_page=True)


def test_compare_the_base_and_the_adapter_on_a_held_out_row_then_share_the_conversation(
        browser, live_server, account, start_worker, tuneboard_env, tiny_model_dir):
    start_worker()
    start_worker(queues=[tuneboard_env.settings.inference_queue], name="inference")
    sdk = sdk_client(live_server.url, account.token)
    job = trained_tiny_job(sdk, tiny_model_dir, tuneboard_env, records=24, validation_split=25)

    context = signed_in_context(browser, live_server.url, account, viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    problems = watch_problems(page)
    page.goto(f"/jobs/{job.id}")
    page.click("#try-in-playground")
    page.wait_for_url(lambda url: "/playground?models=" in url)
    assert page.input_value("#base-model") == str(tiny_model_dir)
    assert page.is_checked(f"#adapter-list input[value='{job.fine_tuned_model}']")
    assert page.locator(".column").count() == 2

    page.click("#generation summary")  # the settings are folded away until asked for
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    page.select_option("#held-out-job", job.id)
    page.wait_for_function("() => document.querySelectorAll('#held-out-row option').length > 1")
    assert "25% held out of the training file" in page.text_content("#held-out-note")
    page.select_option("#held-out-row", "1")
    row = page.input_value("#message")
    assert row.strip()
    page.evaluate(COUNT_UPDATES)
    page.focus("#message")
    page.keyboard.press("Enter")

    page.wait_for_function("() => document.querySelectorAll('.reply-facts').length === 2 && [...document."
                           "querySelectorAll('.reply-facts')].every(node => node.textContent.includes('tokens/s'))",
                           timeout=120_000)
    replies = {model: page.text_content(f"[data-reply='{model}']") for model in (str(tiny_model_dir),
                                                                                  job.fine_tuned_model)}
    updates = page.evaluate("() => window.replyUpdates")
    assert all(updates.get(model, 0) > 1 for model in replies), updates  # streamed in pieces, not at once
    assert page.locator(".reference-column .bubble.reference").count() == 1
    assert page.text_content(".reference-column .bubble.user") == row
    # What the columns show is what the API answers for the same turn (the row's system prompt, its question)
    # and settings.
    system = page.input_value("#system-prompt")
    messages = [*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": row}]
    for model, text in replies.items():
        answer = sdk.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0)
        assert answer.choices[0].message.content == text, model
    _shot(page, "playground-wide.png")

    page.fill("#title", "tiny vs base on a held-out row")
    page.click("#save")
    page.wait_for_selector("#saved-link")
    link = page.get_attribute("#saved-link", "href")
    page.goto(link)
    assert page.title().startswith("tiny vs base on a held-out row")
    assert page.text_content(f"[data-reply='{job.fine_tuned_model}']") == replies[job.fine_tuned_model]
    assert page.text_content(".reference-column .bubble.reference").strip()

    page.set_viewport_size({"width": 400, "height": 900})
    assert page.evaluate("() => document.scrollingElement.scrollWidth") <= 400
    _shot(page, "playground-phone.png")

    page.set_viewport_size({"width": 1440, "height": 1000})
    page.goto(f"/jobs/{job.id}")
    answers = page.locator("#held-out-answers .answer-row")
    assert answers.count() == 6  # the 25 % split of 24 records, all under the default of 8
    first_reference = page.text_content("#held-out-answers .answer-row .reference p")
    assert first_reference.strip() and page.text_content("#held-out-answers h2").count("at step 6") == 1
    page.click("#build-merged")
    page.wait_for_selector("#merged-progress")  # the bar, while a worker builds it
    page.wait_for_selector("#download-merged", timeout=120_000)  # the block polled itself to the end
    assert "Download merged model (.zip" in page.text_content("#download-merged")
    _shot(page, "job-held-out-and-merged.png")
    page.set_viewport_size({"width": 400, "height": 900})
    wide = page.evaluate("() => [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right"
                         " > 401).slice(0, 8).map(e => e.tagName + '#' + e.id + '.' + e.className + ' '"
                         " + Math.round(e.getBoundingClientRect().right))")
    _shot(page, "job-held-out-phone.png")
    assert page.evaluate("() => document.scrollingElement.scrollWidth") <= 400, wide
    assert problems == []
    context.close()

    from app.db import new_session

    beta = make_account(new_session, "carol@example.com", "Beta")
    other = httpx.get(f"{live_server.url}{link}", headers=beta.headers, timeout=30)
    assert other.status_code == 404
    sdk.close()
