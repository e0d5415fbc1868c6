/* sdlab sweep viewer: reads window.SDLAB_SWEEP (data.js), draws one page of the grid at a time.
   No modules, no fetch, no network: it works from file://. */
(function () {
  "use strict";

  var D = window.SDLAB_SWEEP;
  if (!D) {
    document.getElementById("empty").hidden = false;
    document.getElementById("empty").textContent = "data.js is missing: this folder is not a complete sdlab viewer.";
    return;
  }
  var dims = D.dims, fields = D.fields, cells = D.cells;
  var byCoords = new Map();
  cells.forEach(function (c) { byCoords.set(c.c.join(","), c); });
  var $ = function (id) { return document.getElementById(id); };
  var PAGE_SIZES = [4, 6, 8, 10, 12, 16, 24, 32];
  var CYCLE_MS = 1200;

  // ------------------------------------------------------------------ state (mirrored in the URL hash)
  var maxTw = 1, maxTh = 1;
  cells.forEach(function (c) { if (c.tw) { maxTw = Math.max(maxTw, c.tw); maxTh = Math.max(maxTh, c.th); } });
  var defaultSize = maxTw <= 128 ? maxTw * Math.ceil(128 / maxTw) : Math.min(maxTw, 256);
  function fitPageSize(size) { // the largest page whose columns fit the window (at least 4)
    var fit = Math.floor((window.innerWidth - 200) / (size + 4));
    return PAGE_SIZES.filter(function (n) { return n <= Math.max(4, fit); }).pop();
  }
  var state = {
    view: "grid",
    x: dims.length > 0 ? 0 : -1,
    y: dims.length > 1 ? 1 : -1,
    filt: dims.map(function () { return 0; }),
    field: fields.length && fields[0].kind === "metric" ? fields[0].name : "",
    colour: "none",
    sort: "axis",
    size: Math.min(512, Math.max(48, defaultSize)),
    pageSize: fitPageSize(Math.min(512, Math.max(48, defaultSize))),
    pageX: 0,
    pageY: 0,
    pageR: 0,
  };
  var lastCopied = null;
  var visible = []; // the cells of the page, in reading order (for the large view's prev/next)
  var columns = 1;

  function readHash() {
    var h = new URLSearchParams(location.hash.slice(1));
    var int = function (k, lo, hi) {
      var v = parseInt(h.get(k), 10);
      return isNaN(v) ? null : Math.max(lo, Math.min(hi, v));
    };
    if (h.get("v") === "ranked" || h.get("v") === "grid") state.view = h.get("v");
    var x = int("x", -1, dims.length - 1), y = int("y", -1, dims.length - 1);
    if (x !== null) state.x = x;
    if (y !== null) state.y = y === state.x && y >= 0 ? -1 : y;
    if (h.get("f")) {
      h.get("f").split(".").forEach(function (v, d) {
        var n = parseInt(v, 10);
        if (d < dims.length && !isNaN(n) && n >= -1 && n < dims[d].labels.length) state.filt[d] = n;
      });
    }
    if (h.has("s") && (h.get("s") === "" || fields.some(function (f) { return f.name === h.get("s"); }))) state.field = h.get("s");
    if (["none", "border", "heat"].indexOf(h.get("c")) >= 0) state.colour = h.get("c");
    if (["axis", "asc", "desc"].indexOf(h.get("o")) >= 0) state.sort = h.get("o");
    var z = int("z", 48, 512), p = int("p", 1, 64);
    if (z !== null) state.size = z;
    if (p !== null && PAGE_SIZES.indexOf(p) >= 0) state.pageSize = p;
    ["pageX", "pageY", "pageR"].forEach(function (k, i) {
      var v = int(["px", "py", "pr"][i], 0, 1e6);
      if (v !== null) state[k] = v;
    });
  }

  function writeHash() {
    var h = new URLSearchParams();
    h.set("v", state.view); h.set("x", state.x); h.set("y", state.y); h.set("f", state.filt.join("."));
    h.set("s", state.field); h.set("c", state.colour); h.set("o", state.sort); h.set("z", state.size);
    h.set("p", state.pageSize); h.set("px", state.pageX); h.set("py", state.pageY); h.set("pr", state.pageR);
    try { history.replaceState(null, "", "#" + h.toString()); } catch (e) { /* some file:// contexts refuse */ }
  }

  // ------------------------------------------------------------------ scores and colour
  var ranges = {};
  fields.forEach(function (f) {
    var lo = Infinity, hi = -Infinity;
    cells.forEach(function (c) {
      var v = c.scores[f.name];
      if (typeof v === "number") { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    });
    ranges[f.name] = lo <= hi ? [lo, hi] : null;
  });
  // viridis, 9 stops
  var STOPS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  function colourOf(v) {
    var r = ranges[state.field];
    if (typeof v !== "number" || !r) return null;
    var t = r[1] > r[0] ? (v - r[0]) / (r[1] - r[0]) : 0.5;
    var p = t * (STOPS.length - 1), i = Math.min(STOPS.length - 2, Math.floor(p)), f = p - i;
    var a = STOPS[i], b = STOPS[i + 1];
    return "rgb(" + [0, 1, 2].map(function (k) { return Math.round(a[k] + (b[k] - a[k]) * f); }).join(",") + ")";
  }
  function score(c) { return c && state.field ? c.scores[state.field] : undefined; }
  function fmt(v) {
    if (typeof v !== "number") return v === null || v === undefined ? "n/a" : String(v);
    if (Number.isInteger(v)) return String(v);
    var a = Math.abs(v);
    return a !== 0 && (a < 0.001 || a >= 1e5) ? v.toExponential(3) : String(Math.round(v * 10000) / 10000);
  }

  // ------------------------------------------------------------------ helpers
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (ch) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[ch];
    });
  }
  function cellAt(xv, yv) {
    var key = dims.map(function (_, d) {
      return d === state.x ? xv : d === state.y ? yv : state.filt[d];
    });
    return byCoords.get(key.join(","));
  }
  function labelsOf(c) {
    return dims.map(function (d, k) { return d.labels[c.c[k]]; });
  }
  function mean(list) {
    var s = 0, n = 0;
    list.forEach(function (v) { if (typeof v === "number") { s += v; n++; } });
    return n ? s / n : null;
  }
  function order(indices, scoreOf) {
    if (!state.field || state.sort === "axis") return indices;
    var sign = state.sort === "desc" ? -1 : 1;
    var scored = indices.map(function (i) { return [i, scoreOf(i)]; });
    scored.sort(function (a, b) {
      if (a[1] === null) return b[1] === null ? a[0] - b[0] : 1;
      if (b[1] === null) return -1;
      return sign * (a[1] - b[1]) || a[0] - b[0];
    });
    return scored.map(function (p) { return p[0]; });
  }
  function range(n) { var out = []; for (var i = 0; i < n; i++) out.push(i); return out; }

  // ------------------------------------------------------------------ controls
  function fillControls() {
    document.title = D.title;
    $("title").textContent = D.title;
    var ok = 0, failed = 0, missing = 0;
    cells.forEach(function (c) { if (c.status === "ok") ok++; else if (c.status === "failed") failed++; else missing++; });
    var parts = [cells.length + " cells", ok + " made"];
    if (failed) parts.push(failed + " failed");
    if (missing) parts.push(missing + " not run");
    parts.push(dims.map(function (d) { return d.name + " (" + d.labels.length + ")"; }).join(" \u00d7 ") || "no axes");
    var scored = fields.filter(function (f) { return f.kind === "metric"; }).length;
    if (scored) parts.push(scored + (scored === 1 ? " score" : " scores"));
    parts.push("sdlab " + D.sdlab);
    $("summary").textContent = parts.join(" \u00b7 ");

    ["x-axis", "y-axis"].forEach(function (id) {
      var sel = $(id);
      sel.innerHTML = '<option value="-1">(none)</option>' + dims.map(function (d, i) {
        return '<option value="' + i + '">' + esc(d.name) + "</option>";
      }).join("");
    });
    $("field").innerHTML = '<option value="">(none)</option>' + fields.map(function (f) {
      return '<option value="' + esc(f.name) + '">' + esc(f.name) + (f.kind === "run" ? " (run)" : "") + "</option>";
    }).join("");
    $("page-size").innerHTML = PAGE_SIZES.map(function (n) {
      return '<option value="' + n + '">' + n + "\u00d7" + n + "</option>";
    }).join("");

    $("x-axis").addEventListener("change", function () { setAxis("x", +this.value); });
    $("y-axis").addEventListener("change", function () { setAxis("y", +this.value); });
    $("swap").addEventListener("click", function () { var t = state.x; state.x = state.y; state.y = t; state.pageX = state.pageY = 0; render(); });
    $("field").addEventListener("change", function () { state.field = this.value; render(); });
    $("colour").addEventListener("change", function () { state.colour = this.value; pickField(); render(); });
    $("sort").addEventListener("change", function () { state.sort = this.value; pickField(); state.pageX = state.pageY = state.pageR = 0; render(); });
    $("cell-size").addEventListener("input", function () { state.size = +this.value; render(); });
    $("page-size").addEventListener("change", function () { state.pageSize = +this.value; state.pageX = state.pageY = state.pageR = 0; render(); });
    Array.prototype.forEach.call(document.querySelectorAll(".segmented button"), function (b) {
      b.addEventListener("click", function () { setView(b.getAttribute("data-view")); });
    });
  }
  function pickField() { // colouring or sorting without a score picks the first one
    if (!state.field && fields.length && (state.colour !== "none" || state.sort !== "axis")) state.field = fields[0].name;
  }
  function setAxis(which, d) {
    var other = which === "x" ? "y" : "x";
    if (d >= 0 && state[other] === d) state[other] = state[which]; // taking the other's axis swaps them
    state[which] = d;
    state.pageX = state.pageY = 0;
    render();
  }
  function setView(view) {
    state.view = view;
    if (view === "grid") state.filt = state.filt.map(function (v) { return v < 0 ? 0 : v; });
    else state.filt = state.filt.map(function () { return -1; }); // ranked: the whole sweep, narrowed by filters
    state.pageR = 0;
    render();
  }

  function renderFilters() {
    var box = $("filters");
    var shown = dims.map(function (_, d) { return d; }).filter(function (d) {
      return state.view === "ranked" || (d !== state.x && d !== state.y);
    });
    box.innerHTML = shown.map(function (d) {
      var dim = dims[d], any = state.view === "ranked";
      var opts = (any ? '<option value="-1">(all)</option>' : "") + dim.labels.map(function (l, i) {
        return '<option value="' + i + '">' + esc(l) + "</option>";
      }).join("");
      return '<div class="filter" data-dim="' + d + '"><span class="fname">' + esc(dim.name) + "</span>" +
        '<button type="button" class="step" data-step="-1" title="previous value">&#9664;</button>' +
        '<select aria-label="' + esc(dim.name) + '">' + opts + "</select>" +
        '<button type="button" class="step" data-step="1" title="next value">&#9654;</button>' +
        '<button type="button" class="cycle' + (cycling === d ? " on" : "") + '" title="step through the values (auto-cycle)">' +
        (cycling === d ? "&#10074;&#10074;" : "&#8635;") + "</button>" +
        '<span class="fpos"></span></div>';
    }).join("") || '<span class="muted">every axis is on the grid</span>';
    Array.prototype.forEach.call(box.querySelectorAll(".filter"), function (el) {
      var d = +el.getAttribute("data-dim"), sel = el.querySelector("select");
      sel.value = String(state.filt[d]);
      var n = dims[d].labels.length;
      el.querySelector(".fpos").textContent = state.filt[d] >= 0 ? state.filt[d] + 1 + "/" + n : n + " values";
      sel.addEventListener("change", function () { state.filt[d] = +sel.value; state.pageR = 0; render(); });
      Array.prototype.forEach.call(el.querySelectorAll(".step"), function (b) {
        b.addEventListener("click", function () { stepFilter(d, +b.getAttribute("data-step")); });
      });
      el.querySelector(".cycle").addEventListener("click", function () { toggleCycle(d); });
    });
  }

  function stepFilter(d, delta) {
    var n = dims[d].labels.length, lo = state.view === "ranked" ? -1 : 0, span = n - lo;
    state.filt[d] = ((state.filt[d] - lo + delta + span) % span) + lo;
    state.pageR = 0;
    render();
  }
  var cycling = -1, cycleTimer = null;
  function toggleCycle(d) { // the Infinity Grid's auto-cycle: one axis's values in turn
    clearInterval(cycleTimer);
    cycling = cycling === d ? -1 : d;
    if (cycling >= 0) cycleTimer = setInterval(function () { stepFilter(cycling, 1); }, CYCLE_MS);
    render();
  }

  function renderLegend() {
    var el = $("legend"), r = ranges[state.field];
    if (!state.field || !r) { el.hidden = true; return; }
    el.hidden = false;
    var grad = STOPS.map(function (s, i) { return "rgb(" + s.join(",") + ") " + Math.round(100 * i / (STOPS.length - 1)) + "%"; });
    el.innerHTML = '<span class="lname">' + esc(state.field) + "</span><span>" + fmt(r[0]) + "</span>" +
      '<span class="bar" style="background:linear-gradient(90deg,' + grad.join(",") + ')"></span><span>' + fmt(r[1]) + "</span>";
  }

  function pagerHtml(label, page, per, total, key) {
    if (total <= per) return "";
    var pages = Math.ceil(total / per), first = page * per + 1, last = Math.min(total, (page + 1) * per);
    return '<span class="page" data-key="' + key + '">' + label + " " + first + "\u2013" + last + " of " + total +
      ' <button type="button" data-go="-1" ' + (page === 0 ? "disabled" : "") + ">&#9664;</button>" +
      '<button type="button" data-go="1" ' + (page >= pages - 1 ? "disabled" : "") + ">&#9654;</button></span>";
  }
  function bindPager() {
    Array.prototype.forEach.call($("pager").querySelectorAll(".page button"), function (b) {
      b.addEventListener("click", function () {
        var key = b.parentNode.getAttribute("data-key");
        state[key] += +b.getAttribute("data-go");
        render();
      });
    });
  }

  // ------------------------------------------------------------------ the grid (one page)
  function cellHtml(c) {
    if (!c) return '<div class="cell none" role="gridcell"></div>';
    var v = score(c), col = state.colour !== "none" ? colourOf(v) : null;
    var inner;
    if (c.status === "ok") {
      var px = state.size >= (c.tw || 1) ? " px" : "";
      inner = '<img class="thumb' + px + '" loading="lazy" decoding="async" src="' + esc(c.thumb) + '" width="' + c.tw +
        '" height="' + c.th + '" alt="' + esc(labelsOf(c).join(", ")) + '">' +
        '<button type="button" class="copy" title="copy the A1111 parameters text">A1111</button>';
    } else {
      inner = '<span class="status">' + (c.status === "failed" ? "failed" : "not run") + "</span>";
    }
    if (col && state.colour === "heat") inner += '<span class="heat" style="background:' + col + '"></span>';
    if (col && state.colour === "border") inner += '<span class="ring" style="border-color:' + col + '"></span>';
    if (state.field) {
      var sw = colourOf(v);
      inner += '<span class="badge">' + (sw ? '<i style="background:' + sw + '"></i>' : "") + esc(fmt(v)) + "</span>";
    }
    return '<div class="cell ' + c.status + '" role="gridcell" tabindex="0" data-i="' + c.i + '">' + inner + "</div>";
  }

  function renderGrid() {
    var grid = $("grid"), ps = state.pageSize;
    var xd = dims[state.x], yd = dims[state.y];
    var xs = xd ? range(xd.labels.length) : [null], ys = yd ? range(yd.labels.length) : [null];
    xs = xd ? order(xs, function (x) { return mean(ys.map(function (y) { return score(cellAt(x, y)); })); }) : xs;
    ys = yd ? order(ys, function (y) { return mean(xs.map(function (x) { return score(cellAt(x, y)); })); }) : ys;
    state.pageX = Math.max(0, Math.min(state.pageX, Math.ceil(xs.length / ps) - 1));
    state.pageY = Math.max(0, Math.min(state.pageY, Math.ceil(ys.length / ps) - 1));
    var pxs = xs.slice(state.pageX * ps, (state.pageX + 1) * ps), pys = ys.slice(state.pageY * ps, (state.pageY + 1) * ps);
    var h = Math.round(state.size * maxTh / maxTw);
    grid.style.setProperty("--cell-w", state.size + "px");
    grid.style.setProperty("--cell-h", h + "px");
    grid.style.gridTemplateColumns = "max-content repeat(" + pxs.length + ", var(--cell-w))";
    var html = ['<div class="corner">' + (yd ? '<span class="yname">' + esc(yd.name) + " \u2193</span>" : "") +
      (xd ? '<span class="xname">' + esc(xd.name) + " \u2192</span>" : "") + "</div>"];
    pxs.forEach(function (x) {
      html.push('<div class="colhead" role="columnheader">' + (xd ? esc(xd.labels[x]) : "") + "</div>");
    });
    visible = [];
    pys.forEach(function (y) {
      html.push('<div class="rowhead" role="rowheader">' + (yd ? esc(yd.labels[y]) : "") + "</div>");
      pxs.forEach(function (x) {
        var c = cellAt(x, y);
        if (c) visible.push(c);
        html.push(cellHtml(c));
      });
    });
    columns = pxs.length;
    grid.innerHTML = html.join("");
    $("pager").innerHTML = (xd ? pagerHtml("columns", state.pageX, ps, xs.length, "pageX") : "") +
      (yd ? pagerHtml("rows", state.pageY, ps, ys.length, "pageY") : "");
    bindPager();
    var empty = !visible.length;
    $("empty").hidden = !empty;
    if (empty) $("empty").textContent = "No cell has these values (linked axes move together: pick another value).";
  }

  // ------------------------------------------------------------------ ranked (filtered cells by score)
  function renderRanked() {
    var box = $("ranked"), per = state.pageSize * state.pageSize;
    var chosen = cells.filter(function (c) {
      return state.filt.every(function (v, d) { return v < 0 || c.c[d] === v; });
    });
    var idx = order(range(chosen.length), function (k) { var v = score(chosen[k]); return typeof v === "number" ? v : null; });
    state.pageR = Math.max(0, Math.min(state.pageR, Math.ceil(idx.length / per) - 1));
    var page = idx.slice(state.pageR * per, (state.pageR + 1) * per);
    visible = page.map(function (k) { return chosen[k]; });
    box.style.setProperty("--cell-w", state.size + "px");
    box.style.setProperty("--cell-h", Math.round(state.size * maxTh / maxTw) + "px");
    box.innerHTML = visible.map(function (c, n) {
      var rank = state.pageR * per + n + 1;
      return '<div class="item"><div class="rank">#' + rank + (state.field ? " \u00b7 " + esc(fmt(score(c))) : "") + "</div>" +
        cellHtml(c) + '<div class="caption">' + esc(labelsOf(c).join(" \u00b7 ")) + "</div></div>";
    }).join("");
    columns = Math.max(1, Math.floor((box.clientWidth || 800) / (state.size + 16)));
    $("pager").innerHTML = pagerHtml("cells", state.pageR, per, idx.length, "pageR");
    bindPager();
    $("empty").hidden = visible.length > 0;
    if (!visible.length) $("empty").textContent = "No cell matches these values.";
  }

  function render() {
    if (state.view === "grid") state.filt = state.filt.map(function (v) { return v < 0 ? 0 : v; });
    if (cycling >= 0 && state.view === "grid" && (cycling === state.x || cycling === state.y)) {
      clearInterval(cycleTimer);
      cycling = -1;
    }
    $("x-axis").value = String(state.x);
    $("y-axis").value = String(state.y);
    $("field").value = state.field;
    $("colour").value = state.colour;
    $("sort").value = state.sort;
    $("cell-size").value = String(state.size);
    $("cell-size-label").textContent = state.size + "px";
    $("page-size").value = String(state.pageSize);
    document.body.classList.toggle("ranked-view", state.view === "ranked");
    Array.prototype.forEach.call(document.querySelectorAll(".segmented button"), function (b) {
      b.classList.toggle("active", b.getAttribute("data-view") === state.view);
      b.setAttribute("aria-pressed", b.getAttribute("data-view") === state.view ? "true" : "false");
    });
    $("grid").hidden = state.view !== "grid";
    $("ranked").hidden = state.view !== "ranked";
    renderFilters();
    renderLegend();
    hideTooltip();
    $(state.view === "grid" ? "ranked" : "grid").innerHTML = ""; // only the page shown is in the DOM
    if (state.view === "grid") renderGrid(); else renderRanked();
    writeHash();
  }

  // ------------------------------------------------------------------ hover, copy, large view
  function paramRows(c, full) {
    var rows = full ? dims.map(function (d, k) { return [d.name, d.labels[c.c[k]], "axis"]; }) : [];
    var p = c.params || {};
    Object.keys(p).forEach(function (k) {
      var v = p[k];
      if (!full && (k === "negative_prompt" && !v)) return;
      rows.push([k, typeof v === "object" ? JSON.stringify(v) : v]);
    });
    fields.forEach(function (f) { rows.push([f.name, fmt(c.scores[f.name]), "score"]); });
    Object.keys(c.score_errors || {}).forEach(function (k) { rows.push([k, c.score_errors[k], "error"]); });
    if (c.status !== "ok") rows.push(["status", c.status === "failed" ? "failed: " + (c.error || "") : "not run", "error"]);
    return rows;
  }
  function kvHtml(rows) {
    return rows.map(function (r) {
      return '<tr class="' + (r[2] || "") + '"><th>' + esc(r[0]) + "</th><td>" + esc(r[1]) + "</td></tr>";
    }).join("");
  }

  var tip = $("tooltip");
  function showTooltip(c, ev) {
    tip.innerHTML = '<div class="tip-title">' + esc(labelsOf(c).join(" \u00b7 ") || "cell " + c.i) + "</div>" +
      '<table class="kv">' + kvHtml(paramRows(c, false)) + "</table>" +
      (c.status === "ok" ? '<div class="tip-hint">click: large view and record \u00b7 A1111: copy its text</div>' : "");
    tip.hidden = false;
    moveTooltip(ev);
  }
  function moveTooltip(ev) {
    var pad = 14, w = tip.offsetWidth, h = tip.offsetHeight;
    var x = ev.clientX + pad, y = ev.clientY + pad;
    if (x + w > window.innerWidth - 4) x = Math.max(4, ev.clientX - w - pad);
    if (y + h > window.innerHeight - 4) y = Math.max(4, ev.clientY - h - pad);
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  function hideTooltip() { tip.hidden = true; }

  function cellOf(el) {
    var node = el && el.closest ? el.closest(".cell[data-i]") : null;
    return node ? cells[byIndex[node.getAttribute("data-i")]] : null;
  }
  var byIndex = {};
  cells.forEach(function (c, k) { byIndex[c.i] = k; });

  function toast(text) {
    var t = $("toast");
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(function () { t.hidden = true; }, 1800);
  }
  function copyText(text) {
    lastCopied = text;
    var done = function () { toast("copied the A1111 parameters"); };
    var fallback = function () {
      var ta = document.createElement("textarea");
      ta.value = text;
      ta.style.position = "fixed";
      ta.style.opacity = "0";
      document.body.appendChild(ta);
      ta.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      document.body.removeChild(ta);
      if (ok) done(); else toast("select the text in the large view and copy it");
    };
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done, fallback);
    else fallback();
  }

  function onStage(ev) {
    var c = cellOf(ev.target);
    if (!c) return;
    if (ev.target.classList.contains("copy")) {
      ev.stopPropagation();
      copyText(c.a1111 || "");
      return;
    }
    openDetail(c);
  }
  ["grid", "ranked"].forEach(function (id) {
    var el = $(id);
    el.addEventListener("click", onStage);
    el.addEventListener("keydown", function (ev) { if (ev.key === "Enter") onStage(ev); });
    el.addEventListener("mouseover", function (ev) {
      var c = cellOf(ev.target);
      if (c) showTooltip(c, ev); else hideTooltip();
    });
    el.addEventListener("mousemove", function (ev) { if (!tip.hidden) moveTooltip(ev); });
    el.addEventListener("mouseleave", hideTooltip);
  });

  var current = null;
  function openDetail(c) {
    current = c;
    hideTooltip();
    $("detail-title").textContent = labelsOf(c).join(" \u00b7 ") || "cell " + c.i;
    var img = $("detail-image"), src = c.image || c.thumb;
    if (src) {
      var w = c.image ? c.w : c.tw, h = c.image ? c.h : c.th;
      var room = Math.min(window.innerWidth * 0.55, window.innerHeight * 0.75);
      var scale = Math.max(w, h) < room ? Math.max(1, Math.floor(room / Math.max(w, h))) : room / Math.max(w, h);
      img.src = src;
      img.width = Math.round(w * scale);
      img.height = Math.round(h * scale);
      img.classList.toggle("px", scale >= 1);
      img.hidden = false;
      $("detail-open").href = src;
      $("detail-open").hidden = false;
      $("detail-caption").textContent = w + "\u00d7" + h + (scale !== 1 ? " shown at " + (Math.round(scale * 100) / 100) + "\u00d7" : "");
    } else {
      img.hidden = true;
      img.removeAttribute("src");
      $("detail-open").hidden = true;
      $("detail-caption").textContent = c.status === "failed" ? "failed: " + (c.error || "") : "not run yet";
    }
    $("detail-params").innerHTML = kvHtml(paramRows(c, true));
    $("detail-a1111").value = c.a1111 || "";
    $("detail-copy").disabled = !c.a1111;
    $("detail-record").textContent = JSON.stringify(c.record || {}, null, 2);
    $("detail").hidden = false;
    $("detail-close").focus();
  }
  function closeDetail() { $("detail").hidden = true; current = null; }
  function step(delta) {
    if (!current) return;
    var k = visible.indexOf(current);
    if (k < 0) return;
    var n = k + delta;
    if (n >= 0 && n < visible.length) openDetail(visible[n]);
  }
  $("detail-close").addEventListener("click", closeDetail);
  $("detail-prev").addEventListener("click", function () { step(-1); });
  $("detail-next").addEventListener("click", function () { step(1); });
  $("detail-copy").addEventListener("click", function () { if (current) copyText(current.a1111 || ""); });
  $("detail").addEventListener("click", function (ev) { if (ev.target === $("detail")) closeDetail(); });
  document.addEventListener("keydown", function (ev) {
    if ($("detail").hidden) return;
    if (ev.key === "Escape") closeDetail();
    else if (ev.key === "ArrowLeft") step(-1);
    else if (ev.key === "ArrowRight") step(1);
    else if (ev.key === "ArrowUp") step(-columns);
    else if (ev.key === "ArrowDown") step(columns);
  });

  // ------------------------------------------------------------------ start
  readHash();
  fillControls();
  render();
  window.sdlabViewer = {
    get state() { return JSON.parse(JSON.stringify(state)); },
    get lastCopied() { return lastCopied; },
    get visibleCells() { return visible.map(function (c) { return c.i; }); },
  };
  document.body.setAttribute("data-ready", "true");
})();
