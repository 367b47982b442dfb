// The Stylize page: every action is a call to the HTTP API (/v1/...), with the token from sessionStorage.
"use strict";

const $ = (id) => document.getElementById(id);
const GATYS = "__gatys__";
const FAMILY = {
  MODEL_FAMILY_PER_STYLE: "per-style",
  MODEL_FAMILY_MULTI_STYLE: "multi-style",
  MODEL_FAMILY_ARBITRARY: "arbitrary style",
};
const state = { models: new Map(), photo: null, paintings: [], job: null, watching: null, shownPreview: "" };

// Calls.

function authHeaders(extra = {}) {
  const token = sessionStorage.getItem("stylize-token");
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
  if (!response.ok) {
    let body = {};
    try { body = await response.json(); } catch (_) { /* not JSON: keep the status */ }
    const error = new Error(body.message || response.statusText || "the request failed");
    error.code = body.code || `HTTP ${response.status}`;
    throw error;
  }
  return response;
}

function showError(error) {
  $("error").textContent = `${error.code ? error.code + ": " : ""}${error.message}`;
  $("error").hidden = false;
}

function clearError() { $("error").hidden = true; $("error").textContent = ""; }

// Models and their controls.

async function loadModels() {
  const select = $("model");
  try {
    const { models } = await (await api("/v1/models")).json();
    state.models = new Map(models.map((model) => [model.name, model]));
    select.replaceChildren();
    for (const [family, label] of Object.entries(FAMILY)) {
      const group = document.createElement("optgroup");
      group.label = label;
      for (const model of models.filter((m) => m.family === family)) {
        group.append(new Option(model.name.replaceAll("_", " "), model.name));
      }
      if (group.children.length) select.append(group);
    }
    const slow = document.createElement("optgroup");
    slow.label = "optimisation";
    slow.append(new Option("Gatys (any painting, slow)", GATYS));
    select.append(slow);
    clearError();
  } catch (error) {
    select.replaceChildren(new Option("no models: see the message above", ""));
    showError(error);
  }
  renderStyleControls();
}

function kindOf(name) {
  if (name === GATYS) return "gatys";
  return FAMILY[state.models.get(name)?.family] || "";
}

function renderStyleControls() {
  const name = $("model").value;
  const kind = kindOf(name);
  const model = state.models.get(name);
  $("model-info").textContent = kind === "gatys"
    ? "Gatys et al. 2015: optimises the image itself; runs as a job on a worker."
    : model ? `${kind} · ${model.description || model.styles.join(", ") || "bring your own painting"} · ${model.provider}` : "";
  const sliders = $("style-sliders");
  sliders.replaceChildren();
  sliders.hidden = kind !== "multi-style";
  if (kind === "multi-style") {
    model.styles.forEach((style, index) => sliders.append(slider(style, index === 0 ? 1 : 0, "style-weight")));
  }
  $("paintings").hidden = kind !== "arbitrary style" && kind !== "gatys";
  $("job-options").hidden = kind !== "gatys";
  $("strength-field").hidden = kind === "gatys";
  $("max-side-field").hidden = kind === "gatys";
  $("run").textContent = kind === "gatys" ? "Start job" : "Stylise";
  updateRun();
}

function slider(label, value, className) {
  const row = document.createElement("label");
  const text = document.createElement("span");
  text.textContent = label.replaceAll("_", " ");
  const input = document.createElement("input");
  Object.assign(input, { type: "range", min: 0, max: 1, step: 0.05, value, className });
  input.dataset.style = label;
  const output = document.createElement("output");
  output.textContent = Number(value).toFixed(2);
  input.addEventListener("input", () => { output.textContent = Number(input.value).toFixed(2); });
  row.append(text, input, output);
  return row;
}

function renderPaintings() {
  const list = $("painting-list");
  list.replaceChildren();
  state.paintings.forEach((painting, index) => {
    const item = document.createElement("li");
    const thumb = document.createElement("img");
    thumb.src = painting.url;
    thumb.alt = painting.file.name;
    const weight = slider(painting.file.name, painting.weight, "painting-weight").querySelector("input");
    weight.addEventListener("input", () => { painting.weight = Number(weight.value); });
    const remove = document.createElement("button");
    remove.textContent = "×";
    remove.title = "remove";
    remove.addEventListener("click", () => { state.paintings.splice(index, 1); renderPaintings(); });
    item.append(thumb, weight, remove);
    list.append(item);
  });
  updateRun();
}

function updateRun() {
  const kind = kindOf($("model").value);
  const needsPainting = kind === "arbitrary style" || kind === "gatys";
  $("run").disabled = !state.photo || !kind || (needsPainting && !state.paintings.length) || Boolean(state.job);
}

// Files: click or drop.

function acceptFiles(dropId, inputId, onFiles) {
  const drop = $(dropId);
  $(inputId).addEventListener("change", (event) => { onFiles([...event.target.files]); event.target.value = ""; });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    onFiles([...event.dataTransfer.files].filter((file) => file.type.startsWith("image/")));
  });
}

function setPhoto([file]) {
  if (!file) return;
  state.photo = file;
  const img = $("photo-img");
  img.onerror = () => { img.hidden = true; };  // not an image the browser can show: the server will say why
  img.src = URL.createObjectURL(file);
  img.hidden = false;
  $("photo-frame").querySelector(".placeholder").hidden = true;
  $("photo-drop").querySelector(".drop-text").textContent = file.name;
  updateRun();
}

function addPaintings(files) {
  for (const file of files) state.paintings.push({ file, url: URL.createObjectURL(file), weight: 1 });
  renderPaintings();
}

// Results.

function showResult(blob, caption, filename) {
  const url = URL.createObjectURL(blob);
  const img = $("result-img");
  img.src = url;
  img.hidden = false;
  img.dataset.caption = caption;
  $("result-frame").querySelector(".placeholder").hidden = true;
  $("result-caption").textContent = caption;
  Object.assign($("download"), { href: url, download: filename, hidden: false });
}

function serverTiming(header) {
  const stages = {};
  for (const part of (header || "").split(",")) {
    const [name, ...params] = part.trim().split(";");
    const dur = params.find((param) => param.trim().startsWith("dur="));
    if (name && dur) stages[name] = Number(dur.split("=")[1]);
  }
  return stages;
}

function busy(on) {
  $("result-frame").classList.toggle("busy", on);
  document.body.dataset.busy = on ? "1" : "";
}

async function stylize() {
  const name = $("model").value;
  const kind = kindOf(name);
  const query = new URLSearchParams({
    strength: $("strength").value,
    preserve_color: $("preserve-color").checked,
    max_side: $("max-side").value,
  });
  let body = state.photo;
  const headers = {};
  if (kind === "multi-style") {
    for (const input of document.querySelectorAll(".style-weight")) {
      if (Number(input.value) > 0) query.append("style", `${input.dataset.style}:${input.value}`);
    }
  }
  if (kind === "arbitrary style") {
    body = new FormData();
    body.append("content", state.photo);
    for (const painting of state.paintings) {
      body.append("style", painting.file);
      body.append("style_weight", painting.weight);
    }
  } else {
    headers["Content-Type"] = state.photo.type || "image/jpeg";
  }
  const started = performance.now();
  const response = await api(`/v1/models/${encodeURIComponent(name)}:stylize?${query}`, {
    method: "POST", body, headers,
  });
  const blob = await response.blob();
  const roundTrip = performance.now() - started;
  const t = serverTiming(response.headers.get("Server-Timing"));
  showResult(blob, name.replaceAll("_", " "), `${name}.png`);
  $("result-img").dataset.model = name;
  $("timing").textContent = `${Math.round(t.total)} ms on the server (inference ${Math.round(t.inference)} ms, ` +
    `decode ${Math.round(t.decode)} ms, encode ${Math.round(t.encode)} ms, queue ${Math.round(t.queue)} ms) · ` +
    `${Math.round(roundTrip)} ms round trip · ${response.headers.get("x-stylize-provider") || ""}`;
}

// Gatys jobs: submit, then follow /v1/jobs/{id}/events (Server-Sent Events, read with fetch to send the token).

async function startJob() {
  const form = new FormData();
  form.append("content", state.photo);
  for (const painting of state.paintings) form.append("style", painting.file);
  form.append("options", JSON.stringify({
    iterations: Number($("iterations").value),
    maxSide: Number($("job-size").value),
    previewEvery: Number($("preview-every").value),
    preserveColor: $("preserve-color").checked,
    styleWeights: state.paintings.map((painting) => painting.weight),
  }));
  const job = await (await api("/v1/jobs", { method: "POST", body: form })).json();
  state.job = job.id;
  state.shownPreview = "";
  $("timing").textContent = "";
  $("job").hidden = false;
  $("previews").replaceChildren();
  $("job-id").textContent = job.id;
  $("cancel").hidden = false;
  showJob(job);
  updateRun();
  await watchJob(job.id);
}

async function watchJob(id) {
  const response = await api(`/v1/jobs/${id}/events`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const name = /^event: (.*)$/m.exec(block)?.[1];
      const data = JSON.parse(/^data: (.*)$/m.exec(block)?.[1] || "{}");
      if (name === "error") throw Object.assign(new Error(data.message), { code: data.code });
      await showJob(data);
    }
  }
}

const shortState = (job) => (job.state || "").replace("JOB_STATE_", "");
const loss = (value) => (value === undefined ? "–" : Number(value).toPrecision(4));

async function showJob(job) {
  const jobState = shortState(job);
  const badge = $("job-state");
  badge.textContent = jobState;
  badge.className = `badge ${jobState}`;
  const percent = job.iterations ? (100 * job.iteration) / job.iterations : 0;
  $("progress-bar").style.width = `${percent.toFixed(1)}%`;
  $("progress-text").textContent = jobState === "QUEUED"
    ? `queued, ${job.queuePosition} ahead`
    : `iteration ${job.iteration} of ${job.iterations}${job.error ? " · " + job.error : ""}`;
  const losses = job.losses || {};
  $("losses").tBodies[0].rows[0].replaceChildren(...["content", "style", "tv", "total"].map((term) => {
    const cell = document.createElement("td");
    cell.textContent = loss(losses[term]);
    return cell;
  }));
  if (job.previewUrl && job.previewUrl !== state.shownPreview) {
    state.shownPreview = job.previewUrl;
    const blob = await (await api(job.previewUrl)).blob();
    const thumb = document.createElement("img");
    thumb.src = URL.createObjectURL(blob);
    thumb.alt = `preview at ${job.previewUrl.split("=").pop()}`;
    $("previews").append(thumb);
    showResult(blob, `preview, iteration ${job.iteration}`, "preview.png");
  }
  if (job.resultUrl) {
    const blob = await (await api(job.resultUrl)).blob();
    showResult(blob, `Gatys, ${job.iterations} iterations`, `gatys-${job.id}.png`);
  }
  if (["SUCCEEDED", "FAILED", "CANCELLED"].includes(jobState)) {
    const seconds = (Date.parse(job.finishedAt) - Date.parse(job.startedAt)) / 1000;
    if (seconds >= 0) {
      $("timing").textContent = `Gatys: ${job.iteration} iterations in ${seconds.toFixed(1)} s on ${job.worker}`;
    }
    endJob();
  }
}

function endJob() {
  state.job = null;
  $("cancel").hidden = true;
  busy(false);
  updateRun();
}

async function cancelJob() {
  if (!state.job) return;
  try {
    await api(`/v1/jobs/${state.job}`, { method: "DELETE" });
  } catch (error) {
    showError(error);
  }
}

async function run() {
  clearError();
  busy(true);
  try {
    if (kindOf($("model").value) === "gatys") await startJob();
    else await stylize();
  } catch (error) {
    showError(error);
    endJob();
  } finally {
    if (!state.job) busy(false);
  }
}

// Wiring.

$("token").value = sessionStorage.getItem("stylize-token") || "";
$("token").addEventListener("change", () => {
  sessionStorage.setItem("stylize-token", $("token").value.trim());
  loadModels();
});
$("model").addEventListener("change", renderStyleControls);
$("strength").addEventListener("input", () => { $("strength-value").textContent = Number($("strength").value).toFixed(2); });
$("run").addEventListener("click", run);
$("cancel").addEventListener("click", cancelJob);
acceptFiles("photo-drop", "photo-input", setPhoto);
acceptFiles("style-drop", "style-input", addPaintings);
loadModels();
