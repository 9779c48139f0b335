// The alerts page's buttons: acknowledge or resolve an alert through the API, with the session
// cookie and the page's CSRF token (api/deps.py), then show the page again.
(function () {
  var token = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
  var error = document.getElementById("alert-error");

  function fail(text) {
    error.textContent = text;
    error.hidden = false;
  }

  document.addEventListener("click", function (ev) {
    var button = ev.target.closest("button[data-action]");
    if (!button) { return; }
    var row = button.closest("tr[data-id]");
    var input = row.querySelector("input.note");
    var note = input ? input.value.trim() : "";
    var action = button.getAttribute("data-action");
    if (action === "resolve" && !note) { fail(error.getAttribute("data-note-required")); return; }
    button.disabled = true;
    fetch("/api/v1/alerts/" + row.getAttribute("data-id") + "/" + action, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": token, "Accept": "application/json" },
      body: JSON.stringify(note ? { note: note } : {})
    }).then(function (r) {
      if (r.ok) { location.reload(); return null; }
      return r.json().then(function (p) { fail(error.getAttribute("data-failed") + ": " + (p.detail || r.status)); });
    }).catch(function () {
      fail(error.getAttribute("data-failed"));
    }).then(function () { button.disabled = false; });
  });
})();
