// Behaviour every page shares, kept out of the HTML so the Content-Security-Policy can forbid inline
// scripts and style attributes: the team switcher submits on change, and sizes and colours that the
// server computes arrive as data attributes (data-width: a percentage, data-colour: a CSS colour) and
// are applied through the CSSOM, which CSP allows, also to content htmx or a script swaps in later.
(() => {
  function applyDataStyles(root) {
    const nodes = root.querySelectorAll ? [root, ...root.querySelectorAll("[data-width], [data-colour]")] : [];
    for (const el of nodes) {
      if (!el.dataset) continue;
      if (el.dataset.width !== undefined) el.style.width = `${el.dataset.width}%`;
      if (el.dataset.colour !== undefined) el.style.background = el.dataset.colour;
    }
  }

  document.addEventListener("change", (event) => {
    if (event.target.id === "team-switch") event.target.form.submit();
  });

  document.addEventListener("DOMContentLoaded", () => {
    applyDataStyles(document.body);
    new MutationObserver((records) => {
      for (const record of records) {
        for (const node of record.addedNodes) if (node.nodeType === Node.ELEMENT_NODE) applyDataStyles(node);
        if (record.type === "attributes") applyDataStyles(record.target);
      }
    }).observe(document.body, { childList: true, subtree: true, attributes: true,
                                attributeFilter: ["data-width", "data-colour"] });
  });
})();
