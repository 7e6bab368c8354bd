// The phone-width menu: without JavaScript the navigation simply stays open.
document.documentElement.classList.add("js");
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("[data-nav-toggle]")) {
    const header = button.closest("[data-nav]");
    button.addEventListener("click", () => {
      const open = header.classList.toggle("nav-open");
      button.setAttribute("aria-expanded", String(open));
    });
  }
});
