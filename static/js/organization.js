// Organizations: the scope switcher in every console page's header closes on Escape or a click
// elsewhere; the organization page copies an invitation link and asks before destructive forms.
// Loaded once per page by templates/partials/scope_switcher.html. Without JavaScript the
// switcher still opens and submits, links can be copied by hand, and removals have their own
// confirmation page.
(() => {
  "use strict";

  function setUpSwitcher() {
    for (const menu of document.querySelectorAll("[data-switcher]")) {
      document.addEventListener("click", (event) => {
        if (menu.open && !menu.contains(event.target)) menu.open = false;
      });
      menu.addEventListener("keydown", (event) => {
        if (event.key === "Escape" && menu.open) {
          menu.open = false;
          menu.querySelector("summary").focus();
        }
      });
    }
  }

  async function copyText(input) {
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(input.value);
        return true;
      } catch (error) {
        // Fall through to copying the selection (permission refused).
      }
    }
    input.select();
    return document.execCommand("copy");
  }

  function setUpCopy() {
    for (const button of document.querySelectorAll("[data-org-copy]")) {
      button.hidden = false;
      button.addEventListener("click", async () => {
        const input = document.getElementById(button.dataset.orgCopy);
        const status = document.getElementById(`${button.dataset.orgCopy}-status`);
        const copied = await copyText(input);
        if (status) {
          status.textContent = copied ? "Copied to the clipboard." : "Select the link and copy it by hand.";
        }
      });
    }
    for (const input of document.querySelectorAll("[data-org-link]")) {
      input.addEventListener("focus", () => input.select());
    }
  }

  function setUpConfirm() {
    for (const form of document.querySelectorAll("form[data-org-confirm]")) {
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.dataset.orgConfirm)) event.preventDefault();
      });
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    setUpSwitcher();
    setUpCopy();
    setUpConfirm();
  });
})();
