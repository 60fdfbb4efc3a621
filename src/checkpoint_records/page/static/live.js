// Live regions: elements with an id and data-refresh (milliseconds) are re-read from the server's own
// rendering of this page and swapped in when they changed, so the page follows a running job with no
// reload and no second, client-side copy of the templates. Checkbox choices survive a swap.
"use strict";

(function () {
  function period(root) {
    const values = [...root.querySelectorAll("[data-refresh]")]
      .filter((node) => node.id && node.id !== "chart")
      .map((node) => Number(node.dataset.refresh) || 0)
      .filter((ms) => ms > 0);
    return values.length ? Math.min(...values) : 0;
  }

  function swap(fresh) {
    for (const next of fresh.querySelectorAll("[data-refresh]")) {
      const current = next.id && next.id !== "chart" ? document.getElementById(next.id) : null;
      if (!current || current.innerHTML === next.innerHTML) continue;
      const checked = new Set([...current.querySelectorAll("input[type=checkbox]:checked")].map((i) => i.value));
      const focused = current.contains(document.activeElement) ? document.activeElement.getAttribute("href") : null;
      current.innerHTML = next.innerHTML;
      current.dataset.refresh = next.dataset.refresh;
      for (const box of current.querySelectorAll("input[type=checkbox]")) box.checked = checked.has(box.value);
      if (focused) {
        const again = [...current.querySelectorAll("a[href]")].find((a) => a.getAttribute("href") === focused);
        if (again) again.focus();
      }
    }
  }

  async function tick() {
    let every = period(document);
    try {
      const response = await fetch(location.href, { credentials: "same-origin", cache: "no-store" });
      if (response.redirected && new URL(response.url).pathname === "/login") {
        location.assign(response.url);
        return;
      }
      if (response.ok) {
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
        swap(fresh);
        every = period(fresh);
      }
    } catch (error) {
      // The server may be restarting: try again at the same pace.
    }
    if (every > 0) setTimeout(tick, document.hidden ? every * 4 : every);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const every = period(document);
    if (every > 0) setTimeout(tick, every);
  });
})();
