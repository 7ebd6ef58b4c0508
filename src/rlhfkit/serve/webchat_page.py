"""The web chat's page (``webchat.py`` serves it): one HTML document whose script and style are
the static files ``static/chat.js`` and ``static/chat.css``."""

from __future__ import annotations

import html

__all__ = ["chat_page_html"]


def chat_page_html(model: str, csrf: str, end_user: str, locked: bool, account: str | None = None) -> str:
    """The page's HTML: no inline script or style (its JS and CSS are files, as the CSP asks);
    ``csrf``: the session's token, read by the script; ``locked``: the API key is asked first."""
    e = html.escape
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{e(csrf)}">
<meta name="chat-locked" content="{"1" if locked else "0"}">
<title>Chat with {e(model)}</title>
<link rel="stylesheet" href="/chat/static/chat.css">
<script src="/chat/static/chat.js" defer></script>
</head>
<body>
<header class="top">
  <h1>Chat with <span class="model">{e(model)}</span></h1>
  <div class="account">
    <span id="signed-in" {"" if account else "hidden"}>Signed in as <strong>{e(account or "")}</strong>
      <button type="button" id="sign-out">Sign out</button></span>
    <button type="button" id="show-sign-in" {"hidden" if account else ""}>Sign in</button>
    <button type="button" id="new-chat">New conversation</button>
  </div>
</header>
<form id="sign-in-form" class="sign-in" hidden>
  <label for="username">User name</label><input id="username" autocomplete="username" required>
  <label for="password">Password</label><input id="password" type="password" autocomplete="current-password" required>
  <button type="submit">Sign in</button>
</form>
<div class="layout">
  <nav aria-labelledby="conversations-title">
    <h2 id="conversations-title">Your conversations</h2>
    <ul id="conversations"></ul>
  </nav>
  <main>
    <form id="key-form" class="key-form" hidden>
      <label for="api-key">This server needs its API key once</label>
      <input id="api-key" type="password" autocomplete="off" required>
      <button type="submit">Unlock</button>
    </form>
    <ol id="messages" class="messages" aria-label="Conversation"></ol>
    <form id="composer" class="composer">
      <label for="prompt">Message</label>
      <textarea id="prompt" rows="3" autofocus
        placeholder="Write a message. Enter sends, Shift+Enter starts a new line."></textarea>
      <button type="submit" id="send">Send</button>
    </form>
    <p id="status" class="status" role="status" aria-live="polite"></p>
  </main>
</div>
<footer>Your anonymous id is <code id="end-user">{e(end_user)}</code>: give it to the operator to have
what you wrote here erased.</footer>
</body>
</html>
"""
