// OpenDeep's light JavaScript: live updates over Server-Sent Events and the human-in-the-loop panel.
// Every page works without it; this only saves reloads and shows questions from live calls at once.
"use strict";

(function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
  const cards = new Map();   // request_id -> card element

  // A toast is shown once per key (a notification's id, else its text) in this tab, even across reloads:
  // the same news arriving from the hub and from the database poll, or after a live reload, is not repeated.
  const shownToasts = new Set(JSON.parse(sessionStorage.getItem("opendeep-toasts") || "[]"));
  function toast(text, kind, key) {
    const box = document.getElementById("toasts");
    if (!box) return;
    key = String(key || text);
    if (shownToasts.has(key)) return;
    shownToasts.add(key);
    sessionStorage.setItem("opendeep-toasts", JSON.stringify([...shownToasts].slice(-200)));
    const item = document.createElement("p");
    item.className = "flash " + (kind || "info");
    item.textContent = text;
    box.appendChild(item);
    setTimeout(() => item.remove(), 8000);
  }

  function updateCount() {
    const open = [...cards.values()].filter((c) => c.dataset.state === "pending").length;
    const badge = document.getElementById("hitl-count");
    if (badge) { badge.textContent = String(open); badge.hidden = open === 0; }
    const panel = document.getElementById("hitl-panel");
    if (panel) panel.hidden = cards.size === 0;
  }

  function closeCard(card, state, text) {
    card.dataset.state = state;
    card.classList.add(state);
    card.querySelector(".hitl-status").textContent = text;
    card.querySelector(".hitl-timer").textContent = "";
    card.querySelectorAll("input, button").forEach((el) => { el.disabled = true; });
    updateCount();
    setTimeout(() => { card.remove(); cards.delete(card.dataset.requestId); updateCount(); }, 15000);
  }

  function showQuestion(data) {
    const id = String(data.request_id);
    if (cards.has(id)) return;
    const template = document.getElementById("hitl-card-template");
    const card = template.content.firstElementChild.cloneNode(true);
    card.id = "hitl-" + id;
    card.dataset.requestId = id;
    card.dataset.state = "pending";
    const task = data.task || {};
    card.querySelector(".hitl-who").textContent =
      (task.target_name || "Call " + data.call_id) + (task.phone_number ? " · " + task.phone_number : "") +
      (data.campaign ? " · " + data.campaign.name : "");
    card.querySelector(".hitl-objective").textContent = task.objective || "";
    card.querySelector(".hitl-question").textContent = data.question;
    const list = card.querySelector(".hitl-transcript");
    (data.transcript || []).forEach((line) => {
      const li = document.createElement("li");
      li.className = line.speaker;
      const who = document.createElement("b");
      who.textContent = line.speaker + " ";
      li.append(who, document.createTextNode(line.text));
      list.appendChild(li);
    });
    if (!list.children.length) card.querySelector(".hitl-transcript-box").hidden = true;
    const form = card.querySelector("form");
    form.action = "/feedback/" + id + "/answer";
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const answer = form.elements.answer.value.trim();
      if (!answer) return;
      form.querySelector("button").disabled = true;
      try {
        const response = await fetch("/api/feedback/" + id + "/answer", {
          method: "POST", credentials: "same-origin",
          headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf()},
          body: JSON.stringify({answer}),
        });
        const body = await response.json();
        if (response.ok) closeCard(card, "answered", "Answered: " + body.answer);
        else { card.querySelector(".hitl-status").textContent = body.error.message; form.querySelector("button").disabled = false; }
      } catch (err) {
        card.querySelector(".hitl-status").textContent = "Could not send the answer: " + err;
        form.querySelector("button").disabled = false;
      }
    });
    if (data.timeout_at) {
      const deadline = Date.parse(data.timeout_at);
      const tick = () => {
        if (card.dataset.state !== "pending") return;
        const left = Math.max(0, Math.round((deadline - Date.now()) / 1000));
        card.querySelector(".hitl-timer").textContent = left + " s left to answer";
        if (left > 0) setTimeout(tick, 1000);
      };
      tick();
    }
    cards.set(id, card);
    document.getElementById("hitl-cards").prepend(card);
    updateCount();
    const who = (task.target_name || "A call") + (task.phone_number ? " (" + task.phone_number + ")" : "");
    toast(who + " needs your answer: " + data.question, "warning", "question-" + id);
  }

  let refreshTimer = null;
  function refreshTasks() {
    const box = document.getElementById("tasks");
    if (!box) return;
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(async () => {
      const open = [...box.querySelectorAll("details[open]")].map((d) => d.id).filter(Boolean);
      // The same page of tasks as shown (?page=N).
      const response = await fetch(box.dataset.fragment + window.location.search, {credentials: "same-origin"});
      if (!response.ok) return;
      box.innerHTML = await response.text();
      open.forEach((id) => { const d = document.getElementById(id); if (d) d.open = true; });
    }, 250);
  }

  // Fragments the server renders again on live events: the campaign header (status, buttons) and the status
  // strip. Each refresh is debounced; a failed one leaves the element as it was.
  const fragmentTimers = {};
  function refreshFragment(id) {
    const element = document.getElementById(id);
    if (!element) return;
    clearTimeout(fragmentTimers[id]);
    fragmentTimers[id] = setTimeout(async () => {
      const response = await fetch(element.dataset.fragment || element.dataset.refresh, {credentials: "same-origin"});
      if (!response.ok) return;
      const html = await response.text();
      if (element.id === "status-strip") {
        const holder = document.createElement("div");
        holder.innerHTML = html;
        if (holder.firstElementChild) element.replaceWith(holder.firstElementChild);
      } else {
        element.innerHTML = html;
      }
    }, 250);
  }
  function refreshHeader(data) {
    const header = document.getElementById("campaign-header");
    if (header && (!data || data.campaign_id === undefined || String(data.campaign_id) === header.dataset.campaignId)) {
      refreshFragment("campaign-header");
    }
  }

  let reloadTimer = null;
  function reloadList() {
    if (!document.querySelector("[data-live-reload]")) return;
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => window.location.reload(), 1500);
  }

  function connect() {
    const source = new EventSource("/events");
    // Each event also goes to other scripts of the page as "live:<kind>" (board.js: the live board).
    const on = (kind, handler) => source.addEventListener(kind, (event) => {
      const data = JSON.parse(event.data);
      handler(data);
      document.dispatchEvent(new CustomEvent("live:" + kind, {detail: data}));
    });
    on("feedback.asked", showQuestion);
    on("feedback.answered", (data) => {
      const card = cards.get(String(data.request_id));
      if (card && card.dataset.state === "pending") closeCard(card, "answered", "Answered: " + (data.answer || ""));
    });
    on("feedback.timed_out", (data) => {
      const card = cards.get(String(data.request_id));
      if (card && card.dataset.state === "pending") closeCard(card, "timed-out", "Timed out: the call went on without your answer.");
    });
    on("feedback.closed", (data) => {
      const card = cards.get(String(data.request_id));
      if (card && card.dataset.state === "pending") closeCard(card, "closed", "This question was withdrawn.");
    });
    const box = document.getElementById("tasks");
    on("task.updated", (data) => {
      if (box && String(data.campaign_id) === box.dataset.campaignId) refreshTasks();
      refreshHeader(data);
      refreshFragment("status-strip");
      reloadList();
    });
    ["call.updated", "call.transcript", "campaign.updated"].forEach((kind) => on(kind, () => refreshTasks()));
    on("call.updated", () => refreshFragment("status-strip"));
    on("campaign.updated", refreshHeader);
    // A best-of campaign's offers and choice form (webui/best_of_choice.py): shown as soon as the choice is due.
    on("campaign.updated", (data) => {
      const box = document.getElementById("best-of-box");
      if (box && String(data.campaign_id) === document.getElementById("campaign-header").dataset.campaignId) {
        refreshFragment("best-of-box");
      }
    });
    on("campaign.summarized", (data) => { refreshHeader(data); reloadList(); });
    on("notification", (data) => toast(data.message, "info", data.id ? "note-" + data.id : null));
    on("ready", () => { document.body.dataset.liveReady = "1"; });
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.classList.contains("confirm-cancel") && !window.confirm("Cancel? Calls in progress are hung up.")) {
      event.preventDefault();
      return;
    }
    if (form.classList.contains("confirm-remove") && !window.confirm(form.dataset.confirm || "Remove?")) {
      event.preventDefault();
      return;
    }
    if (form.classList.contains("confirm-disable") &&
        !window.confirm("Disable this user? They are logged out everywhere and none of their tasks is dialed.")) {
      event.preventDefault();
      return;
    }
    if (form.classList.contains("confirm-form")) {
      // The server ignores a second confirm anyway; this only stops the double click from being sent.
      setTimeout(() => form.querySelectorAll("button").forEach((b) => { b.disabled = true; }), 0);
    }
  });

  function browserZone() {
    try { return Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (err) { return ""; }
  }

  document.addEventListener("DOMContentLoaded", () => {
    // The login form sends the browser's time zone: a user's first login sets theirs (Account changes it).
    document.querySelectorAll("input[data-browser-zone]").forEach((input) => { input.value = browserZone(); });
    document.querySelectorAll("[data-use-browser-zone]").forEach((button) => button.addEventListener("click", () => {
      const field = button.form && button.form.elements.time_zone;
      if (field && browserZone()) field.value = browserZone();
    }));
    if (document.body.dataset.live === "1" && window.EventSource) connect();
    // Asterisk coming back or going away publishes no event to the pages: the strip looks again now and then.
    if (document.getElementById("status-strip")) setInterval(() => refreshFragment("status-strip"), 20000);
  });
})();
