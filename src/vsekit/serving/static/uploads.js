// Uploaded query photos and their results, kept for Back, Forward and reload without uploading again.
// A URL cannot carry a photo: the page's URL names an upload by a random id (?upload=ID), and the photo stays
// in this tab: in memory while the page is open, and in sessionStorage (this tab only, cleared when it closes)
// when it is small enough to fit. Each page of results of an upload is kept too, so going Back shows it again
// without sending the photo to the service.

const PHOTO = "vsekit-upload:"; // + id: {name, type, data (a data: URL)}
const RESULTS = "vsekit-results:"; // + id|target|k|page: the service's answer
const ORDER = "vsekit-uploads"; // the kept ids, oldest first
const KEEP = 3; // photos kept in sessionStorage at most
const MAX_STORED_BYTES = 3 * 2 ** 20; // sessionStorage holds about 5 million characters per site

const photos = new Map(); // id -> {file, name, url, stored}
const answers = new Map(); // results key -> answer

export const ID_PATTERN = /^[0-9a-f]{16}$/;

function newId() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function storage() {
  try {
    return window.sessionStorage;
  } catch {
    return null; // storage disabled: memory only
  }
}

function keptIds() {
  try {
    const ids = JSON.parse(storage()?.getItem(ORDER) || "[]");
    return Array.isArray(ids) ? ids.filter((id) => ID_PATTERN.test(id)) : [];
  } catch {
    return [];
  }
}

function forget(id) {
  const store = storage();
  if (!store) return;
  store.removeItem(PHOTO + id);
  for (let i = store.length - 1; i >= 0; i--) {
    const key = store.key(i);
    if (key && key.startsWith(`${RESULTS}${id}|`)) store.removeItem(key);
  }
}

// setItem, dropping the oldest kept photos while the storage is full; false when it cannot be kept
function put(key, value, keep) {
  const store = storage();
  if (!store) return false;
  for (;;) {
    try {
      store.setItem(key, value);
      return true;
    } catch {
      const ids = keptIds();
      const oldest = ids.find((id) => id !== keep);
      if (!oldest) return false;
      forget(oldest);
      try {
        store.setItem(ORDER, JSON.stringify(ids.filter((id) => id !== oldest)));
      } catch {
        return false;
      }
    }
  }
}

// keep the photo in sessionStorage when it fits (``photo.stored`` says so from the start, and is put right when
// the storage turns out to be full)
function persist(id, file, photo) {
  if (!photo.stored) return;
  const reader = new FileReader();
  reader.onload = () => {
    const record = JSON.stringify({ name: file.name, type: file.type, data: reader.result });
    if (!put(PHOTO + id, record, id)) {
      photo.stored = false;
      return;
    }
    const ids = [...keptIds().filter((other) => other !== id), id];
    while (ids.length > KEEP) forget(ids.shift());
    put(ORDER, JSON.stringify(ids), id);
    for (const [key, answer] of answers) {
      if (key.startsWith(`${id}|`)) put(RESULTS + key, JSON.stringify(answer), id);
    }
  };
  reader.readAsDataURL(file);
}

// a data: URL as a File (fetch() of a data: URL is not allowed by the page's Content-Security-Policy)
function fileOf(record) {
  const [head, body] = String(record.data).split(",", 2);
  const binary = atob(body || "");
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  const type = record.type || head.replace(/^data:/, "").replace(/;base64$/, "");
  return new File([bytes], record.name || "photo", { type });
}

/** Keep an uploaded photo; returns its id (for the URL). */
export function remember(file) {
  const id = newId();
  const photo = { file, name: file.name, url: URL.createObjectURL(file), stored: file.size <= MAX_STORED_BYTES && Boolean(storage()) };
  photos.set(id, photo);
  persist(id, file, photo);
  return id;
}

/** The photo of an upload id: {file, name, url, stored}, or null when this tab does not hold it. */
export function find(id) {
  if (photos.has(id)) return photos.get(id);
  try {
    const record = JSON.parse(storage()?.getItem(PHOTO + id) || "null");
    if (!record) return null;
    const file = fileOf(record);
    const photo = { file, name: file.name, url: URL.createObjectURL(file), stored: true };
    photos.set(id, photo);
    return photo;
  } catch {
    return null;
  }
}

function resultsKey(state) {
  return `${state.upload}|${state.target}|${state.k}|${state.page}`;
}

/** The kept answer for this page of an upload's results, or null. */
export function cachedAnswer(state) {
  const key = resultsKey(state);
  if (answers.has(key)) return answers.get(key);
  try {
    const answer = JSON.parse(storage()?.getItem(RESULTS + key) || "null");
    if (answer) answers.set(key, answer);
    return answer;
  } catch {
    return null;
  }
}

/** Keep the answer for this page of an upload's results. */
export function keepAnswer(state, answer) {
  const key = resultsKey(state);
  answers.set(key, answer);
  if (photos.get(state.upload)?.stored) put(RESULTS + key, JSON.stringify(answer), state.upload);
}
