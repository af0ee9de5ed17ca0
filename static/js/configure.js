// Configuration page behaviour that needs no server round trip: the alpha lock, the rank slider,
// presets, the module picture's per-rank labels, the catalog picker, the export tabs and copy buttons.
(function () {
  "use strict";

  const form = () => document.getElementById("config-form");
  const byId = (id) => document.getElementById(id);
  // The export tab the user chose; the estimate panel is re-rendered on every change and must keep it.
  let exportTab = "python";

  // The form asks for a new estimate on "settings-edited": any edit but the model picker (it re-renders the
  // whole page on its own) and file inputs (uploaded by their own card).
  function announceEdit(event) {
    const f = event.target.closest && event.target.closest("#config-form");
    if (f && event.target.id !== "model" && event.target.type !== "file") {
      f.dispatchEvent(new CustomEvent("settings-edited"));
    }
  }
  document.addEventListener("input", announceEdit);
  document.addEventListener("change", announceEdit);

  function fire(el) {
    el.dispatchEvent(new Event("change", { bubbles: true }));
  }

  // DPO's beta and loss show only when DPO is the method.
  function syncMethod() {
    const select = byId("method_type");
    if (select) select.closest(".grid").dataset.method = select.value;
  }
  document.addEventListener("change", (event) => { if (event.target.id === "method_type") syncMethod(); });

  function syncAlpha() {
    const r = byId("r"), alpha = byId("lora_alpha"), lock = byId("alpha_locked");
    if (!r || !alpha || !lock) return;
    alpha.readOnly = lock.checked;
    if (lock.checked) alpha.value = r.value;
  }

  function syncBoxes() {
    const r = parseInt((byId("r") || {}).value, 10) || 0;
    const mode = (form().querySelector("input[name=target_mode]:checked") || {}).value;
    const diagram = byId("block-diagram");
    if (diagram) diagram.dataset.mode = mode;
    document.querySelectorAll(".module-box").forEach((box) => {
      const input = box.querySelector("input");
      box.classList.toggle("on", input.checked);
      box.querySelector(".per-module").textContent = (r * parseInt(box.dataset.perRank, 10)).toLocaleString("en-US");
      box.querySelector(".box-rank").textContent = r;
    });
    const regex = document.querySelector(".regex-field");
    if (regex) regex.hidden = mode !== "regex";
  }

  function applyPreset(button) {
    const f = form();
    const mode = button.dataset.mode;
    f.querySelector(`input[name=target_mode][value="${mode}"]`).checked = true;
    if (mode === "modules") {
      const wanted = new Set(button.dataset.targets.split(",").filter(Boolean));
      f.querySelectorAll("input[name=target_modules]").forEach((cb) => { cb.checked = wanted.has(cb.value); });
      // A mixture-of-experts model's experts are parameters: the presets that mean "the MLP" tick them too.
      const parameters = new Set((button.dataset.parameters || "").split(",").filter(Boolean));
      f.querySelectorAll("input[name=target_parameters]").forEach((cb) => { cb.checked = parameters.has(cb.value); });
    }
    if (button.dataset.r) {
      byId("r").value = button.dataset.r;
      byId("r-range").value = button.dataset.r;
      byId("alpha_locked").checked = button.dataset.alpha === button.dataset.r;
      byId("lora_alpha").value = button.dataset.alpha;
      byId("lora_dropout").value = button.dataset.dropout;
    }
    syncAlpha();
    syncBoxes();
    fire(byId("r"));
  }

  function showTab() {
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("on", t.dataset.tab === exportTab));
    document.querySelectorAll("[data-pane]").forEach((p) => { p.hidden = p.dataset.pane !== exportTab; });
  }

  // navigator.clipboard exists only in secure contexts (https, localhost); a team server reached as
  // http://gpu-box:8000 is not one, so fall back to the older copy command.
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    const area = document.createElement("textarea");
    area.value = text;
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    return copied ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  function flash(button, text) {
    button.textContent = text;
    setTimeout(() => { button.textContent = "Copy"; }, 1200);
  }

  function chooseModel(id) {
    const input = byId("model");
    input.value = id;
    byId("model-results").innerHTML = "";
    fire(input);
  }

  document.addEventListener("input", (event) => {
    const t = event.target;
    if (t.id === "r-range") { byId("r").value = t.value; syncAlpha(); syncBoxes(); fire(byId("r")); }
    if (t.id === "r") { const range = byId("r-range"); if (range) range.value = t.value; syncAlpha(); syncBoxes(); }
  });

  document.addEventListener("change", (event) => {
    const t = event.target;
    if (t.id === "alpha_locked" || t.id === "r") syncAlpha();
    // Any click in the picture means "pick modules", also one that turns a box off in all-linear mode.
    if (t.name === "target_modules") {
      form().querySelector("input[name=target_mode][value=modules]").checked = true;
    }
    syncBoxes();
  });

  document.addEventListener("click", (event) => {
    const preset = event.target.closest(".preset");
    if (preset) { applyPreset(preset); return; }
    const result = event.target.closest(".result");
    if (result) { chooseModel(result.dataset.modelId); return; }
    const suggestion = event.target.closest("[data-suggest-model]");
    if (suggestion) { chooseModel(suggestion.dataset.suggestModel); return; }
    const tab = event.target.closest(".tab");
    if (tab) { exportTab = tab.dataset.tab; showTab(); return; }
    const copy = event.target.closest("[data-copy]");
    if (copy) {
      const pane = document.querySelector("[data-pane]:not([hidden])");
      copyText(pane.textContent).then(
        () => flash(copy, "Copied"),
        () => { window.getSelection().selectAllChildren(pane); flash(copy, "Press Ctrl+C"); },
      );
    }
  });

  // Keep the focus in the model box while a suggestion is clicked: a blur would send the half-typed text
  // as the model (a `change`) and race the suggestion's own request.
  document.addEventListener("mousedown", (event) => {
    if (event.target.closest(".result")) event.preventDefault();
  });

  document.addEventListener("keydown", (event) => {
    const result = event.target.closest && event.target.closest(".result");
    if (result && event.key === "Enter") { event.preventDefault(); chooseModel(result.dataset.modelId); }
    if (event.target.id === "model" && event.key === "Enter") { event.preventDefault(); fire(event.target); }
  });

  document.addEventListener("click", (event) => {
    if (!event.target.closest(".model-picker")) { const list = byId("model-results"); if (list) list.innerHTML = ""; }
  });

  // An estimate still in flight when a model change replaced the form answers a form that is gone: its field
  // messages have no targets left. Its swap events reach the detached form, not the document, so the form listens.
  function dropIfDetached(event) { if (!event.currentTarget.isConnected) event.detail.shouldSwap = false; }
  function guardForm() { const form = byId("config-form"); if (form) form.addEventListener("htmx:beforeSwap", dropIfDetached); }

  // A swapped-in page (new model) needs the same syncing as the first load.
  document.addEventListener("htmx:afterSettle", (event) => {
    syncAlpha(); syncBoxes(); showTab(); guardForm();
    // A new data card (upload or demo dataset) changes the examples the advice and run plan use.
    const swapped = event.detail.target || event.detail.elt;
    if (swapped && swapped.id === "data-card" && byId("training_file")) fire(byId("training_file"));
    // A refused launch: bring its reasons to where the user is looking, the Launch button, and focus them.
    // A model id that could not be looked up: keep its message in view beside the model field.
    const unavailable = byId("inventory-unavailable");
    if (unavailable && swapped && swapped.id === "configure") byId("model").closest(".card").scrollIntoView({ block: "start" });
    const problems = byId("launch-problems");
    if (problems && swapped && swapped.id === "configure") {
      problems.focus({ preventScroll: true });
      problems.scrollIntoView({ block: "center" });
    }
  });
  document.addEventListener("DOMContentLoaded", () => { syncAlpha(); syncBoxes(); guardForm(); });
})();
