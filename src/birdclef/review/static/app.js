// birdclef review: plain JS over the JSON API (no build step).
"use strict";
const $ = (id) => document.getElementById(id);
const S = { classes: [], cls: null, kind: "top", queue: null, pos: 0, saves: 0 };

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const res = await fetch(path, opts);
  const data = await res.json();
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

function saveView() {
  localStorage.setItem("birdclef-review", JSON.stringify({ cls: S.cls, kind: S.kind }));
}

async function init() {
  const st = await api("/api/state");
  S.classes = st.classes;
  $("reviewer").textContent = st.reviewer ? `reviewer: ${st.reviewer}` : "";
  for (const c of st.classes) $("cls").add(new Option(`${c}${st.progress[c] ? ` (${st.progress[c]})` : ""}`, c));
  for (const k of st.kinds) $("kind").add(new Option(k, k));
  const saved = JSON.parse(localStorage.getItem("birdclef-review") || "{}");
  const params = new URLSearchParams(location.search);
  S.cls = params.get("class") || (st.classes.includes(saved.cls) ? saved.cls : st.classes[0]);
  S.kind = params.get("kind") || saved.kind || "top";
  $("cls").value = S.cls; $("kind").value = S.kind;
  $("retrain").disabled = !st.retrain.available;
  $("retrain-status").textContent = st.retrain.available ? "" : st.retrain.why;
  await loadQueue();
}

async function loadQueue() {
  saveView();
  S.queue = await api(`/api/queue?class=${encodeURIComponent(S.cls)}&kind=${S.kind}`);
  S.pos = S.queue.resume;
  show();
  loadPrecision();
}

function itemUrl(kind, it) {
  return `/api/${kind}?file=${encodeURIComponent(it.file)}&start_s=${it.start_s}&end_s=${it.end_s}`;
}

function show() {
  const q = S.queue, n = q.items.length;
  const answered = q.items.filter((it) => it.answer).length;
  $("progress").textContent = `${answered} / ${n} answered · item ${Math.min(S.pos + 1, n)} of ${n}`;
  $("progress").dataset.answered = answered;
  if (S.pos >= n) {
    $("meta").textContent = n ? `queue done: ${answered} answers for ${q.class} (${q.kind})` : "no windows to review";
    $("spec").removeAttribute("src"); $("audio").removeAttribute("src");
    $("item").className = ""; $("item").dataset.file = ""; return;
  }
  const it = q.items[S.pos];
  $("meta").textContent = `${q.class} · score ${it.score.toFixed(3)} · ${it.file} · ${it.start_s}–${it.end_s} s` +
    (it.answer ? ` · answered ${it.answer}` : "");
  $("item").className = it.answer ? `answered-${it.answer}` : "";
  $("item").dataset.file = it.file; $("item").dataset.start = it.start_s;
  $("spec").src = itemUrl("spectrogram", it);
  $("audio").src = itemUrl("audio", it);
  $("note").value = it.note || "";
  // warm the cache of the next item
  if (S.pos + 1 < n) { const nx = q.items[S.pos + 1]; new Image().src = itemUrl("spectrogram", nx); fetch(itemUrl("audio", nx)); }
}

async function answer(value) {
  const q = S.queue, it = q.items[S.pos];
  if (!it) return;
  $("status").textContent = "saving…";
  const res = await api("/api/answer", { class: q.class, file: it.file, start_s: it.start_s, end_s: it.end_s,
    answer: value, note: $("note").value, queue: q.kind, score: it.score, model: q.model });
  it.answer = value; it.note = $("note").value;
  S.saves += 1;
  $("status").textContent = `saved ${value} (${res.progress[q.class] || 0} answers for ${q.class})`;
  $("status").dataset.saves = S.saves;
  S.pos += 1;
  show();
  if (q.kind === "stratified") loadPrecision();
}

function move(delta) {
  S.pos = Math.max(0, Math.min(S.queue.items.length, S.pos + delta));
  show();
}

async function loadPrecision() {
  const t = $("target").value;
  const p = await api(`/api/precision?class=${encodeURIComponent(S.cls)}&target=${t}`);
  const body = $("prec").tBodies[0];
  body.innerHTML = "";
  const f = (x) => (x === null || x === undefined ? "–" : x.toFixed(2));
  for (const r of p.rows) {
    const row = body.insertRow();
    const interval = r.low === null || r.low === undefined ? "–" : `${f(r.low)}–${f(r.high)}`;
    for (const v of [f(r.threshold), r.population, r.reviewed, f(r.precision), interval]) row.insertCell().textContent = v;
  }
  $("threshold").textContent = p.threshold === null ? (p.note || "") : `threshold ${p.threshold.toFixed(3)}: ${p.note}`;
}

async function retrain() {
  $("retrain").disabled = true;
  $("retrain-status").textContent = "retraining…";
  try {
    const r = await api("/api/retrain", {});
    $("retrain-status").textContent = r.message;
    await loadQueue();
  } catch (e) {
    $("retrain-status").textContent = e.message;
  } finally {
    $("retrain").disabled = false;
  }
}

function play() {
  const a = $("audio");
  if (a.paused) a.play().catch(() => {}); else a.pause();
}

document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT" || e.ctrlKey || e.metaKey || e.altKey) return;
  const keys = { y: () => answer("yes"), n: () => answer("no"), u: () => answer("unsure"), b: () => move(-1),
    ArrowLeft: () => move(-1), ArrowRight: () => move(1), " ": play };
  if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
});
$("yes").onclick = () => answer("yes");
$("no").onclick = () => answer("no");
$("unsure").onclick = () => answer("unsure");
$("back").onclick = () => move(-1);
$("play").onclick = play;
$("retrain").onclick = retrain;
$("cls").onchange = () => { S.cls = $("cls").value; loadQueue(); };
$("kind").onchange = () => { S.kind = $("kind").value; loadQueue(); };
$("target").onchange = loadPrecision;
$("note").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); e.target.blur(); } });
init().catch((e) => { $("meta").textContent = `error: ${e.message}`; });
