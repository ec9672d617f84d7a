// paas dashboard glue. Three jobs, nothing else:
// 1. The token: kept in sessionStorage (this tab only), added as a bearer header to every
//    htmx request and to the log stream; never put in a URL.
// 2. Routes: the location hash (#/apps/shop) names a fragment (/ui/apps/shop) that is
//    loaded into <main>; links are plain anchors, so they work with the keyboard and the
//    back button.
// 3. The live log view: reads the server-sent events of /ui/apps/APP/logs/stream with
//    fetch (EventSource cannot send headers), appends lines, pauses.
(function () {
  "use strict";

  var TOKEN = "paas.token";
  var SCOPE = "paas.scope";
  var main = document.getElementById("main");
  var signIn = document.getElementById("sign-in");
  var signInForm = document.getElementById("sign-in-form");
  var tokenInput = document.getElementById("token");
  var signInError = document.getElementById("sign-in-error");
  var nav = document.getElementById("nav");
  var who = document.getElementById("who");
  var navCluster = document.getElementById("nav-cluster");

  function token() {
    return sessionStorage.getItem(TOKEN);
  }

  function authHeaders() {
    var t = token();
    return t ? { Authorization: "Bearer " + t } : {};
  }

  document.body.addEventListener("htmx:configRequest", function (e) {
    var t = token();
    if (t) e.detail.headers["Authorization"] = "Bearer " + t;
  });

  // 401: the token was revoked or is wrong: forget it and ask again.
  document.body.addEventListener("htmx:beforeSwap", function (e) {
    if (e.detail.xhr && e.detail.xhr.status === 401) {
      e.detail.shouldSwap = false;
      signOut("The server refused this token (revoked?): sign in again.");
    }
  });

  document.body.addEventListener("htmx:sendError", function () {
    showBanner("Cannot reach the controller.");
  });

  // Sent by the server after destroying an app: go to another page.
  document.body.addEventListener("paas:navigate", function (e) {
    var to = e.detail && e.detail.value;
    if (typeof to === "string" && to.charAt(0) === "#") location.hash = to;
  });

  function showBanner(text) {
    var b = document.getElementById("banner");
    if (!b) {
      b = document.createElement("p");
      b.id = "banner";
      b.className = "error banner";
      b.setAttribute("role", "alert");
      document.body.insertBefore(b, main);
    }
    b.textContent = text;
  }

  function clearBanner() {
    var b = document.getElementById("banner");
    if (b) b.remove();
  }

  function showSignedIn() {
    var scope = {};
    try {
      scope = JSON.parse(sessionStorage.getItem(SCOPE) || "{}");
    } catch (err) {
      scope = {};
    }
    var admin = scope.kind === "admin";
    who.textContent = admin ? "admin" : "app " + (scope.app || "?");
    navCluster.hidden = !admin;
    nav.hidden = false;
    signIn.hidden = true;
    main.hidden = false;
  }

  function showSignIn(message) {
    stopLogs();
    nav.hidden = true;
    main.hidden = true;
    main.textContent = "";
    signIn.hidden = false;
    signInError.textContent = message || "";
    if (message) tokenInput.setAttribute("aria-invalid", "true");
    else tokenInput.removeAttribute("aria-invalid");
    tokenInput.focus();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN);
    sessionStorage.removeItem(SCOPE);
    showSignIn(message);
  }

  signInForm.addEventListener("submit", function (e) {
    e.preventDefault();
    var t = tokenInput.value.trim();
    if (!t) return;
    signInError.textContent = "";
    fetch("/status", { headers: { Authorization: "Bearer " + t } })
      .then(function (r) {
        return r
          .json()
          .catch(function () {
            return {};
          })
          .then(function (body) {
            if (!r.ok) {
              var msg = (body && body.error && body.error.message) || "sign-in failed (" + r.status + ")";
              throw new Error(msg);
            }
            sessionStorage.setItem(TOKEN, t);
            sessionStorage.setItem(SCOPE, JSON.stringify(body.scope || {}));
            tokenInput.value = "";
            showSignedIn();
            route();
          });
      })
      .catch(function (err) {
        showSignIn(err.message || String(err));
      });
  });

  document.getElementById("sign-out").addEventListener("click", function () {
    signOut("");
  });

  var ROUTE = /^\/(apps(\/[A-Za-z0-9._-]+(\/logs)?)?|cluster)$/;

  function route() {
    clearBanner();
    if (!token()) {
      showSignIn("");
      return;
    }
    showSignedIn();
    stopLogs();
    var path = location.hash.indexOf("#/") === 0 ? location.hash.slice(1) : "/apps";
    if (!ROUTE.test(path)) {
      main.innerHTML = "";
      var h = document.createElement("h1");
      h.textContent = "No such page";
      h.tabIndex = -1;
      main.appendChild(h);
      h.focus();
      return;
    }
    htmx.ajax("GET", "/ui" + path, { target: "#main", swap: "innerHTML" }).then(function () {
      var h1 = main.querySelector("h1");
      if (h1) h1.focus();
    });
  }

  // Only "#/..." hashes are routes; others (the skip link's "#main") just move focus.
  window.addEventListener("hashchange", function () {
    if (location.hash.indexOf("#/") === 0 || location.hash === "") route();
  });

  // ---- live logs ------------------------------------------------------------------

  var MAX_SHOWN = 2000; // lines kept in the page
  var MAX_HELD = 5000; // lines held while paused; beyond, a skipped marker
  var current = null; // AbortController of the open stream

  function stopLogs() {
    if (current) {
      current.abort();
      current = null;
    }
  }

  htmx.onLoad(function (el) {
    var view = el.matches && el.matches("[data-log-stream]") ? el : el.querySelector && el.querySelector("[data-log-stream]");
    if (view) startLogs(view);
  });

  function skippedMarker(n) {
    var li = document.createElement("li");
    li.className = "log-skipped";
    li.setAttribute("role", "note");
    li.textContent = "— " + n + " lines skipped while paused —";
    return li;
  }

  function startLogs(view) {
    stopLogs();
    var ctl = new AbortController();
    current = ctl;
    var list = view.querySelector(".log-lines");
    var status = view.querySelector(".log-status");
    var pause = view.querySelector(".log-pause");
    var paused = false;
    var held = [];
    var dropped = 0;

    function setStatus(text) {
      status.textContent = text;
    }

    function atBottom() {
      return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    }

    // Appends rendered <li>s (strings) and nodes in one go: one layout, one scroll.
    function append(items) {
      if (!items.length) return;
      var stick = atBottom();
      var frag = document.createDocumentFragment();
      var tmp = document.createElement("ol");
      items.forEach(function (item) {
        if (typeof item === "string") {
          tmp.innerHTML = item;
          while (tmp.firstChild) frag.appendChild(tmp.firstChild);
        } else {
          frag.appendChild(item);
        }
      });
      list.appendChild(frag);
      var excess = list.children.length - MAX_SHOWN;
      for (var i = 0; i < excess; i++) list.firstElementChild.remove();
      if (stick) list.scrollTop = list.scrollHeight;
    }

    pause.addEventListener("click", function () {
      paused = !paused;
      pause.textContent = paused ? "Resume" : "Pause";
      pause.setAttribute("aria-pressed", String(paused));
      if (!paused) {
        var items = held;
        if (dropped) items.push(skippedMarker(dropped));
        held = [];
        dropped = 0;
        append(items);
        setStatus("following");
      } else {
        setStatus("paused");
      }
    });

    // One server-sent event; returns its rendered line, or null (held or dropped).
    function handle(block) {
      var data = [];
      block.split("\n").forEach(function (line) {
        if (line.indexOf("data:") === 0) data.push(line.slice(5).replace(/^ /, ""));
      });
      if (!data.length) return null;
      var html = data.join("\n");
      if (!paused) return html;
      if (held.length < MAX_HELD) {
        held.push(html);
        setStatus("paused: " + held.length + " new lines held");
      } else {
        dropped++;
        setStatus("paused: " + held.length + " held, " + dropped + " skipped");
      }
      return null;
    }

    fetch(view.dataset.logStream, {
      headers: Object.assign({ Accept: "text/event-stream" }, authHeaders()),
      signal: ctl.signal,
      cache: "no-store",
    })
      .then(function (r) {
        if (r.status === 401) {
          signOut("The server refused this token (revoked?): sign in again.");
          return;
        }
        if (!r.ok) {
          return r.text().then(function (t) {
            setStatus("cannot follow: " + (t || r.status));
            status.classList.add("error");
          });
        }
        setStatus(paused ? "paused" : "following");
        view.setAttribute("data-following", "true");
        var reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        var buf = "";
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) {
              setStatus("the stream ended");
              return;
            }
            buf += chunk.value.replace(/\r/g, "");
            var i;
            var batch = [];
            while ((i = buf.indexOf("\n\n")) >= 0) {
              var html = handle(buf.slice(0, i));
              if (html !== null) batch.push(html);
              buf = buf.slice(i + 2);
            }
            append(batch);
            return pump();
          });
        }
        return pump();
      })
      .catch(function (err) {
        if (err.name !== "AbortError") setStatus("disconnected: " + err.message);
      });
  }

  route();
})();
