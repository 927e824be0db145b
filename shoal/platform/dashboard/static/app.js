"use strict";
// Shoal's dashboard: renders the overview the server pushes (server-sent events), falling back
// to polling /api/overview. Every value goes in with textContent: nothing from the store is
// parsed as HTML.

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value, unit, digits) {
  if (value === null || value === undefined) return "–";
  return Number(value).toFixed(digits === undefined ? 1 : digits) + (unit || "");
}

function sparkline(series) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 120 34");
  svg.setAttribute("preserveAspectRatio", "none");
  for (const [name, values] of Object.entries(series)) {
    const known = values.map((v, i) => [i, v]).filter(([, v]) => v !== null);
    if (known.length < 2) continue;
    const top = Math.max(...known.map(([, v]) => v)) || 1;
    const step = 120 / Math.max(values.length - 1, 1);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("class", name);
    line.setAttribute("points", known.map(([i, v]) => `${(i * step).toFixed(1)},${(32 - (v / top) * 30).toFixed(1)}`).join(" "));
    svg.append(line);
  }
  return svg;
}

function service(s) {
  const numbers = el("div", { class: "numbers" },
    el("div", {}, el("b", { class: "rps" }, fmt(s.rps, "", 1)), "req/s"),
    el("div", {}, el("b", { class: "errors" }, fmt(s.error_pct, "%", 1)), "errors"),
    el("div", {}, el("b", { class: "p50" }, fmt(s.p50_ms, " ms", 0)), "p50 ≤"),
    el("div", {}, el("b", { class: "p99" }, fmt(s.p99_ms, " ms", 0)), "p99 ≤"));
  const card = el("article", { class: "service", "data-service": s.name }, el("h3", {}, s.name), numbers,
    sparkline({ rps: s.history.rps, p99: s.history.p99_ms }));
  for (const r of s.revisions) {
    const share = r.traffic === null ? "shared" : `${r.traffic}%`;
    const bar = el("div", { class: "bar" }, el("span", {}));
    bar.firstChild.style.width = `${r.traffic === null ? 0 : r.traffic}%`;
    const scale = `${r.instances.length} instance${r.instances.length === 1 ? "" : "s"}` +
      (r.desired === null || r.desired === undefined ? "" : `, wants ${r.desired}`) + ` (min ${r.min}, max ${r.max})`;
    const chips = el("div", { class: "instances" }, ...r.instances.map(i =>
      el("span", { class: "instance", "data-health": i.health, "data-instance": i.id,
        title: `${i.state}${i.why ? ": " + i.why : ""}${i.restarts ? `, ${i.restarts} restarts` : ""}` },
        `${i.id} @ ${i.node}`)));
    card.append(el("div", { class: "revision", "data-revision": r.revision },
      el("span", { class: "name" }, r.revision), " ",
      el("span", { class: "traffic" }, share),
      r.tags.length ? ` · tags ${r.tags.join(", ")}` : "", " · ", scale, bar, chips));
  }
  return card;
}

function expiresIn(seconds) {
  if (seconds < 0) return "expired";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 2 * 86400) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} days`;
}

function render(o) {
  const when = new Date(o.time * 1000).toLocaleTimeString();
  document.getElementById("summary").textContent =
    `config revision ${o.revision} · ${o.nodes.length} node${o.nodes.length === 1 ? "" : "s"} · ` +
    `${o.proxies.length} prox${o.proxies.length === 1 ? "y" : "ies"} · updated ${when}`;
  const services = document.getElementById("services");
  services.replaceChildren(...(o.services.length ? o.services.map(service) :
    [el("p", { class: "empty" }, "No service yet: shoal apply -f deploy/examples/hello-world")]));
  const events = document.getElementById("events");
  events.replaceChildren(...(o.events.length ? o.events.map(e => el("li", { "data-kind": e.kind },
    el("time", {}, new Date(e.time * 1000).toLocaleTimeString()), el("span", { class: "kind" }, e.kind), e.text)) :
    [el("li", { class: "empty" }, "Nothing yet: changes appear here as they happen.")]));
  const certs = document.querySelector("#certificates tbody");
  certs.replaceChildren(...o.certificates.map(c => el("tr", {},
    el("td", {}, c.identity), el("td", {}, c.component),
    el("td", { class: c.seconds_left < 3600 ? "soon" : "", title: c.not_after }, expiresIn(c.seconds_left)))));
  document.getElementById("proxies").replaceChildren(el("span", { class: "label" }, "proxies"),
    ...o.proxies.map(p => el("span", { class: "proxy" }, p)), el("span", { class: "label" }, "→ services"));
}

function connect() {
  const link = document.getElementById("link");
  if (!window.EventSource) { poll(); return; }
  const source = new EventSource("/api/stream");
  source.addEventListener("overview", (message) => {
    link.className = "link up";
    render(JSON.parse(message.data));
  });
  source.onerror = () => { link.className = "link down"; };  // EventSource reconnects by itself
}

async function poll() {
  const link = document.getElementById("link");
  for (;;) {
    try {
      const answer = await fetch("/api/overview", { cache: "no-store" });
      render(await answer.json());
      link.className = "link up";
    } catch (e) {
      link.className = "link down";
    }
    await new Promise(resolve => setTimeout(resolve, 1000));
  }
}

connect();
