// The accessibility audit test_web_a11y_browser.py runs in each page (an arrow function:
// page.evaluate returns the list of problems found).
() => {
  const problems = [];
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    const s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== "hidden" && s.display !== "none"
      && !el.closest("[aria-hidden=true], .modal:not(.show), .visually-hidden, .d-none");
  };
  const where = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
    + (el.className && typeof el.className === "string" ? "." + el.className.split(" ")[0] : "");
  const named = (el) => (el.getAttribute("aria-label") || "").trim()
    || (el.getAttribute("aria-labelledby") && document.getElementById(el.getAttribute("aria-labelledby")))
    || (el.labels && el.labels.length) || (el.getAttribute("title") || "").trim()
    || (el.textContent || "").trim();
  document.querySelectorAll("input, select, textarea").forEach((el) => {
    if (el.type === "hidden" || !visible(el)) return;
    const ok = (el.labels && el.labels.length) || el.getAttribute("aria-label")
      || el.getAttribute("aria-labelledby");
    if (!ok) problems.push("control without a label: " + where(el) + " name=" + el.name);
  });
  document.querySelectorAll("button, a[href]").forEach((el) => {
    if (visible(el) && !named(el)) problems.push("button or link without a name: " + where(el));
  });
  document.querySelectorAll("table").forEach((el) => {
    if (!visible(el)) return;
    if (!el.querySelector("caption") && !el.getAttribute("aria-label")
        && !el.getAttribute("aria-labelledby")) problems.push("table without a caption: " + where(el));
  });
  const rgba = (text) => {
    const m = text.match(/rgba?\(([^)]+)\)/);
    if (!m) return null;
    const p = m[1].split(/[ ,/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    let out = [255, 255, 255];
    for (const c of layers.reverse()) out = out.map((v, i) => c[i] * c[3] + v * (1 - c[3]));
    return out;
  };
  const lum = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
  };
  const seen = new Set();
  document.querySelectorAll("body *").forEach((el) => {
    if (!visible(el) || ["SCRIPT", "STYLE", "CANVAS", "svg", "OPTION"].includes(el.tagName)) return;
    const own = Array.from(el.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || el.closest(":disabled, .disabled")) return;
    const s = getComputedStyle(el);
    const bg = background(el);
    const fgA = rgba(s.color);
    const fg = fgA.slice(0, 3).map((v, i) => v * fgA[3] + bg[i] * (1 - fgA[3]));
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    const size = parseFloat(s.fontSize), bold = parseInt(s.fontWeight, 10) >= 700;
    const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    if (ratio < need) {
      const key = where(el) + " " + ratio.toFixed(2);
      if (!seen.has(key)) { seen.add(key); problems.push("contrast " + ratio.toFixed(2) + " < " + need + ": " + where(el) + " '" + el.textContent.trim().slice(0, 30) + "'"); }
    }
  });
  return problems;
}
