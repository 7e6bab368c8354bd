// The playground: chat with a model, or compare up to four on one prompt, straight from the
// browser to the relay at this origin (/v1/chat/completions), streamed event by event.
//
// The relay key is a short-lived one the console issues for this page (POST, CSRF-protected).
// It lives in this script's memory only, never in storage, and is renewed when it nears its
// expiry or the relay answers 401 (another tab's newer key may have replaced it).
"use strict";

(() => {
  const root = document.querySelector("[data-playground]");
  if (!root) return;

  const MAX_PANES = 4;
  const MAX_STOP_SEQUENCES = 4;
  // Renew the key this long before it expires (a quarter of a short lifetime), so no call
  // starts with a key about to lapse.
  const KEY_MARGIN_MS = 60_000;
  const ENV_KEY = "TOKENBYTE_API_KEY";
  const NUMBER_PARAMS = [
    ["temperature", false],
    ["top_p", false],
    ["max_tokens", true],
    ["presence_penalty", false],
    ["frequency_penalty", false],
  ];

  const models = JSON.parse(document.getElementById("pg-models").textContent);
  const modelsById = new Map(models.map((model) => [model.id, model]));
  const settings = document.getElementById("pg-settings");
  const panesBox = root.querySelector("[data-panes]");
  const paneTemplate = document.getElementById("pg-pane-template");
  const composer = root.querySelector("[data-composer]");
  const messageInput = composer.elements.message;
  const sendButton = root.querySelector("[data-send]");
  const stopButton = root.querySelector("[data-stop]");
  const addButton = root.querySelector("[data-add-pane]");
  const clearButton = root.querySelector("[data-clear]");
  const keyStatus = root.querySelector("[data-key-status]");
  const settingsError = root.querySelector("[data-settings-error]");
  const codeBox = root.querySelector("[data-code]");
  const codePane = root.querySelector("[data-code-pane]");
  const codePaneLabel = root.querySelector("[data-code-pane-label]");
  const copyStatus = root.querySelector("[data-copy-status]");
  const tabs = [...root.querySelectorAll("[role=tab]")];

  const state = {
    key: null,
    keyExpiresAt: 0,
    keyMarginMs: KEY_MARGIN_MS,
    keyRequest: null,
    panes: [],
    paneSeq: 0,
    lang: "python",
    controller: null,
  };

  // --- formatting ------------------------------------------------------------------------------

  // USD as the console shows it: at least two and at most six decimals ("$0.000168", "$1.50").
  function formatUsd(usd) {
    const micros = Math.round(usd * 1_000_000);
    const whole = Math.floor(micros / 1_000_000);
    const fraction = String(micros % 1_000_000).padStart(6, "0").replace(/0+$/, "").padEnd(2, "0");
    return `$${whole}.${fraction}`;
  }

  const formatCount = (value) => Number(value).toLocaleString("en-US");
  const formatMs = (value) => `${formatCount(Math.round(value))} ms`;

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // --- the playground key ----------------------------------------------------------------------

  function setKeyStatus(text, failed = false) {
    keyStatus.textContent = text;
    keyStatus.classList.toggle("pg-status-error", failed);
  }

  async function fetchKey() {
    const csrf = root.querySelector("input[name=csrfmiddlewaretoken]").value;
    const response = await fetch(root.dataset.keyUrl, {
      method: "POST",
      headers: { "X-CSRFToken": csrf, Accept: "application/json" },
      credentials: "same-origin",
    });
    const isJson = (response.headers.get("content-type") || "").includes("application/json");
    if (response.redirected || response.status === 403 || (response.ok && !isJson)) {
      throw new Error("Your session has ended: reload the page and sign in again.");
    }
    if (!response.ok) {
      throw new Error(`The playground key could not be issued (HTTP ${response.status}). Try again shortly.`);
    }
    const data = await response.json();
    state.key = data.key;
    // From this machine's clock, which may disagree with the server's.
    state.keyExpiresAt = Date.now() + data.expires_in * 1000;
    state.keyMarginMs = Math.min(KEY_MARGIN_MS, data.expires_in * 250);
    const until = new Date(state.keyExpiresAt).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    setKeyStatus(`Calls use a playground key valid until ${until}; it renews itself.`);
    return state.key;
  }

  // The current key, renewed when missing or about to expire; concurrent callers share one request.
  async function currentKey() {
    if (state.key && Date.now() < state.keyExpiresAt - state.keyMarginMs) return state.key;
    if (!state.keyRequest) {
      setKeyStatus("Getting a playground key…");
      state.keyRequest = fetchKey().finally(() => {
        state.keyRequest = null;
      });
    }
    return state.keyRequest;
  }

  // --- panes (one per model) -------------------------------------------------------------------

  function modelLabel(model) {
    return model.name && model.name !== model.id ? `${model.name} (${model.id})` : model.id;
  }

  function describeModel(model) {
    const parts = [model.provider];
    if (model.context_length) parts.push(`${formatCount(model.context_length)} context`);
    parts.push(`${model.input_price} in / ${model.output_price} out per 1M tokens`);
    if (model.capabilities.length) parts.push(model.capabilities.join(", "));
    return parts.join(" · ");
  }

  function addPane(modelId) {
    const node = paneTemplate.content.firstElementChild.cloneNode(true);
    state.paneSeq += 1;
    const pane = {
      node,
      select: node.querySelector("[data-model]"),
      label: node.querySelector("[data-model-label]"),
      info: node.querySelector("[data-model-info]"),
      transcript: node.querySelector("[data-transcript]"),
      empty: node.querySelector("[data-pane-empty]"),
      total: node.querySelector("[data-pane-total]"),
      spentMicros: 0,
      replies: 0,
      remove: node.querySelector("[data-remove-pane]"),
      history: [],
    };
    const id = `pg-model-${state.paneSeq}`;
    pane.select.id = id;
    pane.label.htmlFor = id;
    // Grouped by provider when there are several: a long catalog stays easy to scan.
    const groups = new Map();
    const grouped = new Set(models.map((model) => model.provider)).size > 1;
    for (const model of models) {
      let parent = pane.select;
      if (grouped) {
        parent = groups.get(model.provider);
        if (!parent) {
          parent = document.createElement("optgroup");
          parent.label = model.provider;
          groups.set(model.provider, parent);
          pane.select.append(parent);
        }
      }
      parent.append(new Option(modelLabel(model), model.id));
    }
    pane.select.value = modelId;
    pane.select.addEventListener("change", () => {
      pane.info.textContent = describeModel(modelsById.get(pane.select.value));
      refreshPanes();
    });
    pane.remove.addEventListener("click", () => removePane(pane));
    pane.info.textContent = describeModel(modelsById.get(modelId));
    panesBox.append(node);
    state.panes.push(pane);
    refreshPanes();
    return pane;
  }

  function removePane(pane) {
    if (state.panes.length === 1 || state.controller) return;
    state.panes = state.panes.filter((other) => other !== pane);
    pane.node.remove();
    refreshPanes();
    addButton.focus();
  }

  // Labels, buttons, the layout and the code's pane picker after panes or models changed.
  function refreshPanes() {
    const count = state.panes.length;
    const busy = Boolean(state.controller);
    panesBox.dataset.count = String(count);
    state.panes.forEach((pane, index) => {
      pane.label.textContent = count === 1 ? "Model" : `Model ${index + 1}`;
      pane.remove.hidden = count === 1;
      pane.remove.disabled = busy;
      pane.remove.setAttribute("aria-label", `Remove model ${index + 1}`);
    });
    addButton.disabled = busy || count >= MAX_PANES;
    addButton.textContent = count === 1 ? "Compare with another model" : "Add a model";
    const chosen = Math.min(Number(codePane.value) || 0, count - 1);
    codePane.replaceChildren(
      ...state.panes.map((pane, index) => new Option(`Model ${index + 1}: ${pane.select.value}`, String(index))),
    );
    codePane.value = String(chosen);
    codePane.hidden = count === 1;
    codePaneLabel.hidden = count === 1;
    renderCode();
  }

  // --- settings --------------------------------------------------------------------------------

  // The parameters as the relay takes them, or an error naming the field to fix.
  function readParams() {
    const values = {};
    for (const [name, integer] of NUMBER_PARAMS) {
      const input = settings.elements[name];
      const label = input.dataset.label;
      const raw = input.value.trim();
      if (input.validity.badInput) return { error: `${label} must be a number.`, input };
      if (raw === "") continue;
      const value = Number(raw);
      if (!Number.isFinite(value) || (integer && !Number.isInteger(value))) {
        return { error: `${label} must be ${integer ? "a whole number" : "a number"}.`, input };
      }
      if ((input.min !== "" && value < Number(input.min)) || (input.max !== "" && value > Number(input.max))) {
        const range = input.max === "" ? `at least ${input.min}` : `between ${input.min} and ${input.max}`;
        return { error: `${label} must be ${range}.`, input };
      }
      values[name] = value;
    }
    const stop = settings.elements.stop.value.split("\n").map((line) => line.replace(/\r$/, "")).filter((line) => line !== "");
    if (stop.length > MAX_STOP_SEQUENCES) {
      return { error: `At most ${MAX_STOP_SEQUENCES} stop sequences.`, input: settings.elements.stop };
    }
    if (stop.length) values.stop = stop;
    return { values, stream: settings.elements.stream.checked };
  }

  function showSettingsError(params) {
    settingsError.hidden = !params.error;
    settingsError.textContent = params.error || "";
    for (const input of settings.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
    if (params.input) params.input.setAttribute("aria-invalid", "true");
  }

  function systemMessages() {
    const system = settings.elements.system.value;
    return system.trim() ? [{ role: "system", content: system }] : [];
  }

  function requestBody(model, messages, params) {
    const body = { model, messages, ...params.values };
    if (params.stream) {
      body.stream = true;
      // The last chunk then carries the usage, with the exact cost the relay charged.
      body.stream_options = { include_usage: true };
    }
    return body;
  }

  // --- the transcript --------------------------------------------------------------------------

  function appendMessage(pane, role, text, model) {
    const item = element("li", `pg-msg pg-${role}`);
    item.append(element("span", "pg-role", role === "user" ? "You" : model));
    const body = element("div", "pg-text", text);
    item.append(body);
    pane.transcript.append(item);
    pane.empty.hidden = true;
    return { item, body };
  }

  function scrollToEnd(pane) {
    pane.transcript.scrollTop = pane.transcript.scrollHeight;
  }

  // The pane's running total: what its replies cost so far, as the relay reported it.
  function addToTotal(pane, usage) {
    if (!usage || typeof usage.cost !== "number") return;
    pane.replies += 1;
    pane.spentMicros += Math.round(usage.cost * 1_000_000);
    pane.total.textContent = `${pane.replies} ${pane.replies === 1 ? "reply" : "replies"} · ${formatUsd(pane.spentMicros / 1_000_000)} in all`;
    pane.total.hidden = false;
  }

  function showStats(reply, result) {
    addToTotal(reply.pane, result.usage);
    const rows = [];
    const usage = result.usage;
    if (usage) {
      rows.push(["In", `${formatCount(usage.prompt_tokens)} tokens`]);
      const cached = usage.prompt_tokens_details && usage.prompt_tokens_details.cached_tokens;
      if (cached) rows.push(["Cached", `${formatCount(cached)} tokens`]);
      rows.push(["Out", `${formatCount(usage.completion_tokens)} tokens`]);
    }
    if (result.ttft !== null) rows.push(["First token", formatMs(result.ttft)]);
    rows.push(["Duration", formatMs(result.duration)]);
    rows.push(["Cost", usage && typeof usage.cost === "number" ? formatUsd(usage.cost) : "see Logs"]);
    if (result.finish === "length") rows.push(["Stopped", "max tokens reached"]);
    const list = element("dl", "pg-stats");
    for (const [term, value] of rows) {
      const row = element("div");
      row.append(element("dt", "", term), element("dd", "", value));
      list.append(row);
    }
    if (result.requestId) {
      // The call's row in Logs (written as the call settles, just after the reply).
      const link = element("a", "", "Details in Logs");
      link.href = `${root.dataset.logsUrl}${encodeURIComponent(result.requestId)}/`;
      const row = element("div", "pg-log-link");
      row.append(link);
      list.append(row);
    }
    reply.item.append(list);
  }

  function showError(reply, error) {
    reply.item.classList.add("pg-failed");
    const box = element("div", "pg-error");
    box.setAttribute("role", "alert");
    const title = [error.status, error.code].filter(Boolean).join(" · ");
    if (title) box.append(element("strong", "", title), " ");
    box.append(error.message);
    if (error.status === 402 || error.code === "insufficient_quota") {
      const link = element("a", "", "Top up in Wallet");
      link.href = root.dataset.walletUrl;
      box.append(" ", link);
    }
    if (error.retryAfter) box.append(` Try again in ${error.retryAfter} s.`);
    reply.item.append(box);
  }

  // --- calling the relay -----------------------------------------------------------------------

  class RelayError extends Error {
    constructor(message, { status = 0, code = "", retryAfter = "" } = {}) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  // The relay's error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
  async function relayError(response) {
    let message = `The relay answered HTTP ${response.status}.`;
    let code = "";
    try {
      const data = await response.json();
      if (data && data.error) {
        message = data.error.message || message;
        code = data.error.code || data.error.type || "";
      }
    } catch {
      // Not JSON (a proxy's page): the status says enough.
    }
    return new RelayError(message, {
      status: response.status,
      code,
      retryAfter: response.headers.get("retry-after") || "",
    });
  }

  async function post(body, signal) {
    const key = await currentKey();
    const response = await fetch(root.dataset.endpoint, {
      method: "POST",
      headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
      body,
      signal,
    });
    return { response, key };
  }

  // Server-sent events read as they arrive; text is shown piece by piece.
  async function readStream(response, reply, result, started) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const handle = (event) => {
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) return;
      if (data === "[DONE]") {
        result.done = true;
        return;
      }
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch {
        throw new RelayError("The relay sent an event that is not JSON.");
      }
      if (chunk.error) {
        // Read on: the relay may still send the usage chunk, with the cost of what arrived.
        result.error = new RelayError(chunk.error.message || "The upstream provider reported an error.", {
          code: chunk.error.code || chunk.error.type || "",
        });
        return;
      }
      for (const choice of chunk.choices || []) {
        if ((choice.index || 0) !== 0) continue;
        const delta = choice.delta || {};
        if (delta.reasoning_content) appendReasoning(reply, delta.reasoning_content);
        const piece = delta.content || delta.refusal;
        if (piece) {
          if (result.ttft === null) result.ttft = performance.now() - started;
          result.text += piece;
          reply.body.append(piece);
        }
        if (choice.finish_reason) result.finish = choice.finish_reason;
      }
      if (chunk.usage) result.usage = chunk.usage;
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        handle(event);
      }
      scrollToEnd(reply.pane);
    }
    if (buffer.trim()) handle(buffer);
    if (result.error) throw result.error;
    if (!result.done) throw new RelayError("The stream ended before the reply was complete.");
  }

  function appendReasoning(reply, text) {
    if (!reply.reasoning) {
      const details = element("details", "pg-reasoning");
      details.append(element("summary", "", "Reasoning"));
      reply.reasoning = element("div", "pg-text");
      details.append(reply.reasoning);
      reply.item.insertBefore(details, reply.body);
    }
    reply.reasoning.append(text);
  }

  async function readJson(response, reply, result) {
    const data = await response.json();
    const choice = (data.choices || [])[0] || {};
    const message = choice.message || {};
    if (message.reasoning_content) appendReasoning(reply, message.reasoning_content);
    result.text = message.content || message.refusal || "";
    result.finish = choice.finish_reason || null;
    result.usage = data.usage || null;
    reply.body.textContent = result.text;
  }

  // One turn of one pane: its own history plus the prompt, answered by its model.
  async function runTurn(pane, prompt, params, signal) {
    const model = pane.select.value;
    const messages = [...systemMessages(), ...pane.history, { role: "user", content: prompt }];
    const body = JSON.stringify(requestBody(model, messages, params));
    appendMessage(pane, "user", prompt);
    const reply = { ...appendMessage(pane, "assistant", "", model), pane };
    pane.transcript.setAttribute("aria-busy", "true");
    const result = { text: "", usage: null, ttft: null, finish: null, duration: 0, done: false, error: null, requestId: null };
    const started = performance.now();
    try {
      let { response, key } = await post(body, signal);
      if (response.status === 401) {
        // Expired, or revoked because newer playground keys replaced it: renew once and retry.
        if (state.key === key) state.key = null;
        ({ response } = await post(body, signal));
      }
      result.requestId = response.headers.get("x-request-id");
      if (!response.ok) throw await relayError(response);
      if (params.stream) {
        await readStream(response, reply, result, started);
      } else {
        await readJson(response, reply, result);
      }
      result.duration = performance.now() - started;
      pane.history.push({ role: "user", content: prompt }, { role: "assistant", content: result.text });
      showStats(reply, result);
    } catch (error) {
      result.duration = performance.now() - started;
      if (result.usage || result.text) showStats(reply, result);
      if (error.name === "AbortError") {
        reply.item.classList.add("pg-failed");
        reply.item.append(element("p", "pg-note", "Stopped. Text already delivered is billed; Logs has its cost."));
        if (result.text) {
          pane.history.push({ role: "user", content: prompt }, { role: "assistant", content: result.text });
        }
      } else {
        // fetch rejects with a TypeError when the network, not the relay, failed.
        const failure =
          error instanceof RelayError
            ? error
            : new RelayError(error instanceof TypeError ? "The relay could not be reached: check your connection and try again." : String(error.message || error));
        showError(reply, failure);
      }
    } finally {
      pane.transcript.setAttribute("aria-busy", "false");
      scrollToEnd(pane);
    }
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    stopButton.hidden = !busy;
    clearButton.disabled = busy;
    refreshPanes();
  }

  async function send(event) {
    event.preventDefault();
    if (state.controller) return;
    const prompt = messageInput.value;
    if (!prompt.trim()) {
      messageInput.focus();
      return;
    }
    const params = readParams();
    showSettingsError(params);
    if (params.error) {
      params.input.focus();
      return;
    }
    try {
      await currentKey();
    } catch (error) {
      setKeyStatus(error.message, true);
      return;
    }
    state.controller = new AbortController();
    setBusy(true);
    messageInput.value = "";
    try {
      await Promise.all(state.panes.map((pane) => runTurn(pane, prompt, params, state.controller.signal)));
    } finally {
      state.controller = null;
      setBusy(false);
      messageInput.focus();
    }
  }

  // --- code for the current settings and messages ----------------------------------------------

  const pyValue = (value) => (typeof value === "boolean" ? (value ? "True" : "False") : JSON.stringify(value));

  function codeRequest() {
    const pane = state.panes[Number(codePane.value) || 0] || state.panes[0];
    const params = readParams();
    const usable = params.error ? { values: {}, stream: settings.elements.stream.checked } : params;
    const messages = [...systemMessages(), ...pane.history];
    const draft = messageInput.value;
    if (draft.trim()) messages.push({ role: "user", content: draft });
    if (!messages.some((message) => message.role === "user")) messages.push({ role: "user", content: "Hello" });
    return { body: requestBody(pane.select.value, messages, usable), stream: usable.stream };
  }

  function pythonCode({ body, stream }) {
    const lines = [
      "import os",
      "",
      "from openai import OpenAI",
      "",
      "client = OpenAI(",
      `    base_url=${JSON.stringify(root.dataset.baseUrl)},`,
      `    api_key=os.environ[${JSON.stringify(ENV_KEY)}],`,
      ")",
      "",
      `${stream ? "stream" : "reply"} = client.chat.completions.create(`,
    ];
    for (const [name, value] of Object.entries(body)) {
      if (name === "messages") {
        lines.push("    messages=[");
        for (const message of value) {
          lines.push(`        {"role": ${pyValue(message.role)}, "content": ${pyValue(message.content)}},`);
        }
        lines.push("    ],");
      } else if (name === "stream_options") {
        lines.push('    stream_options={"include_usage": True},  # the last chunk carries usage and cost');
      } else {
        lines.push(`    ${name}=${pyValue(value)},`);
      }
    }
    lines.push(")");
    if (stream) {
      lines.push(
        "for chunk in stream:",
        "    if chunk.choices:",
        '        print(chunk.choices[0].delta.content or "", end="", flush=True)',
        "    if chunk.usage:",
        '        print(f"\\n{chunk.usage.prompt_tokens} in, {chunk.usage.completion_tokens} out, ${chunk.usage.cost:.6f}")',
      );
    } else {
      lines.push(
        "print(reply.choices[0].message.content)",
        'print(f"{reply.usage.prompt_tokens} in, {reply.usage.completion_tokens} out, ${reply.usage.cost:.6f}")',
      );
    }
    return lines.join("\n");
  }

  function nodeCode({ body, stream }) {
    const lines = [
      'import OpenAI from "openai";',
      "",
      "const client = new OpenAI({",
      `  baseURL: ${JSON.stringify(root.dataset.baseUrl)},`,
      `  apiKey: process.env.${ENV_KEY},`,
      "});",
      "",
      `const ${stream ? "stream" : "reply"} = await client.chat.completions.create({`,
    ];
    for (const [name, value] of Object.entries(body)) {
      if (name === "messages") {
        lines.push("  messages: [");
        for (const message of value) {
          lines.push(`    { role: ${JSON.stringify(message.role)}, content: ${JSON.stringify(message.content)} },`);
        }
        lines.push("  ],");
      } else if (name === "stream_options") {
        lines.push("  stream_options: { include_usage: true }, // the last chunk carries usage and cost");
      } else {
        lines.push(`  ${name}: ${JSON.stringify(value)},`);
      }
    }
    lines.push("});");
    if (stream) {
      lines.push(
        "for await (const chunk of stream) {",
        '  process.stdout.write(chunk.choices[0]?.delta?.content ?? "");',
        "  if (chunk.usage) {",
        "    console.log(`\\n${chunk.usage.prompt_tokens} in, ${chunk.usage.completion_tokens} out, $${chunk.usage.cost.toFixed(6)}`);",
        "  }",
        "}",
      );
    } else {
      lines.push(
        "console.log(reply.choices[0].message.content);",
        "console.log(`${reply.usage.prompt_tokens} in, ${reply.usage.completion_tokens} out, $${reply.usage.cost.toFixed(6)}`);",
      );
    }
    return lines.join("\n");
  }

  function curlCode({ body, stream }) {
    // A quoted here-document: the JSON goes through the shell untouched, quotes and all.
    return [
      `curl${stream ? " -N" : ""} ${root.dataset.baseUrl}/chat/completions \\`,
      `  -H "Authorization: Bearer $${ENV_KEY}" \\`,
      '  -H "Content-Type: application/json" \\',
      "  -d @- <<'JSON'",
      JSON.stringify(body, null, 2),
      "JSON",
    ].join("\n");
  }

  const CODE = { python: pythonCode, node: nodeCode, curl: curlCode };

  function renderCode() {
    if (!state.panes.length) return;
    codeBox.textContent = CODE[state.lang](codeRequest());
  }

  function selectTab(tab, focus = false) {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
    }
    state.lang = tab.dataset.lang;
    codeBox.parentElement.setAttribute("aria-labelledby", tab.id);
    if (focus) tab.focus();
    renderCode();
  }

  async function copyCode() {
    const text = codeBox.textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // No clipboard API (a plain-http origin other than localhost): select the text instead.
      const range = document.createRange();
      range.selectNodeContents(codeBox);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      if (!document.execCommand("copy")) {
        copyStatus.textContent = "The code is selected: copy it with your keyboard.";
        return;
      }
    }
    copyStatus.textContent = "Copied.";
  }

  // --- wiring ----------------------------------------------------------------------------------

  composer.addEventListener("submit", send);
  messageInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.altKey && !event.ctrlKey && !event.metaKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });
  messageInput.addEventListener("input", renderCode);
  settings.addEventListener("input", renderCode);
  settings.addEventListener("change", renderCode);
  settings.addEventListener("submit", (event) => event.preventDefault());
  stopButton.addEventListener("click", () => state.controller && state.controller.abort());
  addButton.addEventListener("click", () => {
    if (state.panes.length >= MAX_PANES) return;
    const used = new Set(state.panes.map((pane) => pane.select.value));
    const next = models.find((model) => !used.has(model.id)) || models[0];
    addPane(next.id).select.focus();
  });
  clearButton.addEventListener("click", () => {
    for (const pane of state.panes) {
      pane.history = [];
      pane.transcript.replaceChildren();
      pane.empty.hidden = false;
      pane.spentMicros = 0;
      pane.replies = 0;
      pane.total.hidden = true;
    }
    renderCode();
    messageInput.focus();
  });
  codePane.addEventListener("change", renderCode);
  for (const tab of tabs) {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      event.preventDefault();
      selectTab(tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length], true);
    });
  }
  root.querySelector("[data-copy-code]").addEventListener("click", copyCode);

  addPane(models[0].id);
  currentKey().catch((error) => setKeyStatus(error.message, true));
})();
