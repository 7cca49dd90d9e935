// The page's few behaviours, in plain script: live refresh (paused while you type in a filter), the send form's
// template fields, times in your own zone, and one submit per click.
(function () {
  "use strict";
  const root = document.documentElement;
  const LABELS = { on: "live", paused: "paused while you type", error: "reconnecting…", off: "" };

  function setState(state) {
    root.dataset.live = state;
    const label = document.querySelector("[data-live-state]");
    if (label) label.textContent = LABELS[state] || "";
  }

  function localTimes(scope) {
    const today = new Date().toDateString();
    for (const el of scope.querySelectorAll("time[datetime]")) {
      const when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) continue;
      el.textContent = when.toDateString() === today
        ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false })
        : when.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hour12: false });
      el.title = when.toString();
    }
  }

  // Typing in a filter: its field has the focus, or holds what was typed but not yet applied.
  function typing() {
    for (const form of document.querySelectorAll("form[data-pause-live]")) {
      if (form.contains(document.activeElement) && document.activeElement.matches("input, select, textarea")) return true;
      for (const input of form.querySelectorAll("input")) if (input.value !== input.defaultValue) return true;
    }
    return false;
  }

  let timer = null;
  let refreshes = 0;
  let skipped = 0;

  function skip() {
    skipped += 1;
    root.dataset.skipped = String(skipped);
    setState("paused");
    schedule();
  }

  function interval() { return parseInt(document.body.dataset.refreshMs || "0", 10) || 0; }

  function schedule() {
    clearTimeout(timer);
    if (!interval()) { setState("off"); return; }
    if (root.dataset.live === "off") setState(typing() ? "paused" : "on");
    timer = setTimeout(refresh, interval());
  }

  let busy = false;

  async function refresh() {
    if (busy) return;
    if (typing()) { skip(); return; }
    if (document.hidden) { schedule(); return; }
    busy = true;
    try {
      const response = await fetch(location.href, { cache: "no-store", credentials: "same-origin" });
      // Logged out meanwhile: the answer is the login page.
      if (new URL(response.url).pathname !== location.pathname) { location.assign(response.url); return; }
      if (!response.ok) throw new Error("HTTP " + response.status);
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      if (typing()) { skip(); return; }
      for (const el of document.querySelectorAll("[data-live][id]")) {
        const next = fresh.getElementById(el.id);
        if (next) el.replaceWith(document.importNode(next, true));
      }
      document.body.dataset.refreshMs = fresh.body.dataset.refreshMs || "0";
      document.title = fresh.title;
      localTimes(document);
      refreshes += 1;
      root.dataset.refreshes = String(refreshes);
      setState("on");
    } catch (error) {
      setState("error");
    } finally {
      busy = false;
    }
    schedule();
  }

  // Stopping typing brings the page up to date at once, rather than at the next tick.
  function pauseOrResume() {
    if (!interval()) return;
    if (typing()) setState("paused");
    else if (root.dataset.live === "paused") { clearTimeout(timer); refresh(); }
  }

  function syncSendForm(form) {
    const mode = form.querySelector("input[name=mode]:checked");
    for (const el of form.querySelectorAll("[data-mode]")) el.hidden = mode !== null && el.dataset.mode !== mode.value;
    const chosen = form.querySelector("select[name=template]");
    for (const el of form.querySelectorAll("[data-template]")) el.hidden = !chosen || el.dataset.template !== chosen.value;
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    for (const form of document.querySelectorAll("form[data-send-form]")) {
      // "Send at" is wall-clock time where the browser is; the server reads it in this zone.
      const zone = form.querySelector("input[data-time-zone]");
      if (zone) zone.value = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
      form.addEventListener("change", function () { syncSendForm(form); });
      syncSendForm(form);
    }
    for (const form of document.querySelectorAll("form")) {
      form.addEventListener("submit", function () {
        const button = form.querySelector("button[type=submit]");
        // After this tick, so that the browser has taken the form's values.
        if (button) setTimeout(function () { button.disabled = true; }, 0);
      });
    }
    // Back to a page the browser kept: its buttons work again.
    window.addEventListener("pageshow", function () {
      for (const button of document.querySelectorAll("button[type=submit]")) button.disabled = false;
    });
    document.addEventListener("focusin", pauseOrResume);
    document.addEventListener("focusout", function () { setTimeout(pauseOrResume, 0); });
    document.addEventListener("input", pauseOrResume);
    document.addEventListener("visibilitychange", function () { if (!document.hidden && interval()) refresh(); });
    schedule();
  });
})();
