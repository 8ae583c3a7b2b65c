// devcell dashboard: live workspace phases without reloading, and the workspace terminal
// (xterm.js over the cell's WebSocket). Plain script, no build step; xterm.js comes from npm.
(function () {
  "use strict";
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function api(path, options) {
    options = options || {};
    options.credentials = "same-origin";
    options.headers = Object.assign({ "x-csrf-token": csrf, "content-type": "application/json" }, options.headers || {});
    return fetch(path, options).then(function (r) {
      if (!r.ok) throw new Error(r.status + " " + path);
      return r.status === 204 ? null : r.json();
    });
  }

  // Times: the server writes "2026-12-05 12:54 UTC (3 min ago)" in <time datetime>; here the
  // same format in the viewer's time zone, with the relative part kept current.
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function relative(ms) {
    var s = Math.round(ms / 1000), future = s > 0, a = Math.abs(s);
    if (future) {
      var m = Math.ceil(a / 60);
      if (m <= 0) return "now";
      if (m < 60) return "in " + m + " min";
      if (m >= 48 * 60) return "in " + Math.floor(m / (24 * 60)) + " days";
      return "in " + Math.floor(m / 60) + " h" + (m % 60 ? " " + (m % 60) + " min" : "");
    }
    if (a < 60) return "just now";
    if (a < 3600) return Math.floor(a / 60) + " min ago";
    if (a < 86400) return Math.floor(a / 3600) + " h ago";
    var d = Math.floor(a / 86400);
    return d === 1 ? "1 day ago" : d + " days ago";
  }
  function localTime(iso) {
    var t = new Date(iso);
    if (isNaN(t)) return null;
    return t.getFullYear() + "-" + pad(t.getMonth() + 1) + "-" + pad(t.getDate()) + " " +
      pad(t.getHours()) + ":" + pad(t.getMinutes()) + " (" + relative(t - Date.now()) + ")";
  }
  function localizeTimes(root) {
    (root || document).querySelectorAll("time[datetime]").forEach(function (el) {
      var text = localTime(el.getAttribute("datetime"));
      if (text && el.textContent !== text) el.textContent = text;
      if (!el.title) el.title = new Date(el.getAttribute("datetime")).toString();
    });
  }
  localizeTimes();
  setInterval(localizeTimes, 30000);

  // Live regions: every element with data-live is re-rendered by the server and swapped in
  // when it changed (rows added or gone, Start becoming Stop, new tasks and ports, the
  // timeline), so the page never needs a reload and no markup is written twice. A region the
  // user is working in (focus inside) is left alone; one with data-sig is swapped only when
  // its signature changes (task logs stream on their own, below).
  function refreshLive() {
    var regions = document.querySelectorAll("[data-live]");
    if (!regions.length) return Promise.resolve();
    return fetch(location.pathname + location.search, { credentials: "same-origin" }).then(function (r) {
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (!html) return;
      var fresh = new DOMParser().parseFromString(html, "text/html");
      regions.forEach(function (mine) {
        var next = fresh.querySelector('[data-live="' + mine.dataset.live + '"]');
        if (!next || mine.contains(document.activeElement)) return;
        var changed = mine.dataset.sig !== undefined ? mine.dataset.sig !== next.dataset.sig : mine.innerHTML !== next.innerHTML;
        if (changed) {
          mine.innerHTML = next.innerHTML;
          if (next.dataset.sig !== undefined) mine.dataset.sig = next.dataset.sig;
          localizeTimes(mine);
        }
      });
    }).catch(function () {});
  }

  // The workspace page: its phase, then its terminal once it runs.
  var page = document.querySelector("[data-workspace]");
  var terminalOpened = false;
  var lastPhase = "";
  function refreshWorkspace() {
    if (!page) return;
    var id = page.dataset.workspace;
    api("/api/v1/workspaces/" + id).then(function (w) {
      // What the page leads with (terminal, Start, Retry, progress) follows the state: when
      // that changes, every live section is fetched again at once, so each says what is true now.
      var mode = { running: "running", stopped: "stopped", failed: "failed" }[w.phase] || "busy";
      var changed = page.dataset.mode !== mode;
      page.dataset.mode = mode;
      var phase = document.getElementById("phase");
      if (phase && phase.textContent !== w.phase) { phase.textContent = w.phase; phase.className = "badge " + w.phase; }
      var message = document.getElementById("message");
      if (message && w.message) message.textContent = w.message;
      var warning = document.getElementById("stop-warning");
      if (warning) {
        warning.textContent = w.stop_warning || "";
        warning.hidden = !w.stop_warning;
      }
      var stops = document.querySelector("#stops-at time");
      if (stops && w.stops_at && stops.getAttribute("datetime") !== w.stops_at) {
        stops.setAttribute("datetime", w.stops_at);
        localizeTimes(stops.parentNode);
      }
      var reason = document.getElementById("stop-reason");
      if (reason && w.stops_at) reason.textContent = w.stop_reason === "max_lifetime" ? "maximum lifetime" : "if idle";
      lastPhase = w.phase;
      if (w.phase !== "running" && terminalOpened) {
        // Its shells ended with the sandbox; a restart opens new ones.
        terminalOpened = false;
        closeTerminals();
      }
      return (changed ? refreshLive() : Promise.resolve()).then(function () {
        if (w.phase === "running" && !terminalOpened && document.getElementById("terminal")) {
          terminalOpened = true;
          openTerminal(id);
        }
      });
    }).catch(function () {});
  }

  // Task states and logs stream in while the page is open.
  function refreshTasks() {
    if (!page || !document.querySelector("[data-task-log]")) return;
    api("/api/v1/workspaces/" + page.dataset.workspace + "/tasks").then(function (tasks) {
      tasks.forEach(function (t) {
        var log = document.querySelector('[data-task-log="' + t.index + '"]');
        var state = document.querySelector('[data-task-state="' + t.index + '"]');
        if (log && log.textContent !== t.log) {
          var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
          log.textContent = t.log;
          if (atEnd) log.scrollTop = log.scrollHeight;
        }
        if (state && t.state !== "unknown") state.textContent = t.state;
      });
    }).catch(function () {});
  }

  // Terminals: one tab each; a page load attaches to the shells that already run.
  function openTerminal(id) {
    var box = document.getElementById("terminal");
    if (!box || !window.Terminal) return;
    var add = document.getElementById("new-terminal");
    if (add) add.onclick = function () { createTerminal(id); };
    api("/api/v1/workspaces/" + id + "/terminals").then(function (list) {
      var alive = list.filter(function (t) { return t.alive; });
      if (!alive.length) return createTerminal(id);
      alive.forEach(function (t, i) { addTab(t, i === 0); });
    }).catch(function () { createTerminal(id); });
  }

  function createTerminal(id) {
    return api("/api/v1/workspaces/" + id + "/terminals", { method: "POST", body: JSON.stringify({ cols: 100, rows: 30 }) })
      .then(function (t) { addTab(t, true); })
      .catch(function (e) { document.getElementById("terminal").textContent = "cannot open a terminal: " + e.message; });
  }

  function closeTerminals() {
    document.querySelectorAll(".term-pane").forEach(function (p) {
      p.closed = true;
      if (p.socket) p.socket.close();
      if (p.term) p.term.dispose();
      p.remove();
    });
    document.querySelectorAll("#terminal-tabs button[data-tid]").forEach(function (b) { b.remove(); });
    var box = document.getElementById("terminal");
    if (box) delete box.dataset.state;
  }

  function select(tid) {
    document.querySelectorAll(".term-pane").forEach(function (p) { p.hidden = p.dataset.tid !== tid; });
    document.querySelectorAll("#terminal-tabs button[data-tid]").forEach(function (b) {
      b.setAttribute("aria-selected", b.dataset.tid === tid ? "true" : "false");
    });
    var pane = document.querySelector('.term-pane[data-tid="' + tid + '"]');
    if (pane && pane.fit) { pane.fit.fit(); pane.term.focus(); }
  }

  function addTab(t, selected) {
    var box = document.getElementById("terminal");
    var tabs = document.getElementById("terminal-tabs");
    var pane = document.createElement("div");
    pane.className = "term-pane";
    pane.dataset.tid = t.id;
    box.appendChild(pane);
    if (tabs) {
      var b = document.createElement("button");
      b.type = "button";
      b.dataset.tid = t.id;
      b.setAttribute("role", "tab");
      b.textContent = "Terminal " + t.id.replace(/^t/, "");
      b.onclick = function () { select(t.id); };
      // Arrow keys move between terminal tabs, as in any tab list.
      b.onkeydown = function (e) {
        if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
        var all = Array.prototype.slice.call(document.querySelectorAll("#terminal-tabs button[data-tid]"));
        var next = all[(all.indexOf(b) + (e.key === "ArrowRight" ? 1 : all.length - 1)) % all.length];
        if (next) { select(next.dataset.tid); next.focus(); e.preventDefault(); }
      };
      tabs.insertBefore(b, document.getElementById("new-terminal"));
    }
    var term = new window.Terminal({ cursorBlink: true, fontSize: 14 });
    var fit = window.FitAddon ? new window.FitAddon.FitAddon() : null;
    if (fit) term.loadAddon(fit);
    term.open(pane);
    pane.term = term;
    pane.fit = fit;
    if (fit) window.addEventListener("resize", function () { if (!pane.hidden && !pane.closed) fit.fit(); });
    attach(pane, t.attach);
    if (selected || !tabs) select(t.id); else pane.hidden = true;
  }

  function attach(pane, path) {
    var term = pane.term, fit = pane.fit;
    var proto = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(proto + location.host + path);
    pane.socket = ws;
    ws.binaryType = "arraybuffer";
    var first = true;
    ws.onmessage = function (ev) {
      if (first) { term.reset(); first = false; }
      term.write(new Uint8Array(ev.data));
    };
    var encoder = new TextEncoder();
    var input = term.onData(function (d) { if (ws.readyState === 1) ws.send(encoder.encode(d)); });
    var resize = term.onResize(function (s) {
      if (ws.readyState === 1) ws.send(JSON.stringify({ type: "resize", cols: s.cols, rows: s.rows }));
    });
    ws.onopen = function () {
      if (fit) fit.fit();
      ws.send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
      document.getElementById("terminal").dataset.state = "attached";
    };
    // Reconnect while the workspace runs: the shell keeps running and its recent output is
    // replayed. A closed pane (the workspace stopped) stays closed.
    ws.onclose = function (ev) {
      input.dispose(); resize.dispose();
      // 4403: the cell closed it because the viewer's access ended (signed out, token revoked,
      // removed from the organization): say so instead of reconnecting.
      if (ev.code === 4403) {
        pane.closed = true;
        term.write("\r\n\x1b[1mThis terminal was closed: your access to this workspace ended. Sign in again to continue.\x1b[0m\r\n");
        return;
      }
      // 1000: its shell exited; there is nothing to reconnect to.
      if (ev.code === 1000) {
        pane.closed = true;
        term.write("\x1b[1mThe shell exited. Open a new terminal to go on.\x1b[0m\r\n");
        return;
      }
      setTimeout(function retry() {
        if (pane.closed) return;
        if (lastPhase === "running") attach(pane, path); else setTimeout(retry, 1000);
      }, 1000);
    };
  }

  refreshWorkspace();
  setInterval(function () { refreshWorkspace(); refreshTasks(); }, 1000);
  setInterval(refreshLive, 2000);
})();
