// kura arena page. Everything the server or a rater wrote is set with textContent: never parsed as HTML.
"use strict";
let csrf = "", battle = null, busy = false;
const $ = (id) => document.getElementById(id);

function say(text) { $("status").textContent = text || ""; }

async function post(path, data) {
  const r = await fetch(path, {method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}, body: JSON.stringify(data || {})});
  if (!r.ok) {
    let msg = r.status + "";
    try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return r;
}

function signedIn(me) {
  csrf = me.csrf;
  $("who").textContent = "signed in as " + me.name;
  $("signin").hidden = true;
  $("arena").hidden = false;
  $("draw").hidden = !me.prompt_set;
}

async function signIn() {
  try {
    const r = await post("/api/login", {token: $("token").value});
    $("token").value = "";
    signedIn(await r.json());
    say("");
  } catch (e) { say(e.message); }
}

function newBattle() {
  battle = null;
  $("conversation").textContent = "";
  $("answer-a").textContent = "";
  $("answer-b").textContent = "";
  $("votes").hidden = true;
  $("reveal").hidden = true;
  $("reveal").textContent = "";
  $("prompt").disabled = false;
  $("send").disabled = false;
}

function keepTurn(prompt) {
  const div = document.createElement("div");
  div.className = "turn";
  div.textContent = "You: " + prompt;
  $("conversation").appendChild(div);
}

async function streamAnswers() {
  const r = await post("/api/battle/" + battle + "/stream", {});
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = "", complete = false;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buf += decoder.decode(value, {stream: true});
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const ev = JSON.parse(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
      if (ev.delta) $("answer-" + ev.side).textContent += ev.delta;
      if (ev.error) say(ev.error);
      if (ev.complete) complete = true;
    }
  }
  return complete;
}

async function send() {
  const prompt = $("prompt").value;
  if (!prompt.trim() || busy) return;
  busy = true;
  $("send").disabled = true;
  try {
    if (battle === null) {
      const r = await post("/api/battle", {prompt: prompt, category: $("prompt").dataset.category || "free"});
      battle = (await r.json()).battle;
    } else {
      await post("/api/battle/" + battle + "/turn", {prompt: prompt});
    }
    keepTurn(prompt);
    $("prompt").value = "";
    delete $("prompt").dataset.category;
    $("answer-a").textContent = "";
    $("answer-b").textContent = "";
    $("votes").hidden = true;
    if (await streamAnswers()) { $("votes").hidden = false; say(""); }
  } catch (e) { say(e.message); }
  busy = false;
  $("send").disabled = false;
}

async function vote(winner) {
  try {
    const r = await post("/api/battle/" + battle + "/vote", {winner: winner});
    const who = await r.json();
    $("reveal").textContent = "Model A: " + who.model_a + " / Model B: " + who.model_b;
    $("reveal").hidden = false;
    $("votes").hidden = true;
    $("prompt").disabled = true;
    $("send").disabled = true;
  } catch (e) { say(e.message); }
}

async function draw() {
  try {
    const q = await (await post("/api/draw", {})).json();
    $("prompt").value = q.prompt;
    $("prompt").dataset.category = q.category;
  } catch (e) { say(e.message); }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("signin-button").addEventListener("click", signIn);
  $("send").addEventListener("click", send);
  $("new-battle").addEventListener("click", newBattle);
  $("draw").addEventListener("click", draw);
  for (const b of document.querySelectorAll("#votes button")) {
    b.addEventListener("click", () => vote(b.dataset.winner));
  }
  const r = await fetch("/api/me", {credentials: "same-origin"});
  if (r.ok) signedIn(await r.json());
});
