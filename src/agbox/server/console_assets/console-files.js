// The session page's file browser and links (console_files.py serves the JSON routes used here).
// Names from the sandbox are put in the page as text nodes, never as HTML.

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function joinPath(folder, name) {
  return folder.endsWith("/") ? folder + name : `${folder}/${name}`;
}

async function request(url, options = {}) {
  // One retry on a network error (a dropped connection, a network change on the client): every
  // request here is safe to repeat (reads, a whole-file PUT, an idempotent link request).
  const settings = { credentials: "same-origin", cache: "no-store", ...options };
  try {
    return await fetch(url, settings);
  } catch (err) {
    await new Promise((resolve) => setTimeout(resolve, 500));
    return fetch(url, settings);
  }
}

async function answer(response) {
  // Every console API failure is {"error": message}; anything else (a proxy's page) is shown by status.
  let body = {};
  try { body = await response.json(); } catch (err) { body = {}; }
  if (response.status === 401) window.location.assign("/console/login");
  if (!response.ok) throw new Error(body.error || `The server answered ${response.status}.`);
  return body;
}

export function fileBrowser(root, api) {
  const navForm = root.querySelector("form.files-nav");
  const pathInput = navForm.querySelector("input[name=path]");
  const errorBox = root.querySelector(".files-error");
  const rows = root.querySelector("table.files tbody");
  const uploadForm = root.querySelector("form.upload");
  const uploadStatus = root.querySelector(".upload-status");
  const viewer = root.querySelector(".viewer");
  let current = pathInput.value;

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  async function view(path) {
    showError("");
    try {
      const body = await answer(await request(`${api}/files/text?path=${encodeURIComponent(path)}`));
      viewer.querySelector(".viewer-path").textContent = body.path;
      viewer.querySelector(".viewer-note").textContent =
        body.truncated ? `first ${bytes(body.text.length)} of ${bytes(body.size)}` : bytes(body.size);
      viewer.querySelector(".viewer-text").textContent = body.text;
      viewer.hidden = false;
    } catch (err) {
      showError(err.message);
    }
  }

  function row(body, entry) {
    const path = joinPath(body.path, entry.name);
    const tr = element("tr", { "data-name": entry.name, "data-kind": entry.directory ? "folder" : "file" });
    const nameCell = element("td");
    if (entry.directory) {
      const open = element("a", { href: "#", class: "folder" }, `${entry.name}/`);
      open.addEventListener("click", (event) => { event.preventDefault(); list(path); });
      nameCell.append(open);
    } else {
      nameCell.textContent = entry.name;
    }
    const actions = element("td", { class: "actions" });
    if (!entry.directory) {
      const viewButton = element("button", { type: "button", class: "view" }, "View");
      viewButton.addEventListener("click", () => view(path));
      const download = element("a", { href: `${api}/files/content?path=${encodeURIComponent(path)}`,
                                      download: entry.name, class: "download" }, "Download");
      actions.append(viewButton, " ", download);
    }
    tr.append(nameCell, element("td", { class: "size" }, bytes(entry.size)), actions);
    return tr;
  }

  async function list(path) {
    showError("");
    try {
      const body = await answer(await request(`${api}/files?path=${encodeURIComponent(path)}`));
      current = body.path;
      pathInput.value = body.path;
      const fresh = [];
      if (body.parent !== null) {
        const up = element("tr", { "data-kind": "parent" });
        const link = element("a", { href: "#", class: "folder" }, "..");
        link.addEventListener("click", (event) => { event.preventDefault(); list(body.parent); });
        const cell = element("td");
        cell.append(link);
        up.append(cell, element("td"), element("td"));
        fresh.push(up);
      }
      for (const entry of body.entries) fresh.push(row(body, entry));
      rows.replaceChildren(...fresh);
    } catch (err) {
      showError(err.message);
    }
  }

  navForm.addEventListener("submit", (event) => { event.preventDefault(); list(pathInput.value); });

  uploadForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = uploadForm.querySelector("input[type=file]").files[0];
    if (!file) return;
    const target = joinPath(current, file.name);
    uploadStatus.textContent = `Uploading ${file.name} (${bytes(file.size)})…`;
    showError("");
    try {
      // The File itself is the body: the browser streams it from disk, as is.
      const body = await answer(await request(`${api}/files/content?path=${encodeURIComponent(target)}`, {
        method: "PUT", body: file, headers: { "Content-Type": "application/octet-stream" },
      }));
      uploadStatus.textContent = `Uploaded ${body.path} (${bytes(body.bytes)}).`;
      uploadForm.reset();
      await list(current);
    } catch (err) {
      uploadStatus.textContent = "";
      showError(err.message);
    }
  });

  list(current);
}

export function links(root, api) {
  const form = root.querySelector("form.link-form");
  const errorBox = root.querySelector(".link-error");
  const list = root.querySelector("ul.links");
  const ports = root.querySelector(".listening .ports");

  function showLink(port, url) {
    let item = list.querySelector(`li[data-port="${port}"]`);
    if (!item) {
      item = element("li", { "data-port": String(port) });
      list.append(item);
    }
    const link = element("a", { href: url, target: "_blank", rel: "noopener" }, url);
    item.replaceChildren(element("span", { class: "port" }, String(port)), " ", link);
  }

  async function getLink(port) {
    errorBox.hidden = true;
    try {
      const body = await answer(await request(`${api}/links`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ port }),
      }));
      showLink(body.port, body.url);
    } catch (err) {
      errorBox.textContent = err.message;
      errorBox.hidden = false;
    }
  }

  async function refreshPorts() {
    try {
      const body = await answer(await request(`${api}/ports`));
      const [low, high] = body.linkPorts;
      if (!body.ports.length) { ports.textContent = "nothing"; return; }
      const items = body.ports.map((port) => {
        if (port < low || port > high) return element("span", { class: "port outside" }, String(port));
        const button = element("button", { type: "button", class: "port-link", "data-port": String(port) },
                               String(port));
        button.addEventListener("click", () => getLink(port));
        return button;
      });
      ports.replaceChildren(...items.flatMap((item, i) => (i ? [" ", item] : [item])));
    } catch (err) {
      ports.textContent = err.message;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    getLink(Number(form.querySelector("input[name=port]").value));
  });
  root.querySelector("button.refresh-ports").addEventListener("click", refreshPorts);
  refreshPorts();
}
