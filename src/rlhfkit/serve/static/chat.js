// The end users' web chat (served by `rlhfkit serve` at /chat; see serve/webchat.py).
// No framework, no inline script (the page's Content-Security-Policy forbids them): the DOM is
// built with textContent, never innerHTML, so a reply can hold any text.
"use strict";

(function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
  const $ = (sel) => document.querySelector(sel);
  const state = { conversation: null, turns: [], busy: false };

  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children || []) if (c) node.append(c);
    return node;
  }

  function say(text, isError) {
    const s = $("#status");
    s.textContent = text;
    s.classList.toggle("error", !!isError);
  }

  async function api(path, body) {
    const opts = body === undefined ? { credentials: "same-origin" } : {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(body),
    };
    const r = await fetch(path, opts);
    if (!r.ok) throw new Error(await errorText(r));
    return r;
  }

  async function errorText(r) {
    try { return (await r.json()).error.message; } catch (_) { return `the server answered ${r.status}`; }
  }

  // ------------------------------------------------------------------ the conversation list
  async function loadConversations() {
    const list = $("#conversations");
    const data = (await (await api("/chat/api/conversations")).json()).data;
    list.replaceChildren(...data.map((c) => el("li", {}, [
      el("button", { type: "button", class: "conversation-link", "data-id": c.id,
                     "aria-current": c.id === state.conversation ? "true" : null,
                     onclick: () => openConversation(c.id), text: c.title || "(empty)" })])));
    if (!data.length) list.append(el("li", { class: "empty", text: "None yet." }));
  }

  async function openConversation(id) {
    const c = await (await api(`/chat/api/conversations/${encodeURIComponent(id)}`)).json();
    state.conversation = c.id;
    state.turns = c.turns;
    render();
    await loadConversations();
    $("#prompt").focus();
  }

  function newConversation() {
    state.conversation = null;
    state.turns = [];
    render();
    say("");
    loadConversations();
    $("#prompt").focus();
  }

  // ------------------------------------------------------------------ rendering
  function shownReply(turn) {
    return turn.replies[turn.picked === null || turn.picked === undefined ? 0 : turn.picked];
  }

  function history(turns) {
    return turns.map((t) => t.role === "user" ? { role: "user", content: t.content }
                                            : { role: "assistant", content: shownReply(t) });
  }

  function render() {
    const list = $("#messages");
    list.replaceChildren(...state.turns.map((t, i) => t.role === "user"
      ? el("li", { class: "turn user" }, [el("span", { class: "who", text: "You" }),
                                          el("div", { class: "text", text: t.content })])
      : assistantTurn(t, i)));
    const last = list.lastElementChild;
    if (last) last.scrollIntoView({ block: "end" });
  }

  function assistantTurn(turn, i) {
    const li = el("li", { class: "turn assistant", "data-completion": turn.completion_id || "" });
    li.append(el("span", { class: "who", text: "Assistant" }));
    const choosing = turn.replies.length === 2 && turn.comparison && (turn.picked === null || turn.picked === undefined);
    if (turn.streaming) {
      turn.replies.forEach((text, k) => li.append(el("div", { class: "text reply", "data-index": k, text })));
      li.setAttribute("aria-busy", "true");
      return li;
    }
    if (choosing) {
      li.append(el("p", { class: "ask", text: "Two replies: which do you prefer?" }));
      const both = el("div", { class: "choices" });
      turn.replies.forEach((text, k) => both.append(el("div", { class: "choice" }, [
        el("h3", { text: `Reply ${k + 1}` }),
        el("div", { class: "text reply", "data-index": k, text }),
        el("button", { type: "button", class: "prefer", "aria-label": `Prefer reply ${k + 1}`,
                       onclick: () => choose(turn, k), text: "I prefer this reply" })])));
      li.append(both);
      return li;
    }
    li.append(el("div", { class: "text reply", text: shownReply(turn) }));
    if (!turn.completion_id) return li;  // a turn the page did not get from this server
    li.append(controls(turn, i === state.turns.length - 1));
    return li;
  }

  function controls(turn, isLast) {
    const index = turn.picked || 0;
    const box = el("div", { class: "controls", role: "group", "aria-label": "Feedback on this reply" });
    // words, not emoji: a browser without an emoji font shows an empty box, and a name that
    // matches the visible text is what speech-control users say
    const up = el("button", { type: "button", class: "thumb up", "aria-label": "Thumbs up",
                              "aria-pressed": turn.thumbs === "up" ? "true" : "false",
                              onclick: () => thumbs(turn, "up"), text: "Thumbs up" });
    const down = el("button", { type: "button", class: "thumb down", "aria-label": "Thumbs down",
                                "aria-pressed": turn.thumbs === "down" ? "true" : "false",
                                onclick: () => thumbs(turn, "down"), text: "Thumbs down" });
    const stars = [1, 2, 3, 4, 5].map((n) => el("button", {
      type: "button", class: "rate", "data-value": n, "aria-label": `Rate ${n} of 5`,
      "aria-pressed": turn.rating === n ? "true" : "false", onclick: () => rate(turn, n), text: String(n) }));
    const rating = el("div", { class: "rating", role: "group", "aria-label": "Rate this reply from 1 to 5" },
      [el("span", { class: "rating-label", "aria-hidden": "true", text: "Rate" }), ...stars]);
    box.append(up, down, rating,
               el("button", { type: "button", class: "edit", onclick: () => startEdit(turn), text: "Edit" }));
    if (isLast) box.append(el("button", { type: "button", class: "regenerate", onclick: regenerate, text: "Regenerate" }));
    const extra = el("div", { class: "extra" });
    if (turn.thumbs && !turn.reasonSent) {
      const id = `reason-${turn.completion_id}-${index}`;
      extra.append(el("form", { class: "reason-form", onsubmit: (e) => { e.preventDefault(); giveReason(turn, e.target); } }, [
        el("label", { for: id, text: "Why? (optional)" }),
        el("input", { id, class: "reason", type: "text", maxlength: "2000" }),
        el("button", { type: "submit", text: "Send reason" })]));
    }
    if (turn.editing) {
      const id = `edit-${turn.completion_id}-${index}`;
      const area = el("textarea", { id, class: "edit-text", rows: "4" });
      area.value = turn.edit || shownReply(turn);
      area.addEventListener("keydown", (e) => { if (e.key === "Escape") { turn.editing = false; render(); } });
      extra.append(el("form", { class: "edit-form", onsubmit: (e) => { e.preventDefault(); saveEdit(turn, area.value); } }, [
        el("label", { for: id, text: "A better reply" }), area,
        el("div", { class: "row" }, [el("button", { type: "submit", text: "Save better reply" }),
          el("button", { type: "button", onclick: () => { turn.editing = false; render(); }, text: "Cancel" })])]));
    }
    const wrap = el("div", {}, [box, extra]);
    return wrap;
  }

  // ------------------------------------------------------------------ feedback
  async function feedback(turn, body, saved) {
    try {
      await api("/chat/api/feedback", Object.assign({ completion_id: turn.completion_id }, body));
      say(saved);
      return true;
    } catch (e) {
      say(`Not saved: ${e.message}`, true);
      return false;
    }
  }

  function refocus(selector) {
    const node = document.querySelector(selector);
    if (node) node.focus();
  }

  async function thumbs(turn, which) {
    if (await feedback(turn, { thumbs: which, choice_index: turn.picked || 0 }, `Saved: thumbs ${which}.`)) {
      turn.thumbs = which;
      turn.reasonSent = false;
      render();
      refocus(`li[data-completion="${turn.completion_id}"] .reason`);
    }
  }

  async function giveReason(turn, form) {
    const reason = form.querySelector(".reason").value.trim();
    if (!reason) return;
    if (await feedback(turn, { thumbs: turn.thumbs, reason, choice_index: turn.picked || 0 }, "Saved: your reason.")) {
      turn.reasonSent = true;
      render();
      refocus(`li[data-completion="${turn.completion_id}"] .thumb.${turn.thumbs}`);
    }
  }

  async function rate(turn, n) {
    if (await feedback(turn, { rating: n, choice_index: turn.picked || 0 }, `Saved: rated ${n} of 5.`)) {
      turn.rating = n;
      render();
      refocus(`li[data-completion="${turn.completion_id}"] .rate[data-value="${n}"]`);
    }
  }

  function startEdit(turn) {
    turn.editing = true;
    render();
    refocus(`li[data-completion="${turn.completion_id}"] .edit-text`);
  }

  async function saveEdit(turn, text) {
    if (!text.trim()) return say("A better reply cannot be empty.", true);
    if (await feedback(turn, { edit: text, choice_index: turn.picked || 0 }, "Saved: your better reply.")) {
      turn.editing = false;
      turn.edit = text;
      render();
      refocus(`li[data-completion="${turn.completion_id}"] .edit`);
    }
  }

  async function choose(turn, k) {
    if (await feedback(turn, { choice: k }, `Saved: you prefer reply ${k + 1}.`)) {
      turn.picked = k;
      render();
      refocus(`li[data-completion="${turn.completion_id}"] .thumb.up`);
    }
  }

  // ------------------------------------------------------------------ sending and streaming
  async function ask(messages) {
    state.busy = true;
    $("#send").disabled = true;
    const turn = { role: "assistant", completion_id: null, replies: [""], comparison: false, picked: null,
                   streaming: true };
    state.turns.push(turn);
    render();
    say("The assistant is writing\u2026");
    try {
      const r = await api("/chat/api/send", { conversation: state.conversation, messages });
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          if (!event.startsWith("data: ")) continue;
          const data = event.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          turn.completion_id = chunk.id;
          turn.comparison = !!chunk.rlhfkit.comparison;
          state.conversation = chunk.rlhfkit.conversation || state.conversation;
          for (const c of chunk.choices) {
            while (turn.replies.length <= c.index) turn.replies.push("");
            if (c.delta.content) turn.replies[c.index] += c.delta.content;
          }
          render();
        }
      }
      turn.streaming = false;
      turn.picked = turn.replies.length === 1 ? 0 : null;
      render();
      say(turn.comparison ? "Two replies: pick the one you prefer." : "Reply finished.");
      loadConversations();
    } catch (e) {
      state.turns.pop();
      render();
      say(`No reply: ${e.message}`, true);
    } finally {
      state.busy = false;
      $("#send").disabled = false;
    }
  }

  function send() {
    const box = $("#prompt");
    const text = box.value;
    if (state.busy || !text.trim()) return;
    const open = state.turns.length && state.turns[state.turns.length - 1];
    if (open && open.role === "assistant" && open.comparison && (open.picked === null || open.picked === undefined)) {
      say("Pick one of the two replies first.", true);
      return;
    }
    box.value = "";
    state.turns.push({ role: "user", content: text });
    ask(history(state.turns));
  }

  function regenerate() {
    if (state.busy) return;
    const last = state.turns[state.turns.length - 1];
    if (!last || last.role !== "assistant") return;
    state.turns.pop();
    ask(history(state.turns)).then(() => $("#prompt").focus());
  }

  // ------------------------------------------------------------------ start
  async function unlock(e) {
    e.preventDefault();
    try {
      await api("/chat/api/key", { key: $("#api-key").value });
      window.location.reload();
    } catch (err) {
      say(`Not unlocked: ${err.message}`, true);
    }
  }

  async function signIn(e) {
    e.preventDefault();
    try {
      await api("/chat/api/login", { username: $("#username").value, password: $("#password").value });
      window.location.reload();
    } catch (err) {
      say(`Not signed in: ${err.message}`, true);
      $("#password").focus();
    }
  }

  async function signOut() {
    try {
      await api("/chat/api/logout", {});
      window.location.reload();
    } catch (err) {
      say(err.message, true);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#show-sign-in").addEventListener("click", () => {
      $("#sign-in-form").hidden = false;
      $("#username").focus();
    });
    $("#sign-in-form").addEventListener("submit", signIn);
    $("#sign-out").addEventListener("click", signOut);
    $("#composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
    $("#prompt").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
    });
    $("#new-chat").addEventListener("click", newConversation);
    if (document.querySelector('meta[name="chat-locked"]').content === "1") {
      $("#key-form").hidden = false;
      $("#composer").hidden = true;
      $("#key-form").addEventListener("submit", unlock);
      $("#api-key").focus();
      return;
    }
    loadConversations().catch((e) => say(e.message, true));
  });
})();
