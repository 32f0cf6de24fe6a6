// Click (or Enter) on a transcript word seeks the player; the word under the playhead is highlighted.
(function () {
  var player = document.getElementById("player");
  var words = Array.prototype.slice.call(document.querySelectorAll(".word"));
  if (!player || !words.length) return;
  function seek(el) { player.currentTime = parseFloat(el.dataset.start); }
  words.forEach(function (w) {
    w.addEventListener("click", function () { seek(w); });
    w.addEventListener("keydown", function (e) { if (e.key === "Enter") seek(w); });
  });
  player.addEventListener("timeupdate", function () {
    var t = player.currentTime, cur = null;
    words.forEach(function (w) { if (parseFloat(w.dataset.start) <= t) cur = w; w.classList.remove("now"); });
    if (cur) cur.classList.add("now");
  });
})();
// While a shown recording is still streaming, refresh the page every 5 s (status, chunk
// count and the partial transcript update live); the filters and page stay as they are.
(function () {
  if (document.querySelector('[data-status="streaming"]')) {
    setTimeout(function () { location.reload(); }, 5000);
  }
})();
