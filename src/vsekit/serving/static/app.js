// The vsekit search page: a search box, an image upload, a grid of results, pagination, a detail view.
// The state (q, item or upload; target, k, page; detail) lives in the URL: reloading, Back and Forward show the
// same view, and a link shares it, except for an uploaded photo, which a URL cannot carry (see uploads.js).
// Only the service's own API is called; results are drawn with textContent (never as HTML).
import { card, itemUrl } from "./cards.js";
import { createDetail } from "./detail.js";
import * as uploads from "./uploads.js";

const DEFAULT_K = 24;
const MAX_K = 100;
const $ = (id) => document.getElementById(id);
const form = $("search-form");
const queryInput = $("q");
const fileInput = $("image");
const statusLine = $("status");
const grid = $("results");
const pager = $("pager");
const preview = $("query-preview");
let inflight = null; // AbortController of the request being answered
let current = null; // the state shown
let shownSearch = null; // the search (state without the detail view) whose results the grid shows

function intParam(value, lo, hi, fallback) {
  const n = Number.parseInt(value ?? "", 10);
  return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : fallback;
}

function stateFromUrl() {
  const p = new URLSearchParams(window.location.search);
  const upload = p.get("upload") || "";
  return {
    q: p.get("q") || "",
    item: p.get("item") || "",
    upload: uploads.ID_PATTERN.test(upload) ? upload : "",
    target: p.get("target") === "text" ? "text" : "image",
    k: intParam(p.get("k"), 1, MAX_K, DEFAULT_K),
    page: intParam(p.get("page"), 1, 100000, 1),
    detail: p.get("detail") || "",
  };
}

function urlOf(state) {
  const p = new URLSearchParams();
  if (state.q) p.set("q", state.q);
  else if (state.item) p.set("item", state.item);
  else if (state.upload) p.set("upload", state.upload);
  if (state.target !== "image") p.set("target", state.target);
  if (state.k !== DEFAULT_K) p.set("k", String(state.k));
  if (state.page > 1) p.set("page", String(state.page));
  if (state.detail) p.set("detail", state.detail);
  const query = p.toString();
  return query ? `?${query}` : window.location.pathname;
}

function searchOf(state) {
  return JSON.stringify([state.q, state.item, state.upload, state.target, state.k, state.page]);
}

function selectedTarget() {
  return form.querySelector('input[name="target"]:checked')?.value === "text" ? "text" : "image";
}

function showForm(state) {
  queryInput.value = state.q;
  for (const radio of form.querySelectorAll('input[name="target"]')) radio.checked = radio.value === state.target;
}

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

// what the URL of an upload's results shares, and what it cannot: the photo
function shareNote(photo) {
  const note = $("share-note");
  const where = photo && !photo.stored ? "on this page only (Back and Forward show these results again; a reload does not)"
    : "in this tab only (Back, Forward and reload show these results again)";
  const best = document.createElement("a");
  best.id = "share-best";
  best.textContent = "a link to results like the best match";
  best.hidden = true;
  note.replaceChildren(`A link cannot carry your photo: it stays ${where}, and this page's address shows it nowhere else. `
    + "To share these results, send the photo itself, or ", best, ".");
  note.hidden = false;
}

function showPreview(state, photo) {
  const image = $("query-image");
  const label = $("query-label");
  $("share-note").hidden = true;
  if (state.upload) {
    image.hidden = !photo;
    if (photo) {
      image.src = photo.url;
      image.alt = "your photo";
      label.textContent = `Results for your photo ${photo.name}`;
    } else label.textContent = "Results for an uploaded photo";
    shareNote(photo);
  } else if (state.item) {
    image.hidden = true;
    image.removeAttribute("src");
    label.textContent = `Results similar to ${state.item}`;
    fetch(itemUrl(state.item)).then((r) => (r.ok ? r.json() : null)).then((meta) => {
      if (!meta || current?.item !== state.item) return;
      if (meta.thumbnail_url) {
        image.src = `${meta.thumbnail_url}?size=128`;
        image.alt = meta.caption || meta.path || meta.id;
        image.hidden = false;
      }
      if (meta.modality === "text" && meta.caption) label.textContent = `Results similar to “${meta.caption}”`;
    }).catch(() => {});
  } else {
    preview.hidden = true;
    return;
  }
  preview.hidden = false;
}

function draw(state, data) {
  const offset = (state.page - 1) * state.k;
  grid.replaceChildren(...data.hits.map((hit) => card(hit, (id) => go({ ...current, detail: id }, true))));
  const what = state.target === "image" ? "images" : "images by their captions";
  const last = offset + data.hits.length;
  setStatus(data.hits.length ? `${what} ${offset + 1}–${last} (${data.took_ms.toFixed(0)} ms)` : `no ${what} on this page`);
  $("page-info").textContent = `page ${state.page}`;
  $("prev").disabled = state.page <= 1;
  $("next").disabled = !data.has_more;
  pager.hidden = state.page <= 1 && !data.has_more;
  const best = $("share-best");
  if (state.upload && best && data.hits.length) {
    const top = data.hits[0];
    best.href = urlOf({ q: "", item: top.modality === "text" && top.image_id ? top.image_id : top.id, upload: "",
      target: state.target, k: state.k, page: 1, detail: "" });
    best.hidden = false;
  }
}

function request(state, photo, signal) {
  const offset = (state.page - 1) * state.k;
  const group = state.target === "text" ? "image" : "none"; // captions: each image once, with its captions
  if (state.upload) {
    const body = new FormData();
    body.append("image", photo.file);
    for (const [key, value] of Object.entries({ k: state.k, offset, target: state.target, group })) body.append(key, String(value));
    return fetch("/api/search", { method: "POST", body, signal });
  }
  const p = new URLSearchParams({ k: String(state.k), offset: String(offset), target: state.target, group });
  if (state.q) p.set("q", state.q);
  else p.set("item", state.item);
  return fetch(`/api/search?${p}`, { signal });
}

async function search(state) {
  if (inflight) inflight.abort();
  inflight = null;
  grid.removeAttribute("aria-busy");
  const photo = state.upload ? uploads.find(state.upload) : null;
  showPreview(state, photo);
  if (!state.q && !state.item && !state.upload) {
    grid.replaceChildren();
    pager.hidden = true;
    setStatus("Type a description, or search with an image.");
    return;
  }
  const kept = state.upload ? uploads.cachedAnswer(state) : null;
  if (kept) return draw(state, kept); // an upload's page seen before: shown again without sending the photo
  if (state.upload && !photo) {
    grid.replaceChildren();
    pager.hidden = true;
    setStatus("This search was made with a photo that this tab does not hold (a link cannot carry a photo: it was "
      + "uploaded in another tab or browser, or was too large to keep over a reload). Search with the image again.", true);
    return;
  }
  inflight = new AbortController();
  grid.setAttribute("aria-busy", "true");
  setStatus("Searching…");
  try {
    const response = await request(state, photo, inflight.signal);
    const data = await response.json();
    if (shownSearch !== searchOf(state)) return; // another search was asked meanwhile
    if (!response.ok) throw new Error(data?.error?.message || `HTTP ${response.status}`);
    if (state.upload) uploads.keepAnswer(state, data);
    draw(state, data);
  } catch (err) {
    if (err.name === "AbortError") return;
    grid.replaceChildren();
    pager.hidden = true;
    setStatus(`Error: ${err.message}`, true);
  } finally {
    if (shownSearch === searchOf(state)) grid.removeAttribute("aria-busy");
  }
}

function run(state) {
  current = state;
  showForm(state);
  detail.sync(state.detail);
  const key = searchOf(state);
  if (key === shownSearch) return; // only the detail view changed: the grid stays
  shownSearch = key;
  search(state);
}

// ``push``: a new history entry (Back returns to the current one); else the current entry is replaced
function go(state, push) {
  const entry = { detail: Boolean(state.detail) && push }; // a detail view opened here: closing it goes Back
  if (push) window.history.pushState(entry, "", urlOf(state));
  else window.history.replaceState(entry, "", urlOf(state));
  run(state);
}

const detail = createDetail({
  moreLike: (id, target) => go({ ...current, q: "", item: id, upload: "", target: target || current.target, page: 1, detail: "" }, true),
  closed: () => {
    if (window.history.state?.detail) window.history.back();
    else go({ ...current, detail: "" }, false);
  },
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const q = queryInput.value.trim();
  if (!q) {
    setStatus("Type a description first.", true);
    return;
  }
  go({ ...current, q, item: "", upload: "", target: selectedTarget(), page: 1, detail: "" }, true);
});

fileInput.addEventListener("change", () => {
  const file = fileInput.files && fileInput.files[0];
  if (!file) return;
  const upload = uploads.remember(file);
  fileInput.value = "";
  go({ ...current, q: "", item: "", upload, target: selectedTarget(), page: 1, detail: "" }, true);
});

for (const radio of form.querySelectorAll('input[name="target"]')) {
  radio.addEventListener("change", () => {
    if (current.q || current.item || current.upload) go({ ...current, target: selectedTarget(), page: 1, detail: "" }, true);
  });
}

$("prev").addEventListener("click", () => go({ ...current, page: Math.max(1, current.page - 1) }, true));
$("next").addEventListener("click", () => go({ ...current, page: current.page + 1 }, true));
window.addEventListener("popstate", () => run(stateFromUrl()));

function showStats(stats) {
  const model = $("model-info");
  const name = stats.model_name || stats.model;
  if (name) {
    const metrics = Object.entries(stats.model_metrics || {}).map(([key, value]) => `${key.replaceAll("_", " ")} ${value.toFixed(2)}`);
    model.textContent = [name, ...metrics].join(" · ");
    const source = { ready: "a ready model of vsekit", folder: "a model folder", run: "a training run" }[stats.model_source];
    model.title = [source, stats.model_description].filter(Boolean).join(": ");
    model.hidden = false;
  }
  const index = $("index-info");
  index.textContent = [`${stats.items} items`, stats.backend ? `${stats.backend} search` : ""].filter(Boolean).join(" · ");
  index.hidden = false;
}

fetch("/api/stats").then((r) => (r.ok ? r.json() : null)).then((stats) => stats && showStats(stats)).catch(() => {});

run(stateFromUrl());
