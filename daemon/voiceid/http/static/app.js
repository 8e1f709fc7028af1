// voiceid web page: enroll from the microphone, manage profiles, watch live streams.
// Plain JavaScript, no build step. Talks to the REST API (/api/v1, docs/rest.md) and to
// the daemon's WebSocket server (/events and /stream, docs/protocol.md).
// When the daemon has API tokens (docs/security.md) the page asks for one once, keeps it
// in sessionStorage (this tab only, gone when it closes) and sends it as a bearer header
// to the REST API and as ?token= to the WebSocket (browsers cannot set its headers).
"use strict";

const API = "/api/v1";
const TARGET_RATE = 16000; // enrollment uploads: 16 kHz mono 16-bit PCM WAV
const MAX_RECORD_S = 12; // a recording stops by itself after this long
const HISTORY_S = 30; // seconds of stream time in the score history
const ENDED_KEEP_MS = 60000; // an ended stream stays on the page this long
const MAX_BUFFERED = 1 << 20; // bytes queued on the /stream socket before audio is dropped
const TOKEN_KEY = "voiceid.token"; // sessionStorage key of the API token

const $ = (id) => document.getElementById(id);

const state = {
  config: null,
  model: null,
  profiles: [],
  threshold: 0.5,
  streams: new Map(), // stream name -> view
  eventsSocket: null,
  backoffMs: 1000,
};

// --------------------------------------------------------------------------- token

const auth = { token: readToken(), waiters: [] };

function readToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return ""; // storage disabled: the token lives in this page only
  }
}

function authHeaders(headers = {}) {
  return auth.token ? { ...headers, Authorization: `Bearer ${auth.token}` } : headers;
}

// WebSocket URLs carry the token as a query parameter (no headers on a browser WebSocket).
function withToken(url) {
  if (!auth.token) return url;
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(auth.token)}`;
}

// The daemon answered 401: show the token form (entering a token reloads the page,
// unless askToken is waiting for it).
function showTokenForm(err) {
  const card = $("auth-card");
  card.style.gridColumn = "1 / -1"; // the whole width of the grid
  card.hidden = false;
  say(
    "auth-msg",
    auth.token ? `The token was refused: ${describe(err)}` : "This daemon needs an API token.",
    "error",
  );
  $("auth-token").focus();
}

// Show the token form; resolves when a token is entered.
function askToken(err) {
  showTokenForm(err);
  return new Promise((resolve) => auth.waiters.push(resolve));
}

function useToken(event) {
  event.preventDefault();
  const value = $("auth-token").value.trim();
  if (!value) return;
  auth.token = value;
  try {
    sessionStorage.setItem(TOKEN_KEY, value);
  } catch {
    // storage disabled: kept for this page only
  }
  $("auth-token").value = "";
  $("auth-card").hidden = true;
  $("forget-token").hidden = false;
  say("auth-msg", "");
  const waiters = auth.waiters.splice(0);
  if (waiters.length) waiters.forEach((resolve) => resolve());
  else location.reload(); // refused later on: start again with the new token
}

function forgetToken() {
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // nothing stored
  }
  auth.token = "";
  location.reload();
}

// Run fn until it is not refused for want of a token (asking for one in between).
async function withAuth(fn) {
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) throw err;
      await askToken(err);
    }
  }
}

// --------------------------------------------------------------------------- REST

class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || `http_${status}`;
    this.hint = error.hint || null;
    this.details = error.details || null;
  }
}

function request(path, options = {}) {
  const url = path.startsWith("/") ? path : API + "/" + path;
  return fetch(url, { ...options, headers: authHeaders(options.headers || {}) });
}

async function errorOf(response) {
  const text = await response.text();
  try {
    return new ApiError(response.status, (text && JSON.parse(text).error) || {});
  } catch {
    return new ApiError(response.status, { message: text.slice(0, 200) });
  }
}

async function api(path, options = {}) {
  const response = await request(path, options);
  if (!response.ok) {
    const err = await errorOf(response);
    if (err.status === 401) showTokenForm(err);
    throw err;
  }
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

// Download an export (a plain link cannot send the token): fetch, then save the blob.
async function download(path, fallbackName) {
  const response = await request(path);
  if (!response.ok) throw await errorOf(response);
  const blob = await response.blob();
  const disposition = response.headers.get("content-disposition") || "";
  const named = /filename="([^"]+)"/.exec(disposition);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = named ? named[1] : fallbackName;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function postJson(path, data) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(data),
  });
}

function describe(err) {
  if (err instanceof ApiError) return err.hint ? `${err.message} (${err.hint})` : err.message;
  return err && err.message ? err.message : String(err);
}

function say(id, text, kind = "") {
  const el = $(id);
  el.textContent = text;
  el.dataset.kind = kind;
}

// ---------------------------------------------------------------------- microphone

// One shared microphone: opened while somebody listens (enrollment, streaming), closed
// when nobody does, so the browser's recording indicator is off when unused.
class Microphone {
  constructor() {
    this.listeners = new Set();
    this.ctx = null;
    this.media = null;
    this.opening = null;
  }

  get rate() {
    return this.ctx ? this.ctx.sampleRate : 0;
  }

  async listen(fn) {
    this.listeners.add(fn);
    try {
      await this.open();
    } catch (err) {
      this.listeners.delete(fn);
      throw err;
    }
    return () => {
      this.listeners.delete(fn);
      if (this.listeners.size === 0) this.close();
    };
  }

  async open() {
    if (this.ctx) return;
    if (!this.opening) this.opening = this._open().finally(() => (this.opening = null));
    await this.opening;
  }

  async _open() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error(
        "this browser gives no microphone access to this page: open it over https or " +
          "on localhost (e.g. through an SSH tunnel)",
      );
    }
    let media;
    try {
      media = await navigator.mediaDevices.getUserMedia({
        audio: {
          channelCount: 1,
          echoCancellation: false,
          noiseSuppression: false,
          autoGainControl: false,
        },
        video: false,
      });
    } catch (err) {
      const denied = err && (err.name === "NotAllowedError" || err.name === "SecurityError");
      throw new Error(
        denied
          ? "microphone access was refused: allow it in the browser's site settings"
          : `no microphone: ${err && err.message ? err.message : err}`,
      );
    }
    const ctx = new AudioContext();
    const source = ctx.createMediaStreamSource(media);
    const mute = ctx.createGain();
    mute.gain.value = 0;
    mute.connect(ctx.destination);
    const deliver = (block) => {
      for (const fn of this.listeners) fn(block, ctx.sampleRate);
    };
    let node;
    if (ctx.audioWorklet && typeof AudioWorkletNode === "function") {
      await ctx.audioWorklet.addModule("/static/capture.js");
      node = new AudioWorkletNode(ctx, "voiceid-capture", { numberOfOutputs: 1 });
      node.port.onmessage = (e) => deliver(e.data);
    } else {
      node = ctx.createScriptProcessor(2048, 1, 1);
      node.onaudioprocess = (e) => deliver(new Float32Array(e.inputBuffer.getChannelData(0)));
    }
    source.connect(node);
    node.connect(mute);
    if (ctx.state === "suspended") await ctx.resume();
    this.ctx = ctx;
    this.media = media;
    this.node = node;
  }

  close() {
    if (!this.ctx) return;
    for (const track of this.media.getTracks()) track.stop();
    this.ctx.close();
    this.ctx = null;
    this.media = null;
    this.node = null;
  }
}

const mic = new Microphone();

function concat(blocks) {
  const n = blocks.reduce((s, b) => s + b.length, 0);
  const out = new Float32Array(n);
  let i = 0;
  for (const b of blocks) {
    out.set(b, i);
    i += b.length;
  }
  return out;
}

// Resample with the browser's own resampler (an OfflineAudioContext at the target rate).
async function resample(samples, rateIn, rateOut) {
  if (rateIn === rateOut || samples.length === 0) return samples;
  const frames = Math.max(1, Math.round((samples.length * rateOut) / rateIn));
  const offline = new OfflineAudioContext(1, frames, rateOut);
  const buffer = offline.createBuffer(1, samples.length, rateIn);
  buffer.copyToChannel(samples, 0);
  const src = offline.createBufferSource();
  src.buffer = buffer;
  src.connect(offline.destination);
  src.start();
  const rendered = await offline.startRendering();
  return rendered.getChannelData(0);
}

function toInt16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const v = Math.max(-1, Math.min(1, samples[i]));
    out[i] = v < 0 ? v * 0x8000 : v * 0x7fff;
  }
  return out;
}

function wav(samples, rate) {
  const pcm = toInt16(samples);
  const view = new DataView(new ArrayBuffer(44 + pcm.length * 2));
  const text = (at, s) => [...s].forEach((c, i) => view.setUint8(at + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + pcm.length * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true); // fmt chunk size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true); // bytes per second
  view.setUint16(32, 2, true); // block align
  view.setUint16(34, 16, true); // bits per sample
  text(36, "data");
  view.setUint32(40, pcm.length * 2, true);
  for (let i = 0; i < pcm.length; i++) view.setInt16(44 + i * 2, pcm[i], true);
  return new Blob([view.buffer], { type: "audio/wav" });
}

function rms(block) {
  let s = 0;
  for (let i = 0; i < block.length; i++) s += block[i] * block[i];
  return Math.sqrt(s / Math.max(1, block.length));
}

// ---------------------------------------------------------------------- enrollment

const FEEDBACK_TEXT = {
  ok: "accepted",
  no_voice: "no voice",
  too_quiet: "too quiet",
  clipping: "clipping",
  too_short: "too short",
  inconsistent: "sounds like someone else",
  duplicate: "already recorded",
};

const enroll = {
  id: null,
  name: "",
  release: null, // stops listening to the microphone
  recording: null, // {blocks, rate, started, timer}
  count: 0,
  levelAt: 0,
};

function showLevel(block) {
  const now = performance.now();
  if (now - enroll.levelAt < 50) return;
  enroll.levelAt = now;
  const db = 20 * Math.log10(rms(block) + 1e-9);
  const pct = Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
  $("level-bar").style.width = `${pct.toFixed(0)}%`;
  const rec = enroll.recording;
  if (rec) $("rec-time").textContent = `${((now - rec.started) / 1000).toFixed(1)} s`;
}

function onEnrollAudio(block, rate) {
  showLevel(block);
  if (enroll.recording) {
    enroll.recording.blocks.push(block.slice());
    enroll.recording.rate = rate;
  }
}

function showProgress(p) {
  const bar = $("progress");
  bar.value = p.percent;
  bar.setAttribute("aria-valuetext", `${p.percent} percent`);
  $("progress-text").textContent =
    `${p.percent}% · ${p.utterances}/${p.required_utterances} recordings · ` +
    `${p.collected_s.toFixed(1)}/${p.required_s} s of speech` +
    (p.complete ? " · complete" : "");
  $("enroll-save").disabled = !p.complete;
}

function setEnrolling(on) {
  $("enroll-panel").hidden = !on;
  $("enroll-name").disabled = on;
  $("enroll-replace").disabled = on;
  $("enroll-start").disabled = on;
}

async function startEnrollment(event) {
  event.preventDefault();
  const name = $("enroll-name").value.trim();
  if (!name) return;
  say("enroll-msg", "Starting…");
  try {
    const session = await postJson("enrollments", {
      name,
      replace: $("enroll-replace").checked,
    });
    enroll.id = session.id;
    enroll.name = session.name;
    enroll.count = 0;
    $("feedback").replaceChildren();
    showProgress(session.progress);
    setEnrolling(true);
    say("enroll-msg", "Asking for the microphone…");
    enroll.release = await mic.listen(onEnrollAudio);
    say("enroll-msg", `Enrolling ${session.name}: press Record and read a sentence aloud.`);
    $("record").focus();
  } catch (err) {
    say("enroll-msg", describe(err), "error");
    if (enroll.id) await cancelEnrollment();
  }
}

function toggleRecording() {
  if (enroll.recording) {
    stopRecording();
    return;
  }
  enroll.recording = {
    blocks: [],
    rate: mic.rate,
    started: performance.now(),
    timer: setTimeout(stopRecording, MAX_RECORD_S * 1000),
  };
  const btn = $("record");
  btn.textContent = "Stop";
  btn.setAttribute("aria-pressed", "true");
  btn.classList.add("on");
  say("enroll-msg", "Recording… press Stop when done.");
}

async function stopRecording() {
  const rec = enroll.recording;
  if (!rec) return;
  enroll.recording = null;
  clearTimeout(rec.timer);
  const btn = $("record");
  btn.textContent = "Checking…";
  btn.setAttribute("aria-pressed", "false");
  btn.classList.remove("on");
  btn.disabled = true;
  $("rec-time").textContent = "";
  try {
    const samples = await resample(concat(rec.blocks), rec.rate, TARGET_RATE);
    enroll.count += 1;
    const form = new FormData();
    form.append("file", wav(samples, TARGET_RATE), `recording-${enroll.count}.wav`);
    const result = await api(`enrollments/${encodeURIComponent(enroll.id)}/utterances`, {
      method: "POST",
      body: form,
    });
    addFeedback(enroll.count, samples.length / TARGET_RATE, result);
    showProgress(result.progress);
    say(
      "enroll-msg",
      result.progress.complete
        ? "Enough speech: save the profile (or record more for a better one)."
        : `Still needed: ${result.progress.missing}.`,
    );
  } catch (err) {
    say("enroll-msg", describe(err), "error");
    if (err instanceof ApiError && err.code === "enrollment_not_found") resetEnrollment();
  } finally {
    btn.textContent = "Record";
    btn.disabled = false;
  }
}

function addFeedback(n, seconds, r) {
  const li = document.createElement("li");
  li.className = r.accepted ? "ok" : "bad";
  const codes = r.feedback.map((c) => FEEDBACK_TEXT[c] || c).join(", ");
  const head = document.createElement("strong");
  head.textContent = `${r.accepted ? "✓" : "✗"} Recording ${n}: ${codes}`;
  const info = document.createElement("span");
  info.textContent = ` — ${r.speech_s.toFixed(1)}\u00a0s of speech in ${seconds.toFixed(1)}\u00a0s`;
  li.append(head, info);
  if (!r.accepted) {
    const advice = document.createElement("div");
    advice.className = "advice";
    advice.textContent = r.advice.join("; ");
    li.append(advice);
  }
  li.dataset.feedback = r.feedback.join(",");
  $("feedback").append(li);
}

function resetEnrollment() {
  if (enroll.recording) clearTimeout(enroll.recording.timer);
  enroll.recording = null;
  enroll.id = null;
  if (enroll.release) enroll.release();
  enroll.release = null;
  $("level-bar").style.width = "0";
  setEnrolling(false);
}

async function saveProfile() {
  if (enroll.recording) await stopRecording();
  $("enroll-save").disabled = true;
  try {
    const profile = await postJson(`enrollments/${encodeURIComponent(enroll.id)}/finish`, {});
    resetEnrollment();
    $("enroll-name").value = "";
    say("enroll-msg", `Saved ${profile.name}: ${profile.speech_s.toFixed(1)} s of speech.`, "ok");
    await loadProfiles();
  } catch (err) {
    $("enroll-save").disabled = false;
    say("enroll-msg", describe(err), "error");
  }
}

async function cancelEnrollment() {
  const id = enroll.id;
  resetEnrollment();
  say("enroll-msg", "Enrollment cancelled: nothing was saved.");
  if (id) {
    try {
      await api(`enrollments/${encodeURIComponent(id)}`, { method: "DELETE" });
    } catch {
      // already expired: nothing to cancel
    }
  }
}

// ------------------------------------------------------------------------ profiles

async function loadProfiles() {
  try {
    const { profiles } = await api("profiles");
    state.profiles = profiles;
    renderProfiles();
    for (const view of state.streams.values()) renderStream(view);
  } catch (err) {
    say("profiles-msg", describe(err), "error");
  }
}

function renderProfiles() {
  const body = $("profiles");
  body.replaceChildren();
  for (const p of state.profiles) {
    const tr = document.createElement("tr");
    const who = document.createElement("th");
    who.scope = "row";
    who.textContent = p.name;
    if (!p.usable) {
      const note = document.createElement("div");
      note.className = "note";
      note.textContent = `enrolled with ${p.model}: re-enroll to use it`;
      who.append(note);
    }
    tr.append(who);
    for (const text of [String(p.utterances), `${p.speech_s.toFixed(1)} s`]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      tr.append(cell);
    }
    const actions = document.createElement("td");
    actions.className = "actions";
    const link = document.createElement("button");
    link.type = "button";
    link.textContent = "Export";
    link.setAttribute("aria-label", `Export ${p.name}`);
    const path = `profiles/${encodeURIComponent(p.id)}/export`;
    link.addEventListener("click", () => exportProfiles(path));
    const del = document.createElement("button");
    del.type = "button";
    del.className = "danger";
    del.textContent = "Delete";
    del.setAttribute("aria-label", `Delete ${p.name}`);
    del.addEventListener("click", () => deleteProfile(p));
    actions.append(link, del);
    tr.append(actions);
    body.append(tr);
  }
  $("no-profiles").hidden = state.profiles.length > 0;
  $("profiles-table").hidden = state.profiles.length === 0;
}

async function exportProfiles(path) {
  try {
    await download(path, "voiceid-profiles.json");
  } catch (err) {
    say("profiles-msg", describe(err), "error");
  }
}

async function deleteProfile(p) {
  if (!window.confirm(`Delete ${p.name}? Their voice profile is erased.`)) return;
  try {
    await api(`profiles/${encodeURIComponent(p.id)}`, { method: "DELETE" });
    say("profiles-msg", `Deleted ${p.name}.`, "ok");
  } catch (err) {
    say("profiles-msg", describe(err), "error");
  }
  await loadProfiles();
}

// -------------------------------------------------------------------- live streams

function wsBase() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const host = location.hostname.includes(":") ? `[${location.hostname}]` : location.hostname;
  return `${proto}//${host}:${state.config.websocket.port}`;
}

function connectEvents() {
  const ws = state.config && state.config.websocket;
  if (!ws || !ws.enabled || !ws.port) {
    say("events-state", "WebSocket off", "off");
    return;
  }
  const socket = new WebSocket(withToken(wsBase() + ws.events_path));
  state.eventsSocket = socket;
  socket.onopen = () => {
    state.backoffMs = 1000;
    say("events-state", "live", "on");
  };
  socket.onmessage = (m) => {
    try {
      onEvent(JSON.parse(m.data));
    } catch (err) {
      console.error("bad event", err);
    }
  };
  socket.onclose = () => {
    say("events-state", "reconnecting…", "off");
    setTimeout(connectEvents, state.backoffMs);
    state.backoffMs = Math.min(state.backoffMs * 2, 15000);
  };
}

function streamView(name) {
  let view = state.streams.get(name);
  if (view) return view;
  const el = document.createElement("article");
  el.className = "stream";
  el.dataset.stream = name;
  const id = `stream-${state.streams.size + 1}`;
  el.setAttribute("aria-labelledby", id);
  const title = document.createElement("h3");
  title.id = id;
  title.textContent = name;
  const badge = document.createElement("span");
  badge.className = "badge";
  title.append(" ", badge);
  const speaker = document.createElement("p");
  speaker.className = "speaker";
  speaker.setAttribute("role", "status");
  speaker.setAttribute("aria-live", "polite");
  const bars = document.createElement("ul");
  bars.className = "bars";
  bars.setAttribute("aria-label", `Scores in ${name}`);
  const fig = document.createElement("figure");
  fig.className = "history";
  const figChart = document.createElement("div");
  const cap = document.createElement("figcaption");
  cap.textContent =
    `Scores (0 to 1) over the last ${HISTORY_S} s of audio; ` +
    `dashed line: the threshold ${state.threshold.toFixed(2)}`;
  fig.append(figChart, cap);
  el.append(title, speaker, bars, fig);
  $("streams").append(el);
  $("no-streams").hidden = true;
  view = { name, el, badge, speaker, bars, chart: figChart, current: null, unknown: false, ended: false,
    time: 0, scores: new Map(), removeTimer: null };
  state.streams.set(name, view);
  return view;
}

function recordScore(view, name, score, t) {
  if (score === null || score === undefined) return;
  let s = view.scores.get(name);
  if (!s) {
    s = { value: score, history: [] };
    view.scores.set(name, s);
  }
  s.value = score;
  s.history.push([t, score]);
  while (s.history.length && s.history[0][0] < t - HISTORY_S) s.history.shift();
}

function onEvent(e) {
  if (!e || !e.stream) return; // "subscribed"
  const view = streamView(e.stream);
  if (view.ended && e.type !== "speaker_ended") {
    view.ended = false; // a new stream with the same name
    clearTimeout(view.removeTimer);
    view.scores.clear();
  }
  const t = e.stream_time_s || 0;
  view.time = Math.max(view.time, t);
  switch (e.type) {
    case "speaker_started":
    case "speaker_changed":
      view.current = e.name;
      view.unknown = false;
      recordScore(view, e.name, e.score, t);
      break;
    case "unknown_speaker":
      view.current = null;
      view.unknown = true;
      break;
    case "speaker_ended":
      view.current = null;
      view.unknown = false;
      if (e.reason === "closed") endStream(view);
      break;
    case "scores":
      for (const m of e.top) recordScore(view, m.name, m.score, t);
      break;
    default:
      return;
  }
  renderStream(view);
}

function endStream(view) {
  view.ended = true;
  clearTimeout(view.removeTimer);
  view.removeTimer = setTimeout(() => {
    view.el.remove();
    state.streams.delete(view.name);
    $("no-streams").hidden = state.streams.size > 0;
  }, ENDED_KEEP_MS);
}

const PALETTE = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000"];

function colorOf(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.codePointAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

// Scores of the last HISTORY_S seconds of stream time, one line per person.
function chart(view, names) {
  const w = 600;
  const h = 120;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("aria-hidden", "true");
  const y = (v) => (h - 4 - Math.max(0, Math.min(1, v)) * (h - 8)).toFixed(1);
  const x = (t) => (w - 6 - ((view.time - t) / HISTORY_S) * (w - 6)).toFixed(1);
  const line = (cls, x1, y1, x2, y2) => {
    const el = document.createElementNS(ns, "line");
    Object.entries({ x1, y1, x2, y2 }).forEach(([k, v]) => el.setAttribute(k, String(v)));
    el.setAttribute("class", cls);
    svg.append(el);
  };
  for (const v of [0.25, 0.5, 0.75]) line("grid", 0, y(v), w, y(v));
  line("thr", 0, y(state.threshold), w, y(state.threshold));
  for (const n of names) {
    const s = view.scores.get(n);
    if (!s || s.history.length === 0) continue;
    const pts = s.history.map(([t, v]) => `${x(t)},${y(v)}`);
    const poly = document.createElementNS(ns, "polyline");
    poly.setAttribute("points", pts.join(" "));
    poly.setAttribute("class", "series");
    poly.setAttribute("stroke", colorOf(n));
    const [t, v] = s.history[s.history.length - 1];
    const dot = document.createElementNS(ns, "circle");
    dot.setAttribute("cx", x(t));
    dot.setAttribute("cy", y(v));
    dot.setAttribute("r", "4");
    dot.setAttribute("fill", colorOf(n));
    svg.append(poly, dot);
  }
  return svg;
}

function renderStream(view) {
  view.el.classList.toggle("ended", view.ended);
  view.badge.textContent = view.ended ? "ended" : "live";
  const sp = view.speaker;
  if (view.current) {
    sp.textContent = view.current;
    sp.dataset.state = "known";
  } else if (view.unknown) {
    sp.textContent = "Unknown speaker";
    sp.dataset.state = "unknown";
  } else {
    sp.textContent = view.ended ? "Stream ended" : "Nobody speaking";
    sp.dataset.state = "none";
  }
  const names = new Set(state.profiles.filter((p) => p.usable).map((p) => p.name));
  for (const n of view.scores.keys()) names.add(n);
  const rows = [...names].sort((a, b) => {
    const sa = view.scores.has(a) ? view.scores.get(a).value : -2;
    const sb = view.scores.has(b) ? view.scores.get(b).value : -2;
    return sb - sa || a.localeCompare(b);
  });
  view.bars.replaceChildren(
    ...rows.map((n) => {
      const s = view.scores.get(n);
      const li = document.createElement("li");
      li.dataset.name = n;
      if (n === view.current) li.className = "current";
      const label = document.createElement("span");
      label.className = "who";
      const dot = document.createElement("span");
      dot.className = "dot";
      dot.style.background = colorOf(n);
      dot.setAttribute("aria-hidden", "true");
      label.append(dot, n);
      const meter = document.createElement("div");
      meter.className = "meter";
      meter.setAttribute("role", "meter");
      meter.setAttribute("aria-label", `${n} score`);
      meter.setAttribute("aria-valuemin", "0");
      meter.setAttribute("aria-valuemax", "1");
      const fill = document.createElement("div");
      fill.className = "fill";
      const value = s ? Math.max(0, Math.min(1, s.value)) : 0;
      fill.style.width = `${(value * 100).toFixed(1)}%`;
      if (s) {
        meter.setAttribute("aria-valuenow", s.value.toFixed(2));
        if (s.value >= state.threshold) fill.classList.add("above");
      } else {
        meter.setAttribute("aria-valuetext", "no score yet");
      }
      const mark = document.createElement("div");
      mark.className = "thr";
      mark.style.left = `${(Math.max(0, Math.min(1, state.threshold)) * 100).toFixed(1)}%`;
      meter.append(fill, mark);
      const num = document.createElement("span");
      num.className = "num";
      num.textContent = s ? s.value.toFixed(2) : "–";
      li.append(label, meter, num);
      return li;
    }),
  );
  view.chart.replaceChildren(chart(view, rows));
}

// Open streams from the REST API: new ones appear before their first event, and a
// stream that closed without a current speaker (no final event) is marked ended.
async function loadStreams() {
  try {
    const { streams } = await api("streams");
    const open = new Set(streams.map((s) => s.name));
    for (const name of open) {
      const view = streamView(name);
      if (view.ended) {
        view.ended = false;
        clearTimeout(view.removeTimer);
      }
      renderStream(view);
    }
    for (const view of state.streams.values()) {
      if (!open.has(view.name) && !view.ended) {
        view.current = null;
        view.unknown = false;
        endStream(view);
        renderStream(view);
      }
    }
  } catch {
    // not fatal: streams appear with their first event
  }
}

// ------------------------------------------------------------- stream my microphone

const live = { socket: null, release: null, dropped: 0 };

function setStreaming(on) {
  const btn = $("stream-mic");
  btn.textContent = on ? "Stop streaming" : "Stream my microphone";
  btn.setAttribute("aria-pressed", on ? "true" : "false");
  btn.classList.toggle("on", on);
  $("mic-stream").disabled = on;
}

async function toggleMicStream(event) {
  event.preventDefault();
  if (live.socket) {
    stopMicStream();
    return;
  }
  const input = $("mic-stream");
  if (!input.checkValidity()) {
    say("mic-msg", "Stream name: 1-64 letters, digits, _ . or -", "error");
    input.focus();
    return;
  }
  if (!state.config || !state.config.websocket.enabled) {
    say("mic-msg", "The daemon's WebSocket server is off (websocket.enabled).", "error");
    return;
  }
  const name = input.value;
  say("mic-msg", "Asking for the microphone…");
  let release;
  const pending = [];
  let ready = false;
  const url = withToken(wsBase() + state.config.websocket.stream_path);
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  live.socket = socket;
  live.dropped = 0;
  setStreaming(true);
  const send = (block) => {
    if (socket.readyState !== WebSocket.OPEN) return;
    if (socket.bufferedAmount > MAX_BUFFERED) {
      live.dropped += 1;
      return;
    }
    socket.send(toInt16(block).buffer);
  };
  try {
    release = await mic.listen((block) => (ready ? send(block) : pending.push(block.slice())));
  } catch (err) {
    socket.close();
    live.socket = null;
    setStreaming(false);
    say("mic-msg", describe(err), "error");
    return;
  }
  live.release = release;
  socket.onopen = () => {
    socket.send(
      JSON.stringify({
        type: "start",
        stream: name,
        sample_rate: mic.rate,
        encoding: "pcm_s16le",
        channels: 1,
      }),
    );
  };
  if (socket.readyState === WebSocket.OPEN) socket.onopen();
  socket.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === "ready") {
      ready = true;
      pending.splice(0).forEach(send);
      say("mic-msg", `Streaming your microphone as “${name}”.`, "ok");
    } else if (msg.type === "error") {
      say("mic-msg", msg.hint ? `${msg.message} (${msg.hint})` : msg.message, "error");
    }
  };
  socket.onclose = (e) => {
    if (live.release) live.release();
    live.release = null;
    live.socket = null;
    setStreaming(false);
    const view = state.streams.get(name);
    if (ready && view && !view.ended) {
      view.current = null;
      view.unknown = false;
      endStream(view);
      renderStream(view);
    }
    if (e.code === 1000) say("mic-msg", "Streaming stopped.");
    else if ($("mic-msg").dataset.kind !== "error") {
      say("mic-msg", `Stream closed (${e.code}${e.reason ? ": " + e.reason : ""}).`, "error");
    }
  };
  socket.onerror = () =>
    say(
      "mic-msg",
      "Cannot reach the daemon's WebSocket server (or it refused this page or its token: " +
        "streaming needs the stream scope).",
      "error",
    );
}

function stopMicStream() {
  const socket = live.socket;
  if (live.release) live.release();
  live.release = null;
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ type: "stop" })); // the server closes after the last events
  } else if (socket) {
    socket.close();
  }
}

// -------------------------------------------------------------------------- start

async function waitReady() {
  for (;;) {
    try {
      const r = await api("/readyz");
      return r;
    } catch (err) {
      say("status", `Not ready: ${describe(err)}`, "error");
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

async function main() {
  const random = new Uint8Array(2);
  crypto.getRandomValues(random);
  $("mic-stream").value = `browser-${[...random].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
  $("max-rec").textContent = String(MAX_RECORD_S);
  $("enroll-form").addEventListener("submit", startEnrollment);
  $("record").addEventListener("click", toggleRecording);
  $("enroll-save").addEventListener("click", saveProfile);
  $("enroll-cancel").addEventListener("click", cancelEnrollment);
  $("mic-form").addEventListener("submit", toggleMicStream);
  $("auth-form").addEventListener("submit", useToken);
  $("forget-token").addEventListener("click", forgetToken);
  $("forget-token").hidden = !auth.token;
  $("export-all").addEventListener("click", () => exportProfiles("export"));
  window.addEventListener("pagehide", () => {
    stopMicStream();
    if (enroll.id) {
      const url = `${API}/enrollments/${encodeURIComponent(enroll.id)}`;
      fetch(url, { method: "DELETE", keepalive: true, headers: authHeaders() }).catch(() => {});
    }
  });

  await waitReady();
  try {
    const both = () => Promise.all([api("config"), api("model")]);
    [state.config, state.model] = await withAuth(both);
  } catch (err) {
    say("status", describe(err), "error");
    return;
  }
  state.threshold = state.model.stream_threshold;
  say("status", `Ready · ${state.model.name}`, "ok");
  $("model-line").textContent =
    `${state.model.name} on ${state.model.provider.replace("ExecutionProvider", "")} · ` +
    `live threshold ${state.model.stream_threshold.toFixed(2)}`;
  await loadProfiles();
  await loadStreams();
  connectEvents();
  setInterval(loadProfiles, 15000);
  setInterval(loadStreams, 5000);
}

document.addEventListener("DOMContentLoaded", main);
