// Copy buttons ([data-copy="text"]): the Models page's model ids. Without JavaScript the ids
// stay selectable text and the buttons stay hidden.
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.hidden = false;
    button.addEventListener("click", async () => {
      const label = button.textContent;
      try {
        await navigator.clipboard.writeText(button.dataset.copy);
        button.textContent = "Copied";
      } catch {
        button.textContent = "Press Ctrl+C";
        const range = document.createRange();
        range.selectNodeContents(button.previousElementSibling);
        window.getSelection().removeAllRanges();
        window.getSelection().addRange(range);
      }
      button.toggleAttribute("data-copied", true);
      setTimeout(() => {
        button.textContent = label;
        button.removeAttribute("data-copied");
      }, 1500);
    });
  }
});
