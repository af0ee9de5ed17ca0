// The playground: the base model and up to four adapters answer each turn side by side, streamed token by token.
// Each column is one model; a turn is sent to /v1/chat/completions once per model (stream: true) with that model's
// own earlier replies as the history, and the Server-Sent Events are read from the fetch body as they arrive.
"use strict";

(() => {
  const page = document.getElementById("playground");
  if (!page) return;
  const choices = JSON.parse(page.dataset.choices);
  const start = JSON.parse(page.dataset.start);
  const csrf = document.querySelector("meta[name=csrf-token]");
  const $ = (id) => document.getElementById(id);
  const MAX_ADAPTERS = 4;
  const state = { turns: [], pending: null, controllers: [] };

  const baseSelect = $("base-model");
  const adapterList = $("adapter-list");

  function el(tag, attrs = {}, text = "") {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (text) node.textContent = text;
    return node;
  }

  function adaptersOf(base) { return choices.adapters[base] || []; }

  function chosenAdapters() {
    return [...adapterList.querySelectorAll("input:checked")].map((box) => box.value);
  }

  function models() { return [baseSelect.value, ...chosenAdapters()]; }

  function labelOf(model) {
    if (model === baseSelect.value) return "Base";
    const found = adaptersOf(baseSelect.value).find((item) => item.id === model);
    return found ? found.label : model;
  }

  function renderAdapters(checked = []) {
    adapterList.replaceChildren();
    const found = adaptersOf(baseSelect.value);
    $("no-adapters").hidden = found.length > 0;
    for (const item of found) {
      const box = el("input", { type: "checkbox", value: item.id, "data-job": item.job_id });
      box.checked = checked.includes(item.id);
      const label = el("label", { class: "adapter", title: item.id });
      label.append(box, document.createTextNode(" " + item.label));
      adapterList.append(label);
    }
    limitAdapters();
    renderHeldOutJobs();
  }

  function limitAdapters() {
    const full = chosenAdapters().length >= MAX_ADAPTERS;
    for (const box of adapterList.querySelectorAll("input")) box.disabled = full && !box.checked;
  }

  // ---- columns ---------------------------------------------------------------------------------------------------

  function hasReference() { return state.turns.some((turn) => turn.reference); }

  function renderColumns() {
    const columns = $("columns");
    columns.replaceChildren();
    const shown = models();
    for (const model of shown) {
      const column = el("article", { class: "column card", "data-model": model });
      const head = el("header", { class: "column-head" });
      head.append(el("strong", {}, labelOf(model)), el("code", { class: "model-id", title: model }, model));
      column.append(head);
      state.turns.forEach((turn, index) => column.append(turnNode(turn, index, model)));
      columns.append(column);
    }
    if (hasReference()) {
      const column = el("article", { class: "column card reference-column", "data-model": "reference" });
      column.append(el("header", { class: "column-head" }, "Reference (held-out data)"));
      state.turns.forEach((turn) => {
        const block = el("div", { class: "turn" });
        block.append(el("div", { class: "bubble user" }, turn.user));
        block.append(el("div", { class: "bubble reference" }, turn.reference || "—"));
        column.append(block);
      });
      columns.append(column);
    }
  }

  function turnNode(turn, index, model) {
    const block = el("div", { class: "turn", "data-turn": String(index) });
    for (const message of turn.context || []) block.append(el("div", { class: `bubble context ${message.role}` }, message.content));
    block.append(el("div", { class: "bubble user" }, turn.user));
    const reply = turn.replies[model] || {};
    const bubble = el("div", { class: "bubble assistant" + (reply.error ? " failed" : ""), "data-reply": model });
    bubble.textContent = reply.error || reply.text || "";
    block.append(bubble);
    block.append(el("div", { class: "reply-facts small muted", "data-facts": model }, facts(reply)));
    return block;
  }

  function facts(reply) {
    if (reply.error) return "";
    if (reply.streaming) return "generating…";
    const parts = [];
    if (reply.tokens_per_second) parts.push(`${reply.tokens_per_second.toFixed(1)} tokens/s`);
    if (reply.finish_reason === "length") parts.push("cut at max new tokens");
    return parts.join(" · ");
  }

  function updateReply(index, model) {
    const reply = state.turns[index].replies[model];
    const column = [...document.querySelectorAll(".column")].find((node) => node.dataset.model === model);
    const block = column && column.querySelector(`[data-turn="${index}"]`);
    if (!block) return;
    const bubble = block.querySelector(".bubble.assistant");
    bubble.textContent = reply.error || reply.text;
    bubble.classList.toggle("failed", Boolean(reply.error));
    block.querySelector(".reply-facts").textContent = facts(reply);
  }

  // ---- sending ---------------------------------------------------------------------------------------------------

  function settings() {
    const stop = $("stop").value.split(",").map((item) => item.trim()).filter(Boolean).slice(0, 4);
    const seed = $("seed").value === "" ? null : Number($("seed").value);
    return { max_tokens: Number($("max-tokens").value) || 256, temperature: Number($("temperature").value),
             top_p: Number($("top-p").value) || 1, seed, stop };
  }

  function history(model, upTo) {
    const messages = [];
    const system = $("system-prompt").value.trim();
    if (system) messages.push({ role: "system", content: system });
    state.turns.slice(0, upTo + 1).forEach((turn, index) => {
      messages.push(...(turn.context || []));
      messages.push({ role: "user", content: turn.user });
      if (index < upTo) messages.push({ role: "assistant", content: (turn.replies[model] || {}).text || "" });
    });
    return messages;
  }

  async function readEvents(response, onData) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event.split("\n").filter((line) => line.startsWith("data: ")).map((line) => line.slice(6)).join("\n");
        if (data && data !== "[DONE]") onData(JSON.parse(data));
      }
    }
  }

  async function ask(index, model, controller) {
    const reply = (state.turns[index].replies[model] = { model, text: "", streaming: true });
    updateReply(index, model);
    const body = { model, messages: history(model, index), stream: true, stream_options: { include_usage: true },
                   ...settings() };
    if (body.seed === null) delete body.seed;
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST", signal: controller.signal,
        headers: { "Content-Type": "application/json", ...(csrf ? { "X-CSRF-Token": csrf.content } : {}) },
        body: JSON.stringify(body),
      });
      if (!response.ok) {
        const problem = await response.json().catch(() => ({}));
        reply.error = (problem.error && problem.error.message) || `the server answered ${response.status}`;
      } else {
        await readEvents(response, (chunk) => {
          if (chunk.error) { reply.error = chunk.error.message; return; }
          const choice = chunk.choices && chunk.choices[0];
          if (choice && choice.delta && choice.delta.content) reply.text += choice.delta.content;
          if (choice && choice.finish_reason) reply.finish_reason = choice.finish_reason;
          if (chunk.usage && chunk.usage.tuneboard) reply.tokens_per_second = chunk.usage.tuneboard.tokens_per_second;
          updateReply(index, model);
        });
      }
    } catch (error) {
      if (error.name === "AbortError") reply.finish_reason = "stopped";
      else reply.error = `the request failed: ${error.message}`;
    }
    reply.streaming = false;
    updateReply(index, model);
  }

  async function send(text) {
    if (!text.trim() || state.controllers.length) return;
    const pending = state.pending || {};
    state.turns.push({ context: pending.context || [], user: text, reference: pending.reference || null,
                       replies: {} });
    state.pending = null;
    $("message").value = "";
    renderColumns();
    const index = state.turns.length - 1;
    state.controllers = models().map(() => new AbortController());
    $("stop-replies").hidden = false;
    $("send").disabled = true;
    await Promise.all(models().map((model, position) => ask(index, model, state.controllers[position])));
    state.controllers = [];
    $("stop-replies").hidden = true;
    $("send").disabled = false;
  }

  // ---- held-out rows ---------------------------------------------------------------------------------------------

  function renderHeldOutJobs() {
    const select = $("held-out-job");
    const jobs = new Map();
    for (const item of adaptersOf(baseSelect.value)) if (item.held_out) jobs.set(item.job_id, item.label.split(" ")[0]);
    select.replaceChildren(el("option", { value: "" }, jobs.size ? "(pick a job)" : "(no job on this base has any)"));
    for (const [jobId, name] of jobs) select.append(el("option", { value: jobId }, `${name} (${jobId})`));
    $("held-out-row").hidden = true;
    $("held-out-note").textContent = "";
  }

  async function loadHeldOut(jobId) {
    const rows = $("held-out-row");
    rows.hidden = true;
    if (!jobId) return;
    $("held-out-note").textContent = "reading the held-out data…";
    const response = await fetch(`/playground/held-out?job_id=${encodeURIComponent(jobId)}`);
    const answer = await response.json();
    if (!response.ok) { $("held-out-note").textContent = answer.error.message; return; }
    state.heldOut = answer.rows;
    rows.replaceChildren(el("option", { value: "" }, `(pick one of ${answer.rows.length} rows)`));
    answer.rows.forEach((row, index) => rows.append(el("option", { value: String(index) }, row.user.slice(0, 90))));
    rows.hidden = false;
    $("held-out-note").textContent = answer.source ? `from the ${answer.source}` : "this job has no held-out data";
  }

  function useRow(index) {
    const row = state.heldOut && state.heldOut[Number(index)];
    if (!row) return;
    if (row.system) $("system-prompt").value = row.system;
    $("message").value = row.user;
    state.pending = { context: row.context, reference: row.reference };
    $("held-out-note").textContent = "the row's reference answer shows beside the replies once sent";
    $("message").focus();
  }

  // ---- saving ----------------------------------------------------------------------------------------------------

  async function save() {
    const result = $("save-result");
    if (!state.turns.length) { result.textContent = "Send a message first."; return; }
    const title = $("title").value.trim() || state.turns[0].user.slice(0, 80);
    const body = {
      title, base_model: baseSelect.value, models: models(), system: $("system-prompt").value, settings: settings(),
      turns: state.turns.map((turn) => ({
        context: turn.context || [], user: turn.user, reference: turn.reference || null,
        replies: models().filter((model) => turn.replies[model]).map((model) => {
          const reply = turn.replies[model];
          return { model, text: reply.text || "", tokens_per_second: reply.tokens_per_second || null,
                   finish_reason: reply.finish_reason || null, error: reply.error || null };
        }),
      })),
    };
    const response = await fetch("/playground/conversations", {
      method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", ...(csrf ? { "X-CSRF-Token": csrf.content } : {}) },
    });
    const answer = await response.json();
    result.replaceChildren();
    if (!response.ok) { result.textContent = answer.error.message; return; }
    const link = el("a", { href: answer.url, id: "saved-link" }, "Saved: link to share");
    result.append(link);
  }

  // ---- start -----------------------------------------------------------------------------------------------------

  function restore(saved) {
    baseSelect.value = saved.base_model;
    renderAdapters(saved.models.slice(1));
    $("max-tokens").value = saved.settings.max_tokens;
    $("temperature").value = saved.settings.temperature;
    $("top-p").value = saved.settings.top_p;
    $("seed").value = saved.settings.seed ?? "";
    $("stop").value = (saved.settings.stop || []).join(", ");
    $("system-prompt").value = saved.system || "";
    $("title").value = saved.title;
    state.turns = saved.turns.map((turn) => ({
      context: turn.context, user: turn.user, reference: turn.reference,
      replies: Object.fromEntries(turn.replies.map((reply) => [reply.model, reply])),
    }));
  }

  function baseOf(model) {
    for (const [base, found] of Object.entries(choices.adapters)) if (found.some((item) => item.id === model)) return base;
    return choices.bases.includes(model) ? model : null;
  }

  if (start.conversation) {
    restore(start.conversation);
  } else if (start.chosen.length) {
    const base = baseOf(start.chosen[0]);
    if (base) baseSelect.value = base;
    renderAdapters(start.chosen);
  } else {
    renderAdapters();
  }
  renderColumns();

  baseSelect.addEventListener("change", () => { state.turns = []; renderAdapters(); renderColumns(); });
  adapterList.addEventListener("change", () => { limitAdapters(); renderColumns(); });
  $("composer").addEventListener("submit", (event) => { event.preventDefault(); send($("message").value); });
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send($("message").value);
    }
  });
  $("stop-replies").addEventListener("click", () => state.controllers.forEach((controller) => controller.abort()));
  $("new-conversation").addEventListener("click", () => { state.turns = []; state.pending = null; renderColumns(); });
  $("save").addEventListener("click", save);
  $("held-out-job").addEventListener("change", (event) => loadHeldOut(event.target.value));
  $("held-out-row").addEventListener("change", (event) => useRow(event.target.value));
})();
