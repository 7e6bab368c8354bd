// Tokens pages: copy a secret shown once, select rows for batch actions, filter the model picker,
// confirm destructive forms. Without JavaScript every form still works (confirmation pages).
(() => {
  "use strict";

  async function copyText(input) {
    const text = input.value;
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        return true;
      } catch (error) {
        // Fall through to the selection copy (permission refused, no user gesture).
      }
    }
    input.select();
    return document.execCommand("copy");
  }

  function setUpCopy() {
    for (const button of document.querySelectorAll("[data-copy]")) {
      button.addEventListener("click", async () => {
        const input = document.querySelector(button.dataset.copy);
        const status = button.closest("section, div.secret-card")?.querySelector("[data-copy-status]");
        const copied = await copyText(input);
        if (status) {
          status.textContent = copied ? "Copied to the clipboard." : "Select the text and copy it by hand.";
        }
        if (copied) {
          button.textContent = "Copied";
          setTimeout(() => { button.textContent = "Copy"; }, 2000);
        }
      });
    }
    for (const input of document.querySelectorAll("[data-secret]")) {
      input.addEventListener("focus", () => input.select());
    }
  }

  function setUpSelection() {
    const bar = document.querySelector("[data-batch-bar]");
    if (!bar) return;
    const all = document.querySelector("[data-select-all]");
    const boxes = () => Array.from(document.querySelectorAll("[data-select]"));
    const count = bar.querySelector("[data-selected-count]");
    const update = () => {
      const chosen = boxes().filter((box) => box.checked).length;
      count.textContent = chosen === 0 ? "No keys selected" : `${chosen} key${chosen === 1 ? "" : "s"} selected`;
      for (const button of bar.querySelectorAll("[data-needs-selection]")) button.disabled = chosen === 0;
      if (all) {
        all.checked = chosen > 0 && chosen === boxes().length;
        all.indeterminate = chosen > 0 && chosen < boxes().length;
      }
    };
    all?.addEventListener("change", () => {
      for (const box of boxes()) box.checked = all.checked;
      update();
    });
    document.addEventListener("change", (event) => {
      if (event.target.matches("[data-select]")) update();
    });
    // htmx swaps a row after enable/disable: keep the bar in step.
    document.body.addEventListener("htmx:afterSwap", update);
    update();
  }

  function setUpModelFilter() {
    const filter = document.querySelector("[data-model-filter]");
    if (!filter) return;
    filter.hidden = false;
    filter.addEventListener("input", () => {
      const needle = filter.value.trim().toLowerCase();
      for (const choice of document.querySelectorAll("[data-model]")) {
        choice.hidden = needle !== "" && !choice.textContent.toLowerCase().includes(needle);
      }
    });
  }

  function setUpConfirm() {
    for (const form of document.querySelectorAll("form[data-confirm]")) {
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    setUpCopy();
    setUpSelection();
    setUpModelFilter();
    setUpConfirm();
  });
})();
