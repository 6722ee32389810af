// The live board and listen-in: follow the page's live event stream (app.js dispatches each event as
// "live:<kind>" on document) to add transcript lines as they are said and reload the board's rows.
"use strict";

(function () {
  const LAST_WORDS = 3;
  const RELOAD_SECONDS = 5;   // calls run by another process reach this page only through the database

  function line(data) {
    const li = document.createElement("li");
    li.className = data.speaker;
    const who = document.createElement("b");
    who.textContent = data.speaker;
    li.append(who, document.createTextNode(" " + data.text));
    return li;
  }

  function timer(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const mm = String(Math.floor(s % 3600 / 60)).padStart(2, "0"), ss = String(s % 60).padStart(2, "0");
    return s >= 3600 ? Math.floor(s / 3600) + ":" + mm + ":" + ss : Math.floor(s / 60) + ":" + ss;
  }

  function tick() {
    document.querySelectorAll(".timer[data-since]").forEach((el) => {
      el.textContent = timer((Date.now() - Date.parse(el.dataset.since)) / 1000);
    });
  }

  const board = document.getElementById("board");
  let reloading = null;
  async function reloadRows() {
    if (!board || reloading) return;
    reloading = (async () => {
      try {
        const response = await fetch(board.dataset.rows, {credentials: "same-origin"});
        if (response.ok) { document.getElementById("board-rows").innerHTML = await response.text(); tick(); }
      } finally { reloading = null; }
    })();
  }

  document.addEventListener("live:call.transcript", (event) => {
    const data = event.detail;
    const listen = document.getElementById("listen-transcript");
    if (listen && listen.dataset.callId === String(data.call_id)) listen.appendChild(line(data));
    const row = document.getElementById("board-call-" + data.call_id);
    if (!row) { reloadRows(); return; }
    const list = row.querySelector(".last-words");
    list.querySelectorAll(".none").forEach((el) => el.remove());
    list.appendChild(line(data));
    while (list.children.length > LAST_WORDS) list.firstElementChild.remove();
  });
  ["live:call.updated", "live:task.updated"].forEach((kind) => document.addEventListener(kind, (event) => {
    reloadRows();
    const status = document.getElementById("listen-status");
    const listen = document.getElementById("listen-transcript");
    if (status && listen && String(event.detail.call_id) === listen.dataset.callId && event.detail.status) {
      status.textContent = event.detail.status;
    }
  }));
  if (board) setInterval(() => { if (!document.hidden) reloadRows(); }, RELOAD_SECONDS * 1000);
  setInterval(tick, 1000);
})();
