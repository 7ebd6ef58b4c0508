// Labelling page: fetches the signed-in labeler's next task from the JSON API, renders it, and
// sends the verdict. Every verdict has a keyboard shortcut (listed in the instructions panel).
// Plain JS, no build step; text is always inserted with textContent (never as HTML).
(function () {
  "use strict";
  const app = document.getElementById("app");
  const projectId = app.dataset.project;
  const type = app.dataset.type;
  const FLAGS = app.dataset.flags.split(",");
  const FLAG_KEYS = { h: "harmful", u: "untruthful", o: "off_topic" };
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const taskEl = document.getElementById("task");
  const controlsEl = document.getElementById("controls");
  const statusEl = document.getElementById("status");
  let task = null, shownAt = 0, busy = false;
  let state = {};

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "onclick") e.addEventListener("click", v);
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  }
  function setStatus(text, isError) {
    statusEl.textContent = text;
    statusEl.className = isError ? "error" : "muted";
  }

  async function api(method, url, body) {
    const r = await fetch(url, {
      method, credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); return null; }
    if (r.status === 204) return { empty: true };
    const data = await r.json().catch(() => ({}));
    if (!r.ok) {
      const err = new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail || r.statusText));
      err.status = r.status;
      throw err;
    }
    return data;
  }
  // 409: the task is no longer this labeler's (e.g. it expired and was reassigned): say so, move on
  async function moveOn(e, what) {
    if (e.status !== 409) { busy = false; setStatus(what + e.message, true); return; }
    try {
      const t = await api("POST", `/api/tasks/next?project_id=${projectId}`);
      if (!t) return;
      show(t.empty ? null : t);
      setStatus(what + e.message, true);
    } catch (e2) { busy = false; setStatus("Could not load a task: " + e2.message, true); }
  }

  // ------------------------------------------------------------------ rendering
  const KEYS = {
    pairwise: [["1 or A", "A is better"], ["2 or B", "B is better"], ["3 or T", "tie"], ["4 or X", "both bad"],
               ["Q / W / E", "strength: slightly / clearly / much better (optional, before the verdict)"]],
    ranking: [["A, B, C …", "place that response next (best first)"], ["Backspace", "undo the last placement"],
              ["Enter", "submit the ranking"]],
    rating: [["1 … 7", "rating"], ["H / U / O", "flag harmful / untruthful / off-topic"], ["Enter", "submit"]],
    thumbs: [["↑ or +", "thumbs up"], ["↓ or -", "thumbs down"]],
    rewrite: [["Ctrl+Enter", "submit the rewrite"], ["Esc", "leave the text box (then S skips)"]],
  };
  function renderKeys() {
    const rows = KEYS[type].concat([["S", "skip this task"], ["?", "show / hide instructions"]]);
    document.getElementById("keys").replaceChildren(el("table", { class: "keys" },
      ...rows.map(([k, d]) => el("tr", {}, el("td", {}, el("kbd", { text: k })), el("td", { text: d })))));
  }

  function renderContext(t) {
    const box = el("div", { class: "conversation" });
    const turns = t.messages && t.messages.length ? t.messages : [{ role: "user", content: t.prompt }];
    for (const m of turns) {
      box.append(el("div", { class: "turn " + m.role }, el("div", { class: "role", text: m.role }),
                    el("div", { class: "content", text: m.content })));
    }
    return box;
  }

  function responseCard(r, extra) {
    return el("div", { class: "response", "data-key": r.key },
      el("div", { class: "response-head" }, el("span", { class: "keycap", text: r.key }), extra || null),
      el("div", { class: "content", text: r.text }));
  }

  function button(label, key, onclick, cls) {
    return el("button", { type: "button", class: "verdict " + (cls || ""), "data-key": key, onclick },
      label, " ", el("kbd", { text: key }));
  }

  function show(t) {
    task = t; state = {}; busy = false;
    if (!t) {
      taskEl.replaceChildren(el("div", { class: "card done" }, el("h2", { text: "All done" }),
        el("p", { text: "There are no more tasks for you in this project. Thank you!" }),
        el("a", { href: "/", class: "button", text: "Back to projects" })));
      controlsEl.replaceChildren();
      return;
    }
    shownAt = Date.now();
    const p = t.progress;
    const pct = p.project_total ? Math.min(100, 100 * p.project_done / p.project_total) : 0;
    document.getElementById("progress-fill").style.width = pct.toFixed(1) + "%";
    document.getElementById("progress-text").textContent =
      `${p.project_done} / ${p.project_total} labels (${pct.toFixed(0)}%) · you: ${p.user_done}`;
    const body = [el("h2", { class: "task-title", text: `Task #${t.task_id}` }), renderContext(t)];
    if (type === "pairwise") {
      body.push(el("div", { class: "pair" }, ...t.responses.map((r) => responseCard(r, el("span", { text: "Response " + r.key })))));
    } else if (type === "ranking") {
      body.push(el("div", { class: "ranking" }, ...t.responses.map((r) => {
        const c = responseCard(r, el("span", { class: "place", text: "" }));
        c.addEventListener("click", () => place(r.key));
        return c;
      })));
    } else if (type === "rewrite") {
      body.push(el("h3", { text: "Response" }), responseCard(t.responses[0]));
      const ta = el("textarea", { id: "rewrite", rows: "8", "aria-label": "your rewrite" });
      ta.value = t.responses[0].text;
      body.push(el("h3", { text: "Your rewrite (a demonstration of the ideal answer)" }), ta);
    } else {
      body.push(responseCard(t.responses[0]));
    }
    taskEl.replaceChildren(...body);
    controlsEl.replaceChildren(...controls(t));
  }

  function controls(t) {
    const skip = button("Skip", "S", doSkip, "secondary");
    if (type === "pairwise") {
      const strength = el("div", { class: "strength" }, el("span", { class: "muted", text: "Strength:" }),
        ...[["slightly", 1, "Q"], ["clearly", 2, "W"], ["much", 3, "E"]].map(([name, v, k]) =>
          button(name, k, () => setStrength(v), "small strength-" + v)));
      return [strength, el("div", { class: "buttons" },
        button("A is better", "1", () => submit({ choice: "A" })),
        button("B is better", "2", () => submit({ choice: "B" })),
        button("Tie", "3", () => submit({ choice: "tie" })),
        button("Both bad", "4", () => submit({ choice: "both_bad" })), skip)];
    }
    if (type === "ranking") {
      return [el("p", { id: "ranking-order", class: "muted", text: "Press the letters best first." }),
        el("div", { class: "buttons" },
          button("Submit ranking", "Enter", submitRanking), button("Undo", "Backspace", unplace, "secondary"), skip)];
    }
    if (type === "rating") {
      const lo = t.scale.min, hi = t.scale.max, nums = [];
      for (let v = lo; v <= hi; v++) nums.push(button(String(v), String(v), () => setRating(v), "rate rate-" + v));
      const flags = FLAGS.map((f) => {
        const k = Object.keys(FLAG_KEYS).find((x) => FLAG_KEYS[x] === f);
        return el("label", { class: "flag" }, el("input", { type: "checkbox", id: "flag-" + f }),
          " " + f.replace("_", "-") + " ", el("kbd", { text: k.toUpperCase() }));
      });
      return [el("div", { class: "buttons scale" }, el("span", { class: "muted", text: `${lo} = very bad · ${hi} = excellent` }), ...nums),
        el("div", { class: "flags" }, ...flags),
        el("div", { class: "buttons" }, button("Submit", "Enter", submitRating), skip)];
    }
    if (type === "thumbs") {
      return [el("div", { class: "buttons" },
        button("Thumbs up", "↑", () => submit({ label: true }), "up"),
        button("Thumbs down", "↓", () => submit({ label: false }), "down"), skip)];
    }
    return [el("div", { class: "buttons" }, button("Submit rewrite", "Ctrl+Enter", submitRewrite), skip)];
  }

  // ------------------------------------------------------------------ verdict state
  function setStrength(v) {
    state.strength = v;
    controlsEl.querySelectorAll(".strength button").forEach((b) => b.classList.toggle("selected", b.classList.contains("strength-" + v)));
  }
  function place(key) {
    state.order = state.order || [];
    if (!task || state.order.includes(key) || !task.responses.some((r) => r.key === key)) return;
    state.order.push(key);
    renderOrder();
  }
  function unplace() { (state.order || []).pop(); renderOrder(); }
  function renderOrder() {
    const order = state.order || [];
    taskEl.querySelectorAll(".ranking .response").forEach((c) => {
      const i = order.indexOf(c.dataset.key);
      c.querySelector(".place").textContent = i >= 0 ? `#${i + 1}` : "";
      c.classList.toggle("placed", i >= 0);
    });
    document.getElementById("ranking-order").textContent = order.length
      ? "Ranking: " + order.join(" > ") + (order.length < task.responses.length ? " …" : " (Enter to submit)")
      : "Press the letters best first.";
  }
  function submitRanking() {
    const order = state.order || [];
    if (order.length === task.responses.length - 1) {  // the last one is implied
      order.push(task.responses.map((r) => r.key).find((k) => !order.includes(k)));
    }
    if (order.length !== task.responses.length) { setStatus("Place every response first.", true); return; }
    submit({ ranking: order });
  }
  function setRating(v) {
    state.rating = v;
    controlsEl.querySelectorAll(".rate").forEach((b) => b.classList.toggle("selected", b.classList.contains("rate-" + v)));
  }
  function toggleFlag(f) { const c = document.getElementById("flag-" + f); if (c) c.checked = !c.checked; }
  function submitRating() {
    if (state.rating == null) { setStatus("Choose a rating first.", true); return; }
    submit({ rating: state.rating, flags: FLAGS.filter((f) => document.getElementById("flag-" + f).checked) });
  }
  function submitRewrite() {
    const text = document.getElementById("rewrite").value;
    if (!text.trim()) { setStatus("The rewrite is empty.", true); return; }
    submit({ rewrite: text });
  }

  async function submit(verdict) {
    if (busy || !task) return;
    busy = true;
    if (type === "pairwise" && state.strength && (verdict.choice === "A" || verdict.choice === "B")) verdict.strength = state.strength;
    verdict.duration_ms = Date.now() - shownAt;
    try {
      const r = await api("POST", `/api/tasks/${task.task_id}/label?next=true`, verdict);
      if (!r) return;
      setStatus(`Saved task #${r.task_id}.`);
      show(r.next);
    } catch (e) { await moveOn(e, "Not saved: "); }
  }
  async function doSkip() {
    if (busy || !task) return;
    busy = true;
    try {
      const r = await api("POST", `/api/tasks/${task.task_id}/skip?next=true`);
      if (!r) return;
      setStatus(`Skipped task #${r.task_id}.`);
      show(r.next);
    } catch (e) { await moveOn(e, "Not skipped: "); }
  }

  // ------------------------------------------------------------------ keyboard
  document.addEventListener("keydown", (ev) => {
    const typing = ev.target && (ev.target.tagName === "TEXTAREA" || ev.target.tagName === "INPUT");
    if (typing) {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey) && type === "rewrite") { ev.preventDefault(); submitRewrite(); }
      else if (ev.key === "Escape") ev.target.blur();
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey || !task) {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey) && type === "rewrite" && task) submitRewrite();
      return;
    }
    const k = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
    if (k === "?") { toggleInstructions(); return; }
    if (k === "s") { ev.preventDefault(); doSkip(); return; }
    let handled = true;
    if (type === "pairwise") {
      if (k === "1" || k === "a" || k === "ArrowLeft") submit({ choice: "A" });
      else if (k === "2" || k === "b" || k === "ArrowRight") submit({ choice: "B" });
      else if (k === "3" || k === "t") submit({ choice: "tie" });
      else if (k === "4" || k === "x") submit({ choice: "both_bad" });
      else if (k === "q" || k === "w" || k === "e") setStrength({ q: 1, w: 2, e: 3 }[k]);
      else handled = false;
    } else if (type === "ranking") {
      if (k === "Enter") submitRanking();
      else if (k === "Backspace") unplace();
      else if (/^[a-z]$/.test(k)) place(k.toUpperCase());
      else handled = false;
    } else if (type === "rating") {
      if (/^[0-9]$/.test(k) && +k >= task.scale.min && +k <= task.scale.max) setRating(+k);
      else if (FLAG_KEYS[k]) toggleFlag(FLAG_KEYS[k]);
      else if (k === "Enter") submitRating();
      else handled = false;
    } else if (type === "thumbs") {
      if (k === "ArrowUp" || k === "+" || k === "=") submit({ label: true });
      else if (k === "ArrowDown" || k === "-") submit({ label: false });
      else handled = false;
    } else handled = false;
    if (handled) ev.preventDefault();
  });

  function toggleInstructions() {
    const body = document.getElementById("instructions-body");
    const hidden = body.hidden = !body.hidden;
    document.getElementById("toggle-instructions").textContent = hidden ? "show" : "hide";
  }
  document.getElementById("toggle-instructions").addEventListener("click", toggleInstructions);

  renderKeys();
  api("POST", `/api/tasks/next?project_id=${projectId}`)
    .then((t) => { if (t) show(t.empty ? null : t); })
    .catch((e) => setStatus("Could not load a task: " + e.message, true));
})();
