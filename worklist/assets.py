"""The one script the pages use, served same-origin as ``/static/viewer.js`` (the CSP
allows ``script-src 'self'`` and no inline script). It switches the study page's image
viewer between side by side and overlay, shows or hides the heatmap and sets its opacity;
without it the page shows both images side by side. Then ``static/radiograph.js``: the
radiograph's window/level, zoom and pan at full resolution (without it, the 512 px PNG)."""

from __future__ import annotations

from importlib.resources import files

HEATMAP_JS = """\
"use strict";
(function () {
  function setup(viewer) {
    var controls = viewer.querySelector(".controls");
    var heat = viewer.querySelector(".heat img");
    if (!controls || !heat) { return; }
    controls.hidden = false;
    var modes = viewer.querySelectorAll("input.mode");
    var show = viewer.querySelector("input.show-heat");
    var opacity = viewer.querySelector("input.opacity");
    var label = viewer.querySelector(".opacity-value");
    function apply() {
      var overlay = viewer.querySelector("input.mode:checked").value === "overlay";
      viewer.classList.toggle("overlay", overlay);
      viewer.classList.toggle("side", !overlay);
      viewer.classList.toggle("heat-hidden", !show.checked);
      var value = Number(opacity.value) / 100;
      heat.style.opacity = overlay ? String(value) : "1";
      opacity.disabled = !overlay || !show.checked;
      label.textContent = Math.round(value * 100) + "%";
    }
    for (var i = 0; i < modes.length; i++) { modes[i].addEventListener("change", apply); }
    show.addEventListener("change", apply);
    opacity.addEventListener("input", apply);
    apply();
  }
  var viewers = document.querySelectorAll(".viewer");
  for (var i = 0; i < viewers.length; i++) { setup(viewers[i]); }
})();
"""

RADIOGRAPH_JS = (files("worklist") / "static" / "radiograph.js").read_text(encoding="utf-8")

VIEWER_JS = HEATMAP_JS + RADIOGRAPH_JS
