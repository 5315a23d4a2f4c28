// The redifu page: a conversation typed as "Speaker: text" lines, sent to POST /predict, shown as
// coloured emotion labels, probability bars and (on request) the graph neighbours behind each.
"use strict";

// Dark enough for white text (contrast >= 4.5:1); other labels take the fallback colours in turn.
const EMOTION_COLOURS = {
  neutral: "#5b6472", joy: "#9a6700", happy: "#9a6700", happiness: "#9a6700", excited: "#b35900",
  surprise: "#8e44ad", sadness: "#1f5fbf", sad: "#1f5fbf", anger: "#b3261e", angry: "#b3261e",
  frustrated: "#a33c00", fear: "#2d6a4f", scared: "#2d6a4f", disgust: "#5c7a00", peaceful: "#00796b",
  powerful: "#6a1b9a", mad: "#b3261e",
};
const FALLBACK_COLOURS = ["#37474f", "#6d4c41", "#00695c", "#4527a0", "#ad1457", "#2e7d32", "#283593"];
const LINE_FORMAT = /^([^:]+?)\s*:\s*(\S.*)$/;

let labels = [];

function shorten(text, limit) {
  return text.length > limit ? text.slice(0, limit - 3) + "..." : text;
}

function colourOf(label) {
  if (EMOTION_COLOURS[label.toLowerCase()]) return EMOTION_COLOURS[label.toLowerCase()];
  const index = Math.max(0, labels.indexOf(label));
  return FALLBACK_COLOURS[index % FALLBACK_COLOURS.length];
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "className") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// The conversation's utterances, or the lines that are not "Speaker: text".
function parseConversation(text) {
  const utterances = [];
  const problems = [];
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    if (!line) return;
    const match = LINE_FORMAT.exec(line);
    if (!match) {
      problems.push(`Line ${index + 1}: "${shorten(line, 40)}" is not ` +
                    `"Speaker: text" (a name, a colon, then what they said).`);
      return;
    }
    utterances.push({ speaker: match[1], text: match[2].trim() });
  });
  if (!utterances.length && !problems.length) problems.push("The conversation is empty: type one utterance per line.");
  return { utterances, problems };
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  const box = document.getElementById("error");
  box.textContent = "";
  box.hidden = true;
}

function setBusy(busy) {
  document.getElementById("predict").disabled = busy;
  document.getElementById("status").textContent = busy ? "Predicting..." : "";
}

function explanation(prediction, utterances, open) {
  const details = element("details", { className: "explanation" });
  details.open = open;
  details.append(element("summary", { text: "Why: the utterances that weighed most" }));
  const list = element("ul");
  const attention = prediction.attention || {};
  for (const neighbour of attention.neighbours || []) {
    const source = utterances[neighbour.utterance];
    const who = source ? `${source.speaker}: "${shorten(source.text, 50)}"` : "";
    list.append(element("li", { className: "neighbour" },
      `#${neighbour.utterance + 1} ${who} `,
      element("span", { className: "relation", text: neighbour.relation }),
      ` weight ${neighbour.weight.toFixed(2)}`));
  }
  for (const [modality, gate] of Object.entries(attention.gates || {})) {
    list.append(element("li", { className: "gate", text: `fusion gate of ${modality}: ${gate.toFixed(2)}` }));
  }
  if (!list.children.length) list.append(element("li", { text: "This model records no graph attention." }));
  details.append(list);
  return details;
}

function render(predictions, utterances) {
  const results = document.getElementById("results");
  results.replaceChildren();
  const open = document.getElementById("show-explanations").checked;
  predictions.forEach((prediction, index) => {
    results.append(utteranceItem(prediction, utterances, index, `utterance-${index}`, open));
  });
  document.getElementById("empty").hidden = predictions.length > 0;
}

// One utterance with its emotion badge, probability bars and (where given) its explanation.
function utteranceItem(prediction, utterances, index, id, open) {
    const colour = colourOf(prediction.label);
    const utterance = utterances[index];
    const item = element("li", { id, className: "utterance", "data-label": prediction.label });
    item.style.setProperty("--emotion", colour);
    item.append(element("div", { className: "utterance-head" },
      element("span", { className: "number", text: `#${index + 1}` }),
      element("span", { className: "speaker", text: `${utterance.speaker}:` }),
      element("span", { className: "text", text: utterance.text }),
      element("span", { className: "emotion", text: prediction.label,
                        "aria-label": `emotion ${prediction.label}` })));
    const bars = element("div", { className: "bars", role: "list", "aria-label": "probabilities" });
    const ranked = Object.entries(prediction.probabilities).sort((a, b) => b[1] - a[1]);
    for (const [label, probability] of ranked) {
      const percent = (100 * probability).toFixed(1);
      const fill = element("span");
      fill.style.width = `${percent}%`;
      fill.style.background = colourOf(label);
      bars.append(element("span", { role: "listitem", className: "bar-label", text: label }),
                  element("span", { className: "bar", "aria-hidden": "true" }, fill),
                  element("span", { className: "bar-value", "data-label": label, text: `${percent}%` }));
    }
    item.append(bars);
    if (open !== null) item.append(explanation(prediction, utterances, open));
    return item;
}

// Live mode: one WebSocket session per conversation; each line sent gets its emotion back, in order.
const live = { socket: null, utterances: [], pending: [], shown: 0 };

function liveStatus(text) {
  document.getElementById("live-status").textContent = text;
}

function liveSocket() {
  if (live.socket && live.socket.readyState <= WebSocket.OPEN) return live.socket;
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const socket = new WebSocket(`${scheme}${location.host}/live`);
  socket.addEventListener("open", () => liveStatus("Live session open."));
  socket.addEventListener("message", (event) => {
    let answer = null;
    try { answer = JSON.parse(event.data); } catch (_) { /* reported below */ }
    const utterance = live.pending.shift();
    if (!answer || typeof answer.detail === "string" || !answer.label) {
      showError(`The server refused "${utterance ? shorten(`${utterance.speaker}: ${utterance.text}`, 40) : "?"}": ` +
                `${answer && answer.detail ? answer.detail : event.data}`);
      return;
    }
    live.utterances.push(utterance);
    const index = live.utterances.length - 1;
    document.getElementById("live-results").append(
      utteranceItem(answer, live.utterances, index, `live-${index}`, null));
    liveStatus(`${live.utterances.length} utterance${live.utterances.length === 1 ? "" : "s"} so far.`);
  });
  socket.addEventListener("close", (event) => {
    live.pending = [];
    liveStatus(`Live session closed${event.reason ? `: ${event.reason}` : ""}; the next line starts a new one.`);
    live.socket = null;
    live.utterances = [];
  });
  live.socket = socket;
  return socket;
}

function sendLive(event) {
  event.preventDefault();
  clearError();
  const input = document.getElementById("live-line");
  const line = input.value.trim();
  if (!line) return;
  const match = LINE_FORMAT.exec(line);
  if (!match) {
    showError(`"${shorten(line, 40)}" is not "Speaker: text" (a name, a colon, then what they said).`);
    return;
  }
  const utterance = { speaker: match[1], text: match[2].trim() };
  const socket = liveSocket();
  const send = () => { live.pending.push(utterance); socket.send(JSON.stringify(utterance)); };
  if (socket.readyState === WebSocket.OPEN) send();
  else socket.addEventListener("open", send, { once: true });
  input.value = "";
}

function resetLive() {
  if (live.socket) live.socket.close(1000, "new conversation");
  live.socket = null;
  live.utterances = [];
  live.pending = [];
  document.getElementById("live-results").replaceChildren();
  liveStatus("");
}

function enableLive(model) {
  const available = model.live && model.live.available;
  for (const id of ["live-line", "live-send", "live-reset"]) document.getElementById(id).disabled = !available;
  if (!available) {
    document.getElementById("live-help").textContent = "Live mode needs a causal model (model.causal=true, for " +
      "example configs/meld-text-live.yaml); this server's model reads whole conversations.";
  }
}

async function predict(event) {
  event.preventDefault();
  clearError();
  const { utterances, problems } = parseConversation(document.getElementById("conversation").value);
  if (problems.length) {
    showError(problems.slice(0, 5).join("\n") + (problems.length > 5 ? `\n(${problems.length - 5} more)` : ""));
    return;
  }
  setBusy(true);
  try {
    const response = await fetch("/predict", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ dialogue_id: "page", utterances, explain: true }),
    });
    let answer = null;
    try { answer = await response.json(); } catch (_) { /* not JSON: reported below */ }
    if (!response.ok) {
      const detail = answer && typeof answer.detail === "string" ? answer.detail : response.statusText;
      showError(`The server refused the conversation (${response.status}): ${detail}`);
      return;
    }
    render(answer.utterances, utterances);
  } catch (error) {
    showError(`Could not reach the server: ${error.message}`);
  } finally {
    setBusy(false);
  }
}

async function describeModel() {
  const info = document.getElementById("model-info");
  try {
    const response = await fetch("/model");
    const model = await response.json();
    if (!response.ok) throw new Error(model.detail || response.statusText);
    labels = model.labels;
    enableLive(model);
    document.getElementById("speaker-slots").textContent = String(model.speaker_slots);
    const card = model.card && (model.card.name || model.card.title);
    info.textContent = `Model${card ? ` ${card}` : ""}: ${model.labels.length} emotions ` +
      `(${model.labels.join(", ")}); ` +
      `modalities ${model.modalities.join(", ")}; at most ${model.limits.max_utterances} utterances per conversation.`;
  } catch (error) {
    info.textContent = `The model description is not available: ${error.message}`;
  }
}

document.getElementById("show-explanations").addEventListener("change", (event) => {
  for (const details of document.querySelectorAll("#results details")) details.open = event.target.checked;
});
document.getElementById("conversation-form").addEventListener("submit", predict);
document.getElementById("live-form").addEventListener("submit", sendLive);
document.getElementById("live-reset").addEventListener("click", resetLive);
describeModel();
