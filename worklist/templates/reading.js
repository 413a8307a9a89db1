"use strict";
/* The reading tools, served same-origin as /static/reading.js (the CSP allows no inline
   script). Every page works without it.

   Study page: an unread study (or one's own claim) is claimed at once with a POST to
   its claim form's action (header X-CSRF-Token; the page itself, a GET, changes nothing),
   and the status line says the answer; without script the form's Claim button does it.
   Keys 1/2/3 choose a finding, s saves, n opens the next unread study,
   u releases (none of them while typing in a text field). The typed answer (finding and
   note) is kept as a draft in sessionStorage under "cxr-draft:<user>|<study UID>", so it
   survives a session expiry and the sign-in that follows (which returns to the study);
   it is removed once the server confirms the save (?saved=<UID> on the next page), on
   release and on sign-out.

   Worklist page: n opens the next unread study; the list refreshes itself every
   data-refresh-s seconds with the header "X-CXR-Background: refresh", which the server
   does not count as activity for the idle timeout. A likely positive study that was not
   on the page before is announced: "(N) " in the title, a polite live-region message and,
   when switched on (off by default, remembered in localStorage), a short tone. */
(function () {
  var DRAFT_PREFIX = "cxr-draft:";
  var NOT_TEXT = ["checkbox", "radio", "button", "submit", "reset", "range", "color",
    "file", "image", "hidden"];

  function storage(kind) {
    try { return window[kind]; } catch (e) { return null; }
  }
  var drafts = storage("sessionStorage");

  function typing(target) {
    if (!target || !target.tagName) { return false; }
    if (target.isContentEditable) { return true; }
    var tag = target.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT") { return true; }
    if (tag === "INPUT") {
      return NOT_TEXT.indexOf(String(target.type || "text").toLowerCase()) < 0;
    }
    return false;
  }

  function onKeys(handlers) {
    document.addEventListener("keydown", function (event) {
      if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) { return; }
      if (event.isComposing || typing(event.target)) { return; }
      var handler = handlers[event.key];
      if (handler && handler() !== false) { event.preventDefault(); }
    });
  }

  function forgetDrafts(suffix) {
    if (!drafts) { return; }
    for (var i = drafts.length - 1; i >= 0; i--) {
      var key = drafts.key(i);
      if (key && key.indexOf(DRAFT_PREFIX) === 0 &&
          (suffix === null || key.slice(-suffix.length) === suffix)) {
        drafts.removeItem(key);
      }
    }
  }

  // a save the server confirmed: its draft is no longer needed
  var saved = new URLSearchParams(window.location.search).get("saved");
  if (saved) { forgetDrafts("|" + saved); }
  var signOut = document.querySelector('form[action="/sign-out"]');
  if (signOut) { signOut.addEventListener("submit", function () { forgetDrafts(null); }); }

  function go(link) {
    if (!link) { return false; }
    window.location.assign(link.href);
    return true;
  }

  // ------------------------------------------------------------------ study page
  function claimStudy(claim) {
    var token = claim.querySelector("input[name=csrf_token]");
    var status = document.getElementById("claim-status");
    fetch(claim.getAttribute("action"), {
      method: "POST",
      headers: { "X-CSRF-Token": token ? token.value : "", "Accept": "application/json" },
      credentials: "same-origin",
      cache: "no-store"
    }).then(function (resp) {
      return resp.headers.get("content-type") === "application/json" ? resp.json() : null;
    }).then(function (data) {
      if (!data || !status) { return; }
      status.textContent = data.message || "";
      if (data.claimed) {
        var release = document.getElementById("release-form");
        if (release) { release.hidden = false; }
      } else {
        status.classList.add("warn");
      }
    }).catch(function () { /* offline: the Claim button still works */ });
  }
  var claimForm = document.getElementById("claim-form");
  if (claimForm) { claimStudy(claimForm); }

  function studyPage(form) {
    var key = DRAFT_PREFIX + form.getAttribute("data-draft-key");
    var note = form.querySelector("textarea[name=note]");
    var status = document.getElementById("draft-note");

    function current() {
      var checked = form.querySelector("input[name=finding]:checked");
      return { finding: checked ? checked.value : "", note: note ? note.value : "" };
    }
    function keep() {
      if (!drafts) { return; }
      var d = current();
      if (!d.finding && !d.note) { drafts.removeItem(key); return; }
      drafts.setItem(key, JSON.stringify(d));
    }
    function restore() {
      var raw = drafts ? drafts.getItem(key) : null;
      if (!raw) { return; }
      var d;
      try { d = JSON.parse(raw); } catch (e) { drafts.removeItem(key); return; }
      var restored = false;
      if (d.finding && !form.querySelector("input[name=finding]:checked")) {
        var radios = form.querySelectorAll("input[name=finding]");
        for (var i = 0; i < radios.length; i++) {
          if (radios[i].value === d.finding) { radios[i].checked = true; restored = true; }
        }
      }
      if (d.note && note && !note.value) { note.value = d.note; restored = true; }
      if (restored && status) {
        status.classList.add("notice", "warn");
        status.textContent = "Your unsaved answer was restored: check it, then save.";
      }
    }
    restore();
    form.addEventListener("input", keep);
    form.addEventListener("change", keep);

    function choose(n) {
      var radio = form.querySelector('input[name=finding][data-key="' + n + '"]');
      if (!radio) { return false; }
      radio.checked = true;
      radio.focus();
      keep();
      return true;
    }
    var release = document.getElementById("release-form");
    if (release) { release.addEventListener("submit", function () { drafts && drafts.removeItem(key); }); }
    return {
      "1": function () { return choose(1); },
      "2": function () { return choose(2); },
      "3": function () { return choose(3); },
      "s": function () {
        if (form.requestSubmit) { form.requestSubmit(); } else { form.submit(); }
        return true;
      },
      "u": function () {
        if (!release || release.hidden) { return false; }
        if (release.requestSubmit) { release.requestSubmit(); } else { release.submit(); }
        return true;
      }
    };
  }

  var form = document.getElementById("answer-form");
  var nextStudy = document.getElementById("next-study");
  if (form || nextStudy) {
    var keys = form ? studyPage(form) : {};
    keys.n = function () { return go(nextStudy); };
    onKeys(keys);
  }

  // ------------------------------------------------------------------ worklist page
  function tone() {
    try {
      var Context = window.AudioContext || window.webkitAudioContext;
      var ctx = new Context();
      var osc = ctx.createOscillator();
      var gain = ctx.createGain();
      osc.frequency.value = 880;
      gain.gain.value = 0.08;
      osc.connect(gain);
      gain.connect(ctx.destination);
      osc.onended = function () { ctx.close(); };
      osc.start();
      osc.stop(ctx.currentTime + 0.25);
    } catch (e) { /* no audio: the title and the message still say it */ }
  }

  function worklistPage(body) {
    var seconds = Number(body.getAttribute("data-refresh-s")) || 30;
    var announce = body.getAttribute("data-announce") === "1";
    var live = document.getElementById("announce");
    var note = document.getElementById("refresh-note");
    var sound = document.getElementById("sound-toggle");
    var prefs = storage("localStorage");
    var baseTitle = document.title;
    var seen = {};
    var fresh = {};
    var count = 0;
    var busy = false;

    if (note) { note.hidden = false; }
    if (sound) {
      sound.checked = !!prefs && prefs.getItem("cxr-sound") === "on";
      sound.addEventListener("change", function () {
        if (prefs) { prefs.setItem("cxr-sound", sound.checked ? "on" : "off"); }
      });
    }
    function flaggedRows() { return body.querySelectorAll("tr.flagged[data-study]"); }
    var initial = flaggedRows();
    for (var i = 0; i < initial.length; i++) { seen[initial[i].getAttribute("data-study")] = true; }

    function announceNew() {
      var rows = flaggedRows();
      var added = [];
      for (var j = 0; j < rows.length; j++) {
        var uid = rows[j].getAttribute("data-study");
        if (!seen[uid]) {
          seen[uid] = true;
          fresh[uid] = true;
          var link = rows[j].querySelector("a.study");
          added.push(link ? link.textContent : uid);
        }
        if (fresh[uid]) { rows[j].classList.add("new"); }
      }
      if (!added.length) { return; }
      count += added.length;
      document.title = "(" + count + ") " + baseTitle;
      if (live) {
        live.classList.add("notice");
        live.textContent = (added.length === 1 ? "New likely positive study: " :
          added.length + " new likely positive studies: ") + added.join(", ");
      }
      if (sound && sound.checked) { tone(); }
    }

    function refresh() {
      if (busy) { return; }
      busy = true;
      fetch(window.location.href, {
        headers: { "X-CXR-Background": "refresh", "Accept": "text/html" },
        credentials: "same-origin",
        cache: "no-store"
      }).then(function (resp) {
        if (resp.redirected && new URL(resp.url).pathname === "/sign-in") {
          window.location.reload(); // the session ended: show the sign-in, back here after
          return null;
        }
        return resp.ok ? resp.text() : null;
      }).then(function (text) {
        if (text === null) { return; }
        var doc = new DOMParser().parseFromString(text, "text/html");
        var update = doc.getElementById("worklist-body");
        if (!update) { return; }
        var nodes = [];
        for (var k = 0; k < update.childNodes.length; k++) {
          nodes.push(document.importNode(update.childNodes[k], true));
        }
        body.replaceChildren.apply(body, nodes);
        if (announce) { announceNew(); }
      }).catch(function () { /* offline for a moment: try again next time */ })
        .then(function () { busy = false; });
    }
    window.setInterval(refresh, seconds * 1000);
  }

  var list = document.getElementById("worklist-body");
  if (list) {
    worklistPage(list);
    onKeys({ "n": function () { return go(document.getElementById("next-unread")); } });
  }
})();
