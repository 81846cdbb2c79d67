// gitsync status page: refreshes itself. Polls the page's JSON API (every 2 s while a rollout
// runs, every 5 s otherwise); when the answer changed, fetches the page again and swaps its
// <main> for the new one. The HTML comes escaped from the server and is parsed by DOMParser
// (inert: nothing in it runs); no innerHTML, no eval, nothing inline (the CSP forbids it).
"use strict";
(function () {
  const FAST = 2000;
  const SLOW = 5000;
  const body = document.body;
  const api = body.dataset.api;
  let last = null;

  function stamp(text) {
    const where = document.getElementById("updated");
    if (where) where.textContent = text;
  }

  function busy(data) {
    if (data && typeof data.in_progress === "boolean") return data.in_progress;
    return Boolean(data && data.summary && data.summary.in_progress);
  }

  async function swap() {
    const response = await fetch(location.pathname, { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const parsed = new DOMParser().parseFromString(await response.text(), "text/html");
    const next = parsed.getElementById("main");
    const current = document.getElementById("main");
    if (next && current) current.replaceWith(document.importNode(next, true));
    document.title = parsed.title;
    body.dataset.inProgress = parsed.body.dataset.inProgress || "false";
  }

  async function tick() {
    let delay = body.dataset.inProgress === "true" ? FAST : SLOW;
    try {
      const response = await fetch(api, {
        headers: { Accept: "application/json" }, cache: "no-store", credentials: "same-origin",
      });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const text = await response.text();
      delay = busy(JSON.parse(text)) ? FAST : SLOW;
      if (text !== last) {
        if (last !== null) await swap();
        last = text;
      }
      stamp("updated " + new Date().toLocaleTimeString());
    } catch (error) {
      stamp("refresh failed (" + error.message + "); retrying");
    }
    setTimeout(tick, delay);
  }

  if (api) tick();
})();
