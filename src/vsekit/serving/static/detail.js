// The detail view: an item's full image, all the captions of its image and its metadata, in a modal dialog,
// with "More like this" (a search with the item) and a search with each caption. The page keeps the item's id
// in the URL (?detail=ID); Escape, the close button, a click beside the dialog and Back close it.

import { itemUrl } from "./cards.js";

const $ = (id) => document.getElementById(id);

function formatBytes(n) {
  if (n < 1024) return `${n} bytes`;
  const units = ["KiB", "MiB", "GiB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function entry(list, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
  return dd;
}

/**
 * The detail view. ``actions``: ``moreLike(id)`` (search with an item), ``closed()`` (the dialog was closed by
 * the user: the page drops ``detail`` from its state).
 */
export function createDetail(actions) {
  const dialog = $("detail");
  const image = $("detail-image");
  const status = $("detail-status");
  let shown = null; // the id shown
  let opener = null; // the element that had the focus when the view opened
  let closing = false; // closed by the page itself (Back, a new state): not a user's close

  function clear(id) {
    $("detail-title").textContent = id;
    status.textContent = "Loading…";
    status.classList.remove("error");
    image.hidden = true;
    image.removeAttribute("src");
    $("detail-dimensions").textContent = "";
    $("detail-captions").replaceChildren();
    $("detail-meta").replaceChildren();
    $("detail-open").hidden = true;
    $("more-like-this").disabled = true;
  }

  function captionList(meta) {
    const list = $("detail-captions");
    for (const caption of meta.captions || []) {
      const li = document.createElement("li");
      if (caption.id === meta.id) li.className = "current";
      const text = document.createElement("span");
      text.textContent = caption.caption || "";
      const search = document.createElement("button");
      search.type = "button";
      search.className = "link";
      search.textContent = "search with it";
      search.title = `Images like “${caption.caption}”`;
      search.addEventListener("click", () => actions.moreLike(caption.id, "image"));
      li.append(text, " ", search);
      list.append(li);
    }
    $("detail-captions-title").hidden = !list.children.length;
  }

  function draw(meta) {
    const name = meta.modality === "image" ? (meta.path || meta.id).split("/").pop() : meta.caption || meta.id;
    $("detail-title").textContent = name;
    status.textContent = "";
    if (meta.image_url) {
      image.src = meta.image_url;
      image.alt = meta.captions?.[0]?.caption || meta.path || meta.id;
      image.hidden = false;
      const open = $("detail-open");
      open.href = meta.image_url;
      open.hidden = false;
    }
    captionList(meta);
    const list = $("detail-meta");
    entry(list, "Id", meta.id);
    entry(list, "Kind", meta.modality === "image" ? "image" : "caption");
    if (meta.modality === "text" && meta.image_id) entry(list, "Image", meta.image_id);
    if (meta.path) entry(list, "File", meta.path);
    if (meta.modality === "image" && Number.isFinite(meta.size)) entry(list, "Size", formatBytes(meta.size));
    if (meta.modality === "image" && Number.isFinite(meta.mtime)) {
      entry(list, "Modified", new Date(meta.mtime / 1e6).toLocaleString());
    }
    const more = $("more-like-this");
    more.disabled = false;
    more.title = meta.modality === "image" ? "Search with this image" : "Search with this caption";
  }

  async function show(id) {
    if (shown === id && dialog.open) return;
    shown = id;
    clear(id);
    if (!dialog.open) {
      opener = document.activeElement;
      dialog.showModal();
    }
    try {
      const response = await fetch(itemUrl(id));
      const meta = await response.json();
      if (shown !== id) return;
      if (!response.ok) throw new Error(meta?.error?.message || `HTTP ${response.status}`);
      draw(meta);
    } catch (err) {
      if (shown !== id) return;
      status.textContent = `Error: ${err.message}`;
      status.classList.add("error");
    }
  }

  function hide() {
    shown = null;
    if (!dialog.open) return;
    closing = true;
    dialog.close();
  }

  image.addEventListener("load", () => {
    $("detail-dimensions").textContent = `${image.naturalWidth} × ${image.naturalHeight} pixels`;
  });
  $("detail-close").addEventListener("click", () => dialog.close());
  $("more-like-this").addEventListener("click", () => shown && actions.moreLike(shown));
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close(); // a click on the backdrop, beside the dialog's content
  });
  dialog.addEventListener("close", () => {
    if (opener && opener.isConnected) opener.focus();
    opener = null;
    if (closing) closing = false;
    else {
      shown = null;
      actions.closed(); // Escape, the close button or a click beside it
    }
  });

  return {
    /** Show ``id``, or close the view when it is empty. */
    sync(id) {
      if (id) show(id);
      else hide();
    },
  };
}
