// Tiny progressive enhancement for the dashboard: re-fetch the page every two minutes while it is
// visible, so that device health and alerts stay current. Charts are inline SVG drawn by the server.
(function () {
  var period = 120000;
  setInterval(function () { if (!document.hidden) { location.reload(); } }, period);
})();
