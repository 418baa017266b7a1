// The result cards of the grid: an image with its rank, score and first caption, or (caption results, grouped
// by image) an image with its matching captions listed under it. Drawn with textContent, never as HTML.

export function itemUrl(id, suffix = "") {
  return `/api/items/${id.split("/").map(encodeURIComponent).join("/")}${suffix}`;
}

function span(className, text) {
  const el = document.createElement("span");
  el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function thumbnail(hit) {
  const img = document.createElement("img");
  img.src = `${hit.thumbnail_url}?size=256`;
  img.alt = hit.caption || hit.path || hit.id;
  img.loading = "lazy";
  img.decoding = "async";
  return img;
}

function rankAndScore(hit) {
  const meta = span("meta");
  meta.append(span("rank", `#${hit.rank}`), " ", span("score", hit.score.toFixed(3)));
  return meta;
}

// the captions of a grouped result: each clamped to three lines, its own score and rank in its title
function matches(hit) {
  const list = span("matches");
  for (const match of hit.captions) {
    const line = span("match clamp", match.caption || match.id);
    line.title = `${match.caption || match.id}\n(score ${match.score.toFixed(3)}, caption #${match.rank})`;
    line.dataset.id = match.id;
    list.append(line);
  }
  return list;
}

/** The id the detail view shows for a hit: a caption's image, else the item itself. */
export function detailId(hit) {
  return hit.modality === "text" && hit.image_id ? hit.image_id : hit.id;
}

/** A card of the grid; ``open(id)`` is called with the id to show in the detail view when it is clicked. */
export function card(hit, open) {
  const li = document.createElement("li");
  const grouped = Array.isArray(hit.captions);
  li.className = `hit ${hit.modality}${grouped ? " group" : ""}`;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "hit-button";
  const id = detailId(hit);
  button.dataset.id = id;
  button.title = hit.image_id || hit.modality === "image" ? "Show this image and its captions" : "Show this caption";
  if (hit.thumbnail_url) button.append(thumbnail(hit));
  else if (hit.modality === "text" && !grouped) button.append(span("text", hit.caption || ""));
  button.append(rankAndScore(hit));
  if (grouped) {
    button.append(matches(hit));
  } else {
    const label = hit.modality === "image" ? hit.caption || hit.path || hit.id : hit.path || "";
    if (label) button.append(span("caption clamp", label));
  }
  button.addEventListener("click", () => open(id));
  li.append(button);
  return li;
}
