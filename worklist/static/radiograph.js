// The study page's radiograph viewer: window/level, zoom and pan on the full-resolution
// image (GET /images/{sop}.u16, see worklist/radiograph.py:encode_full for the format),
// done on the modality values in the browser. Served same-origin inside /static/viewer.js
// (CSP: script-src 'self', no inline script, no eval). Without script, or until the
// full-resolution image has loaded, the page shows the 512 px PNG.
//
// Mouse: drag = window/level (right: wider, down: higher level), right-drag or
// shift+drag = pan, wheel = zoom around the cursor, double-click = reset.
// Keys (not while typing in a field): r = reset, i = invert.
"use strict";
(function () {
  var MAGIC = [0x43, 0x58, 0x52, 0x55, 0x31, 0x36, 0x00, 0x01]; // "CXRU16\0\1"
  var MIN_ZOOM = 0.25;
  var MAX_ZOOM = 40;
  var viewers = [];
  var active = null;

  function parse(buffer) {
    var bytes = new Uint8Array(buffer);
    for (var i = 0; i < MAGIC.length; i++) {
      if (bytes[i] !== MAGIC[i]) { throw new Error("not a full-resolution radiograph"); }
    }
    var length = new DataView(buffer).getUint32(MAGIC.length, true);
    var start = MAGIC.length + 4;
    var header = JSON.parse(new TextDecoder().decode(bytes.subarray(start, start + length)));
    var count = header.rows * header.columns;
    var offset = start + length;
    if (buffer.byteLength - offset !== count * 2) { throw new Error("truncated radiograph"); }
    return { header: header, stored: new Uint16Array(buffer, offset, count) };
  }

  function Viewer(figure, image) {
    var h = image.header;
    this.figure = figure;
    this.rows = h.rows;
    this.columns = h.columns;
    this.slope = h.slope;
    this.intercept = h.intercept;
    this.stored = image.stored;
    this.storedMin = h.min;
    this.storedMax = h.max;
    this.defaults = { center: h.window.center, width: h.window.width, invert: !!h.invert };
    this.range = Math.max(1, (h.max - h.min) * h.slope);
    this.heat = figure.parentNode.querySelector(".heat img");
    this.full = document.createElement("canvas"); // the windowed image, one pixel per pixel
    this.full.width = this.columns;
    this.full.height = this.rows;
    this.pixels = this.full.getContext("2d").createImageData(this.columns, this.rows);
    this.canvas = document.createElement("canvas");
    this.canvas.className = "radiograph";
    this.canvas.tabIndex = 0;
    this.canvas.setAttribute("role", "img");
    this.canvas.setAttribute("aria-label", figure.querySelector("img").alt + " (full resolution)");
    this.readout = document.createElement("div");
    this.readout.className = "wl-readout";
    this.bar = this.toolbar();
    var img = figure.querySelector("img");
    figure.insertBefore(this.canvas, img);
    figure.insertBefore(this.bar, img.nextSibling);
    img.hidden = true;
    figure.classList.add("live");
    this.pending = false;
    this.reset();
    this.listen();
  }

  Viewer.prototype.toolbar = function () {
    var bar = document.createElement("div");
    bar.className = "wl-bar";
    var self = this;
    function button(text, cls, title, action) {
      var b = document.createElement("button");
      b.type = "button";
      b.className = "secondary " + cls;
      b.textContent = text;
      b.title = title;
      b.addEventListener("click", function () { action.call(self); });
      bar.appendChild(b);
    }
    bar.appendChild(this.readout);
    button("Reset (r)", "wl-reset", "Default window, whole image", this.reset);
    button("Invert (i)", "wl-invert", "Swap black and white", this.toggleInvert);
    var hint = document.createElement("span");
    hint.className = "wl-hint";
    hint.textContent = "drag: window/level · right- or shift-drag: pan · wheel: zoom";
    bar.appendChild(hint);
    return bar;
  };

  Viewer.prototype.reset = function () {
    this.center = this.defaults.center;
    this.width = this.defaults.width;
    this.invert = this.defaults.invert;
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
    this.windowed = null;
    this.draw();
  };

  Viewer.prototype.toggleInvert = function () {
    this.invert = !this.invert;
    this.windowed = null;
    this.draw();
  };

  // DICOM PS3.3 C.11.2.1.2.1 linear window over the modality values, as a table indexed
  // by the stored value, then one lookup per pixel into the offscreen canvas.
  Viewer.prototype.window = function () {
    var lut = new Uint8ClampedArray(this.storedMax + 1);
    var c = this.center - 0.5;
    var w = Math.max(this.width, 1) - 1;
    for (var s = this.storedMin; s <= this.storedMax; s++) {
      var x = s * this.slope + this.intercept;
      var y;
      if (w <= 0) { y = x <= c ? 0 : 255; }
      else if (x <= c - w / 2) { y = 0; }
      else if (x > c + w / 2) { y = 255; }
      else { y = ((x - c) / w + 0.5) * 255; }
      lut[s] = this.invert ? 255 - y : y;
    }
    var out = this.pixels.data;
    var stored = this.stored;
    for (var i = 0, j = 0, n = stored.length; i < n; i++, j += 4) {
      var v = lut[stored[i]];
      out[j] = v; out[j + 1] = v; out[j + 2] = v; out[j + 3] = 255;
    }
    this.full.getContext("2d").putImageData(this.pixels, 0, 0);
    this.windowed = [this.center, this.width, this.invert];
  };

  Viewer.prototype.fit = function () {
    return this.canvas.clientWidth / this.columns;
  };

  Viewer.prototype.draw = function () {
    if (this.pending) { return; }
    this.pending = true;
    var self = this;
    window.requestAnimationFrame(function () { self.pending = false; self.paint(); });
  };

  Viewer.prototype.paint = function () {
    var cssWidth = this.figure.clientWidth;
    var cssHeight = cssWidth * this.rows / this.columns;
    var ratio = window.devicePixelRatio || 1;
    this.canvas.style.height = cssHeight + "px";
    var pxWidth = Math.max(1, Math.round(cssWidth * ratio));
    var pxHeight = Math.max(1, Math.round(cssHeight * ratio));
    if (this.canvas.width !== pxWidth) { this.canvas.width = pxWidth; }
    if (this.canvas.height !== pxHeight) { this.canvas.height = pxHeight; }
    var w = this.windowed;
    if (!w || w[0] !== this.center || w[1] !== this.width || w[2] !== this.invert) {
      this.window();
    }
    var ctx = this.canvas.getContext("2d");
    var scale = (cssWidth / this.columns) * this.zoom * ratio;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, pxWidth, pxHeight);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.setTransform(scale, 0, 0, scale, this.panX * ratio, this.panY * ratio);
    ctx.drawImage(this.full, 0, 0);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    if (this.heat) {
      this.heat.style.transformOrigin = "0 0";
      this.heat.style.transform =
        "translate(" + this.panX + "px," + this.panY + "px) scale(" + this.zoom + ")";
    }
    var d = this.figure.dataset;
    d.center = String(this.center);
    d.width = String(this.width);
    d.zoom = String(this.zoom);
    d.panX = String(this.panX);
    d.panY = String(this.panY);
    d.invert = String(this.invert);
    this.readout.textContent = "W " + Math.round(this.width) + " L " + Math.round(this.center) +
      " · zoom " + Math.round(this.zoom * 100) + "%" + (this.invert ? " · inverted" : "");
  };

  Viewer.prototype.zoomAt = function (x, y, factor) {
    var zoom = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, this.zoom * factor));
    var f = zoom / this.zoom;
    this.panX = x - (x - this.panX) * f;
    this.panY = y - (y - this.panY) * f;
    this.zoom = zoom;
    this.draw();
  };

  Viewer.prototype.listen = function () {
    var self = this;
    var canvas = this.canvas;
    var drag = null;
    canvas.addEventListener("contextmenu", function (e) { e.preventDefault(); });
    canvas.addEventListener("pointerdown", function (e) {
      active = self;
      canvas.focus({ preventScroll: true });
      var pan = e.button === 2 || e.button === 1 || e.shiftKey;
      drag = { pan: pan, x: e.clientX, y: e.clientY, id: e.pointerId };
      canvas.setPointerCapture(e.pointerId);
      e.preventDefault();
    });
    canvas.addEventListener("pointermove", function (e) {
      if (!drag || drag.id !== e.pointerId) { return; }
      var dx = e.clientX - drag.x;
      var dy = e.clientY - drag.y;
      drag.x = e.clientX;
      drag.y = e.clientY;
      if (drag.pan) {
        self.panX += dx;
        self.panY += dy;
      } else {
        var step = Math.max(self.range / 512, self.slope);
        self.width = Math.max(1, self.width + dx * step);
        self.center += dy * step;
      }
      self.draw();
    });
    function end(e) {
      if (drag && drag.id === e.pointerId) { drag = null; }
    }
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("wheel", function (e) {
      e.preventDefault();
      active = self;
      var box = canvas.getBoundingClientRect();
      self.zoomAt(e.clientX - box.left, e.clientY - box.top, Math.exp(-e.deltaY / 500));
    }, { passive: false });
    canvas.addEventListener("dblclick", function () { self.reset(); });
    canvas.addEventListener("pointerenter", function () { active = self; });
    if (window.ResizeObserver) { // side by side <-> overlay changes the figure's width
      new ResizeObserver(function () { self.draw(); }).observe(this.figure);
    } else {
      window.addEventListener("resize", function () { self.draw(); });
    }
  };

  function typing(target) {
    if (!target || !target.tagName) { return false; }
    var tag = target.tagName.toLowerCase();
    return tag === "input" || tag === "textarea" || tag === "select" || target.isContentEditable;
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e.target) || viewers.length === 0) { return; }
    var viewer = active || viewers[0];
    if (e.key === "r" || e.key === "R") { viewer.reset(); e.preventDefault(); }
    else if (e.key === "i" || e.key === "I") { viewer.toggleInvert(); e.preventDefault(); }
  });

  function load(figure) {
    figure.dataset.state = "loading";
    fetch(figure.dataset.full, { credentials: "same-origin" }).then(function (response) {
      if (!response.ok) {
        return response.json().then(function (body) {
          throw new Error(body && body.detail ? body.detail : "HTTP " + response.status);
        }, function () { throw new Error("HTTP " + response.status); });
      }
      return response.arrayBuffer();
    }).then(function (buffer) {
      var image = parse(buffer);
      var viewer = new Viewer(figure, image);
      figure.dataset.naturalWidth = String(image.header.columns);
      figure.dataset.naturalHeight = String(image.header.rows);
      figure.dataset.state = "ready";
      viewers.push(viewer);
    }).catch(function (err) {
      figure.dataset.state = "error";
      var note = document.createElement("p");
      note.className = "wl-error";
      note.textContent = "Full resolution unavailable (" + err.message + "): showing 512 px.";
      figure.appendChild(note);
    });
  }

  var figures = document.querySelectorAll("figure.plain[data-full]");
  for (var i = 0; i < figures.length; i++) { load(figures[i]); }
})();
