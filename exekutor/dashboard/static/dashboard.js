// Refreshes the live part of a dashboard page (<main id="live" data-refresh="SECONDS">) without a full reload:
// fetches the same URL with ?fragment=1 (server-rendered, escaped HTML) and swaps it in. Served as a file of its
// own so the Content-Security-Policy can stay at script-src 'self'.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var state = document.getElementById("live-state");
  if (!live || !live.dataset.refresh) {
    return;
  }
  var every = Math.max(1, Number(live.dataset.refresh) || 5) * 1000;

  function show(text, stale) {
    if (state) {
      state.textContent = text;
      state.classList.toggle("stale", stale);
    }
  }

  function refresh() {
    if (document.hidden) {  // a background tab does not poll the database
      window.setTimeout(refresh, every);
      return;
    }
    if (live.querySelector("input[type=checkbox]:checked")) {  // a swap would drop the operator's selection
      show("paused · jobs selected", false);
      window.setTimeout(refresh, every);
      return;
    }
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    fetch(url.toString(), {credentials: "same-origin", cache: "no-store"})
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        // Folds the operator opened stay open (by position: the same page has them in the same order).
        var opened = Array.prototype.map.call(live.querySelectorAll("details"), function (fold) {
          return fold.open;
        });
        live.innerHTML = html;
        live.querySelectorAll("details").forEach(function (fold, index) {
          fold.open = fold.open || Boolean(opened[index]);
        });
        show("live · updated " + new Date().toLocaleTimeString(), false);
      })
      .catch(function (error) {
        show("not updated: " + error.message, true);
      })
      .then(function () {
        window.setTimeout(refresh, every);
      });
  }

  window.setTimeout(refresh, every);
})();
