// The history page's compare picker: the ticked jobs are remembered across filter changes and pages (the
// table is swapped by htmx), listed beside the Compare button, and sent as /compare?jobs=a,b. Without this
// script the compare form still submits the boxes ticked on the current page.
(function () {
  "use strict";

  // The filter form searches as the user types (search box, tag) and at once on any other pick.
  const filters = document.getElementById("history-filters");
  if (filters) {
    const typed = (el) => el.type === "search" || el.name === "tag";
    filters.addEventListener("input", (event) => {
      if (typed(event.target)) filters.dispatchEvent(new CustomEvent("filters-typed"));
    });
    filters.addEventListener("change", (event) => {
      if (!typed(event.target)) filters.dispatchEvent(new CustomEvent("filters-picked"));
    });
  }

  const form = document.getElementById("compare-form");
  if (!form) return;
  const KEY = "tuneboard.compare";
  const MAX = 5;
  const picked = new Map(JSON.parse(sessionStorage.getItem(KEY) || "[]")); // id -> name, in ticking order

  function save() { sessionStorage.setItem(KEY, JSON.stringify([...picked])); }

  function render() {
    document.querySelectorAll("input.pick").forEach((box) => {
      box.checked = picked.has(box.value);
      box.disabled = !box.checked && picked.size >= MAX;
    });
    const list = document.getElementById("compare-picked");
    list.replaceChildren(...[...picked].map(([id, name]) => {
      const chip = document.createElement("span");
      chip.className = "picked";
      chip.dataset.jobId = id;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "unpick";
      remove.setAttribute("aria-label", `stop comparing ${name}`);
      remove.textContent = "×";
      chip.append(name, remove);
      return chip;
    }));
    const button = document.getElementById("compare-button");
    button.disabled = picked.size < 2;
    button.textContent = picked.size ? `Compare ${picked.size}` : "Compare";
    document.getElementById("compare-hint").hidden = picked.size > 0;
  }

  document.addEventListener("change", (event) => {
    const box = event.target.closest("input.pick");
    if (!box) return;
    if (box.checked) picked.set(box.value, box.dataset.name); else picked.delete(box.value);
    save();
    render();
  });

  form.addEventListener("click", (event) => {
    const chip = event.target.closest(".unpick");
    if (!chip) return;
    picked.delete(chip.parentElement.dataset.jobId);
    save();
    render();
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (picked.size < 2) return;
    window.location.href = `/compare?jobs=${[...picked.keys()].map(encodeURIComponent).join(",")}`;
  });

  document.body.addEventListener("htmx:afterSettle", render);
  render();
})();
