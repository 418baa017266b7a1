"use strict";
// The vsekit search page: a search box, an image upload, a grid of results, pagination.
// The state (q or item, target, k, page) lives in the URL: reloading or going back shows the same results.
// Only the service's own API is called; results are drawn with textContent (never as HTML).
(() => {
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
  let upload = null; // {file, url}: the uploaded query image (not kept in the URL)
  let current = null; // the state shown

  function intParam(value, lo, hi, fallback) {
    const n = Number.parseInt(value ?? "", 10);
    return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : fallback;
  }

  function stateFromUrl() {
    const p = new URLSearchParams(window.location.search);
    return {
      q: p.get("q") || "",
      item: p.get("item") || "",
      target: p.get("target") === "text" ? "text" : "image",
      k: intParam(p.get("k"), 1, MAX_K, DEFAULT_K),
      page: intParam(p.get("page"), 1, 100000, 1),
      upload: false,
    };
  }

  function urlOf(state) {
    const p = new URLSearchParams();
    if (state.q) p.set("q", state.q);
    else if (state.item) p.set("item", state.item);
    if (state.target !== "image") p.set("target", state.target);
    if (state.k !== DEFAULT_K) p.set("k", String(state.k));
    if (state.page > 1) p.set("page", String(state.page));
    const query = p.toString();
    return query ? `?${query}` : window.location.pathname;
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

  function itemUrl(id, suffix = "") {
    return `/api/items/${id.split("/").map(encodeURIComponent).join("/")}${suffix}`;
  }

  function showPreview(state) {
    const image = $("query-image");
    const label = $("query-label");
    if (state.upload && upload) {
      image.src = upload.url;
      image.alt = "your image";
      image.hidden = false;
      label.textContent = `Results for your image ${upload.file.name}`;
    } else if (state.item) {
      image.hidden = true;
      image.removeAttribute("src");
      label.textContent = `Results similar to ${state.item}`;
      fetch(itemUrl(state.item)).then((r) => (r.ok ? r.json() : null)).then((meta) => {
        if (!meta || current !== state) return;
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

  function card(hit, state) {
    const li = document.createElement("li");
    li.className = `hit ${hit.modality}`;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "hit-button";
    button.dataset.id = hit.id;
    button.title = `Search with this ${hit.modality === "image" ? "image" : "caption"}`;
    if (hit.thumbnail_url) {
      const img = document.createElement("img");
      img.src = `${hit.thumbnail_url}?size=256`;
      img.alt = hit.caption || hit.path || hit.id;
      img.loading = "lazy";
      img.decoding = "async";
      button.append(img);
    }
    if (hit.modality === "text" && hit.caption) {
      const quote = document.createElement("p");
      quote.className = "text";
      quote.textContent = hit.caption;
      button.append(quote);
    }
    const meta = document.createElement("p");
    meta.className = "meta";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${hit.rank}`;
    meta.append(rank, " ", score);
    button.append(meta);
    const label = hit.modality === "image" ? hit.caption || hit.path || hit.id : hit.path || "";
    if (label) {
      const caption = document.createElement("p");
      caption.className = "caption";
      caption.textContent = label;
      button.append(caption);
    }
    button.addEventListener("click", () => go({ ...state, q: "", item: hit.id, page: 1, upload: false }, true));
    li.append(button);
    return li;
  }

  async function run(state) {
    current = state;
    showForm(state);
    showPreview(state);
    if (inflight) inflight.abort();
    if (!state.q && !state.item && !state.upload) {
      grid.replaceChildren();
      pager.hidden = true;
      setStatus("Type a description, or search with an image.");
      return;
    }
    inflight = new AbortController();
    const offset = (state.page - 1) * state.k;
    let request;
    if (state.upload) {
      const body = new FormData();
      body.append("image", upload.file);
      body.append("k", String(state.k));
      body.append("offset", String(offset));
      body.append("target", state.target);
      request = fetch("/api/search", { method: "POST", body, signal: inflight.signal });
    } else {
      const p = new URLSearchParams({ k: String(state.k), offset: String(offset), target: state.target });
      if (state.q) p.set("q", state.q);
      else p.set("item", state.item);
      request = fetch(`/api/search?${p}`, { signal: inflight.signal });
    }
    grid.setAttribute("aria-busy", "true");
    setStatus("Searching…");
    try {
      const response = await request;
      const data = await response.json();
      if (current !== state) return;
      if (!response.ok) throw new Error(data?.error?.message || `HTTP ${response.status}`);
      grid.replaceChildren(...data.hits.map((hit) => card(hit, state)));
      const what = state.target === "image" ? "images" : "captions";
      const first = offset + 1;
      const last = offset + data.hits.length;
      setStatus(data.hits.length ? `${what} ${first}–${last} (${data.took_ms.toFixed(0)} ms)` : `no ${what} on this page`);
      $("page-info").textContent = `page ${state.page}`;
      $("prev").disabled = state.page <= 1;
      $("next").disabled = !data.has_more;
      pager.hidden = state.page <= 1 && !data.has_more;
    } catch (err) {
      if (err.name === "AbortError") return;
      grid.replaceChildren();
      pager.hidden = true;
      setStatus(`Error: ${err.message}`, true);
    } finally {
      if (current === state) grid.removeAttribute("aria-busy");
    }
  }

  function go(state, push) {
    if (!state.upload) {
      const url = urlOf(state);
      if (push) window.history.pushState(null, "", url);
      else window.history.replaceState(null, "", url);
    }
    run(state);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = queryInput.value.trim();
    if (!q) {
      setStatus("Type a description first.", true);
      return;
    }
    go({ ...stateFromUrl(), q, item: "", target: selectedTarget(), page: 1, upload: false }, true);
  });

  fileInput.addEventListener("change", () => {
    const file = fileInput.files && fileInput.files[0];
    if (!file) return;
    if (upload) URL.revokeObjectURL(upload.url);
    upload = { file, url: URL.createObjectURL(file) };
    fileInput.value = "";
    window.history.pushState(null, "", urlOf({ ...stateFromUrl(), q: "", item: "", page: 1 }));
    go({ ...stateFromUrl(), q: "", item: "", target: selectedTarget(), page: 1, upload: true }, false);
  });

  for (const radio of form.querySelectorAll('input[name="target"]')) {
    radio.addEventListener("change", () => {
      if (current && (current.q || current.item || current.upload)) go({ ...current, target: selectedTarget(), page: 1 }, true);
    });
  }

  $("prev").addEventListener("click", () => go({ ...current, page: Math.max(1, current.page - 1) }, true));
  $("next").addEventListener("click", () => go({ ...current, page: current.page + 1 }, true));
  window.addEventListener("popstate", () => run(stateFromUrl()));

  fetch("/api/stats").then((r) => (r.ok ? r.json() : null)).then((stats) => {
    if (!stats) return;
    const parts = [`${stats.items} items`];
    if (stats.model) parts.push(`model ${stats.model.split("/").pop()}`);
    if (stats.backend) parts.push(`${stats.backend} search`);
    $("index-info").textContent = parts.join(" · ");
  }).catch(() => {});

  run(stateFromUrl());
})();
