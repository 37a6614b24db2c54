// The session page's script: live resource figures (polled every second from the console API, which
// runs the same get_metrics tool as the SDK), a terminal (xterm.js on the /pty/{id} WebSocket), and the
// file browser and links of console-files.js.
import { Terminal } from "./xterm.mjs";
import { fileBrowser, links } from "./console-files.js";

const terminalBox = document.getElementById("terminal");
const sessionId = terminalBox ? terminalBox.dataset.session : null;
const api = sessionId ? `/console/api/sessions/${encodeURIComponent(sessionId)}` : null;

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function show(name, fraction, text) {
  const meter = document.querySelector(`.meter[data-metric="${name}"]`);
  if (!meter) return;
  const pct = Math.max(0, Math.min(1, fraction)) * 100;
  meter.querySelector(".fill").style.width = `${pct.toFixed(1)}%`;
  meter.querySelector(".value").textContent = text;
}

async function refreshMetrics() {
  let response;
  try {
    response = await fetch(`${api}/metrics`, { credentials: "same-origin", cache: "no-store" });
  } catch (err) {
    return true;  // a network hiccup: try again next second
  }
  if (response.status === 401) { window.location.assign("/console/login"); return false; }
  const body = await response.json();
  const updated = document.querySelector(".updated");
  if (!response.ok) { updated.textContent = body.error || `error ${response.status}`; return response.status >= 500; }
  show("cpu", body.cpu_used_pct / 100, `${body.cpu_used_pct.toFixed(1)} % of ${body.cpu_count} CPU`);
  show("memory", body.mem_used / (body.mem_total || 1), `${bytes(body.mem_used)} / ${bytes(body.mem_total)}`);
  show("disk", body.disk_used / (body.disk_total || 1), `${bytes(body.disk_used)} / ${bytes(body.disk_total)}`);
  const rate = body.rx_rate_kbyte_per_s + body.tx_rate_kbyte_per_s;
  show("network", Math.min(1, rate / 1024),
       `↓ ${body.rx_rate_kbyte_per_s.toFixed(1)} KB/s ↑ ${body.tx_rate_kbyte_per_s.toFixed(1)} KB/s`);
  updated.textContent = `updated ${body.timestamp}`;
  return true;
}

async function metricsLoop() {
  // One request at a time, one second apart (a slow answer never piles requests up).
  while (await refreshMetrics()) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function openTerminal() {
  const status = document.querySelector(".terminal-status");
  const response = await fetch(`${api}/terminal`, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) { status.textContent = "The terminal is not available."; return; }
  const { path, token } = await response.json();
  const term = new Terminal({ cols: 100, rows: 24, cursorBlink: true, fontSize: 14 });
  term.open(terminalBox);
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${window.location.host}${path}?token=${encodeURIComponent(token)}`);
  socket.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  socket.addEventListener("open", () => {
    socket.send(JSON.stringify({ cmd: null, cols: term.cols, rows: term.rows }));
  });
  socket.addEventListener("message", (event) => {
    if (typeof event.data !== "string") { term.write(new Uint8Array(event.data)); return; }
    const frame = JSON.parse(event.data);
    if (frame.type === "started") status.textContent = "Connected.";
    else if (frame.type === "exit") status.textContent = `The shell ended (exit code ${frame.exitCode}).`;
    else if (frame.type === "error") status.textContent = frame.message;
  });
  socket.addEventListener("close", () => {
    if (!status.textContent.startsWith("The shell ended")) status.textContent = "Disconnected.";
  });
  term.onData((data) => { if (socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data)); });
  term.onResize(({ cols, rows }) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "resize", cols, rows }));
  });
  term.focus();
}

if (sessionId) {
  metricsLoop();
  openTerminal();
  fileBrowser(document.getElementById("files"), api);
  links(document.getElementById("links"), api);
}
