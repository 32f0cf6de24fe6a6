// The console's only script (same origin, no inline code: the CSP forbids it).
// 1. Click (or Enter) on a transcript word seeks the player; the word under the playhead is
//    highlighted. Delegated on #transcript, so words added by the live poll work too.
(function () {
  var player = document.getElementById("player");
  var box = document.getElementById("transcript");
  if (!player || !box) return;
  function seek(el) {
    if (el && el.classList.contains("word")) player.currentTime = parseFloat(el.dataset.start);
  }
  box.addEventListener("click", function (e) { seek(e.target); });
  box.addEventListener("keydown", function (e) { if (e.key === "Enter") seek(e.target); });
  player.addEventListener("timeupdate", function () {
    var t = player.currentTime, cur = null;
    box.querySelectorAll(".word").forEach(function (w) {
      if (parseFloat(w.dataset.start) <= t) cur = w;
      w.classList.remove("now");
    });
    if (cur) cur.classList.add("now");
  });
})();

var LIVE_STATUSES = ["pending", "streaming", "uploaded", "stitching"];
var LIVE_TRANSCRIPTS = ["queued", "processing"];
function inFlight(status, transcript) {
  return LIVE_STATUSES.indexOf(status) >= 0 || LIVE_TRANSCRIPTS.indexOf(transcript) >= 0;
}
function getJSON(url, ok) {
  fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
    .then(function (r) { return r.ok ? r.json() : null; })
    .then(function (body) { if (body) ok(body); })
    .catch(function () { /* next poll */ });
}

// 2. Recordings list: rows still in flight (recording or transcribing) update every 3 s
//    from /console/live/recordings; values are set as text.
(function () {
  var table = document.getElementById("recordings");
  if (!table) return;
  function live() {
    return Array.prototype.filter.call(table.querySelectorAll("tr[data-id]"), function (tr) {
      return inFlight(tr.dataset.status, tr.dataset.transcript);
    });
  }
  function poll() {
    var rows = live();
    if (!rows.length) return;
    var q = rows.map(function (tr) { return "id=" + encodeURIComponent(tr.dataset.id); });
    getJSON("/console/live/recordings?" + q.join("&"), function (body) {
      body.data.forEach(function (r) {
        var tr = table.querySelector('tr[data-id="' + CSS.escape(r.id) + '"]');
        if (!tr) return;
        tr.dataset.status = r.status;
        tr.dataset.transcript = r.transcription_status;
        ["status", "duration", "chunks_received", "transcription_status"].forEach(function (k) {
          var cell = tr.querySelector('[data-col="' + k + '"]');
          if (cell) cell.textContent = r[k] === null ? "" : String(r[k]);
        });
        var st = tr.querySelector('[data-col="status"]');
        if (st) st.className = "status " + r.status;
      });
      setTimeout(poll, 3000);
    });
  }
  setTimeout(poll, 3000);
})();

// 3. A recording still in flight: every 2 s its status, chunk count and the partial (live)
//    transcript update from /console/live/recordings/{id}; once its status changes or its
//    transcript ends, the page reloads once (player, downloads, timeline).
(function () {
  var rec = document.getElementById("recording");
  if (!rec || rec.dataset.live !== "1") return;
  var box = document.getElementById("transcript");
  function text(id, value) {
    var el = document.getElementById(id);
    if (el) el.textContent = value === null || value === undefined ? "" : String(value);
  }
  function render(words) {
    if (!box) return;
    var frag = document.createDocumentFragment();
    words.forEach(function (w) {
      var span = document.createElement("span");
      span.className = "word" + (w.cls ? " " + w.cls : "");
      span.tabIndex = 0;
      span.dataset.start = String(w.start);
      span.dataset.speaker = w.speaker || "";
      span.textContent = w.text;
      frag.appendChild(span);
      frag.appendChild(document.createTextNode(" "));
    });
    box.replaceChildren(frag);
  }
  function poll() {
    getJSON("/console/live/recordings/" + encodeURIComponent(rec.dataset.id), function (r) {
      text("rec-status", r.status);
      text("rec-chunks", r.chunks_received);
      text("rec-transcript-status", r.transcription_status);
      text("txn-status", r.transcript_status ? "(" + r.transcript_status + ")" : "");
      if (r.words.length && box && box.children.length !== r.words.length) render(r.words);
      if (r.status !== rec.dataset.status || !inFlight(r.status, r.transcript_status)) {
        location.reload();
        return;
      }
      setTimeout(poll, 2000);
    });
  }
  setTimeout(poll, 2000);
})();
