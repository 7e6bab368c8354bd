// The dashboard's recent calls, live: a websocket to usage/consumers.py (DashboardConsumer).
// New rows are merged into the table newest first (calls settle out of order), the month's
// totals are refreshed, and a dropped connection is retried with a growing delay. While the tab
// is hidden the socket is closed, so a background tab costs the server nothing.
(() => {
  "use strict";

  const section = document.querySelector("[data-live-calls]");
  if (!section || !("WebSocket" in window)) return;

  const tbody = section.querySelector("[data-live-rows]");
  const table = section.querySelector("[data-live-table]");
  const empty = section.querySelector("[data-live-empty]");
  const status = section.querySelector("[data-live-status]");
  const maxRows = Number(section.dataset.maxRows) || 10;
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${section.dataset.wsPath}`;
  const STATS = { spend: "stat-spend", tokens: "stat-tokens", tokens_note: "stat-tokens-note", requests: "stat-requests", balance: "stat-balance" };

  let socket = null;
  let retries = 0;
  let timer = null;

  const setStatus = (state, text) => {
    status.dataset.state = state;
    status.textContent = text;
  };

  // The rows the server rendered: their ids and times, in table order.
  const index = JSON.parse(document.getElementById("recent-calls-index").textContent);
  Array.from(tbody.rows).forEach((row, n) => {
    if (!index[n]) return;
    row.dataset.requestId = index[n].request_id;
    row.dataset.createdAt = index[n].created_at;
    row.dataset.id = String(index[n].id);
  });

  const newer = (a, b) => {
    const at = Date.parse(a.createdAt) - Date.parse(b.createdAt);
    return at !== 0 ? at > 0 : Number(a.id) > Number(b.id);
  };

  const insert = (item) => {
    if (tbody.querySelector(`tr[data-request-id="${CSS.escape(item.request_id)}"]`)) return;
    const template = document.createElement("template");
    template.innerHTML = item.html.trim();
    const row = template.content.querySelector("tr");
    if (!row) return;
    row.dataset.requestId = item.request_id;
    row.dataset.createdAt = item.created_at;
    row.dataset.id = String(item.id);
    row.classList.add("is-new");
    const before = Array.from(tbody.rows).find((other) => newer(row.dataset, other.dataset));
    tbody.insertBefore(row, before || null);
    window.setTimeout(() => row.classList.add("is-settled"), 50);
  };

  const receive = (message) => {
    if (message.type !== "calls") return;
    // Oldest first, so that equal times keep the server's order.
    for (const item of message.rows.slice().reverse()) insert(item);
    while (tbody.rows.length > maxRows) tbody.deleteRow(-1);
    table.hidden = tbody.rows.length === 0;
    empty.hidden = tbody.rows.length > 0;
    for (const [key, id] of Object.entries(STATS)) {
      const element = document.getElementById(id);
      if (element && message.totals && key in message.totals) element.textContent = message.totals[key];
    }
    const balance = document.querySelector(".account-balance");
    if (balance && message.totals) {
      balance.lastChild.textContent = message.totals.balance;
    }
  };

  const connect = () => {
    window.clearTimeout(timer);
    if (document.hidden || socket) return;
    setStatus("connecting", "Connecting…");
    socket = new WebSocket(url);
    socket.addEventListener("open", () => {
      retries = 0;
      setStatus("live", "Live");
      const known = Array.from(tbody.rows, (row) => row.dataset.requestId).filter(Boolean);
      socket.send(JSON.stringify({ type: "hello", known }));
    });
    socket.addEventListener("message", (event) => {
      try {
        receive(JSON.parse(event.data));
      } catch (error) {
        console.error("dashboard: bad live message", error);
      }
    });
    socket.addEventListener("close", () => {
      socket = null;
      if (document.hidden) {
        setStatus("paused", "Paused while the tab is hidden");
        return;
      }
      // 1 s, 2 s, 4 s … up to 30 s, with a little jitter so that many tabs do not come back at once.
      const delay = Math.min(30_000, 1000 * 2 ** retries) * (0.8 + Math.random() * 0.4);
      retries += 1;
      setStatus("offline", `Reconnecting in ${Math.round(delay / 1000)} s`);
      timer = window.setTimeout(connect, delay);
    });
  };

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      if (socket) socket.close();
    } else {
      retries = 0;
      connect();
    }
  });

  connect();
})();
