// Steer's front-end extension: nodes that explain themselves.
//  - every Steer node gets one recognisable colour;
//  - widgets the chosen mode / curve does not use are hidden (their values stay in the workflow), read from the
//    input tooltips' "mode:" prefixes; a non-empty text the chosen curve ignores stays visible and is flagged;
//  - SteerScaleSchedule draws its scale against progress (step ticks once the sampler's steps are known),
//    SteerCFGSkip and the perturbation nodes (SteerPAG, SteerSEG, SteerSkipLayer) the steps they act on, from the
//    pack's read-only /steer/preview route (the same Python the nodes run), redrawn as widgets or the graph change;
//  - sigma inputs name the model family their defaults are for; the perturbation nodes offer block presets ("auto",
//    then each family's default: GET /steer/presets) and, when the model file is known (its header only is read),
//    list its block names, say what "auto" stands for and flag blocks the model lacks with the node's own message.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const STEER_COLOR = "#223a4d";
const STEER_BGCOLOR = "#35566e";
const SELECTORS = ["mode", "curve"];
const PERTURBATION_NODES = { SteerPAG: "PAG", SteerSEG: "SEG", SteerSkipLayer: "SLG" };
const PREVIEW_NODES = new Set(["SteerScaleSchedule", "SteerCFGSkip", ...Object.keys(PERTURBATION_NODES)]);
const PLOT_HEIGHT = 92;
const NOTE_LINES = 3; // what fits under the plot
const FLAG = "#e0a040";
const HIDDEN_SIZE = () => [0, -4];
const PRESET_PROMPT = "preset…";
const NOTE_WIDTH = 64; // characters per note line under the plot
let presets = null; // node id → [[label, blocks], …], fetched once before any node is created
const SIGMA_NOTE = "σ defaults 5.42 / 0.28: SDXL (Kynkäänniemi et al.), SD1.5 alike; flow models σ 1→0";

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function inputSpec(node, name) {
  const data = node.constructor.nodeData;
  return data?.input?.required?.[name] ?? data?.input?.optional?.[name];
}

// The options of `selector` a widget is for, from its tooltip ("percent: …", "step_down / step_up: …"); empty: all.
function usedBy(node, name, selector) {
  const options = selector.options?.values ?? [];
  const tooltip = inputSpec(node, name)?.[1]?.tooltip ?? "";
  const used = new Set();
  for (const match of tooltip.matchAll(/(?:^|[.;]\s+)([a-z_+]+(?:\s*\/\s*[a-z_+]+)*):/g)) {
    for (const word of match[1].split("/").map((w) => w.trim())) if (options.includes(word)) used.add(word);
  }
  return used;
}

function selectorName(node) {
  return SELECTORS.find((name) => widget(node, name));
}

function updateVisibility(node) {
  const selector = widget(node, selectorName(node) ?? "");
  if (!selector) return;
  node.steerIgnored = [];
  for (const w of node.widgets) {
    if (w === selector || w.steerOwn) continue;
    const used = usedBy(node, w.name, selector);
    const unused = used.size > 0 && !used.has(selector.value);
    const ignoredText = unused && typeof w.value === "string" && w.value.trim() !== "";
    w.hidden = unused && !ignoredText;
    // The front end still lays out hidden widgets; a zero height takes them out (their values stay serialized).
    if (w.hidden) w.computeSize = HIDDEN_SIZE;
    else if (w.computeSize === HIDDEN_SIZE) delete w.computeSize;
    if (ignoredText) {
      w.label = `${w.name} ⚠ ignored (${selector.name} ${selector.value})`;
      w.steerFlagged = true;
      node.steerIgnored.push(w.name);
    } else if (w.steerFlagged) {
      w.label = undefined;
      w.steerFlagged = false;
    }
  }
  const [width] = node.size;
  node.setSize([width, node.computeSize()[1]]);
  node.setDirtyCanvas(true, true);
}

function linkOf(id) {
  const links = app.graph.links;
  return links?.get?.(id) ?? links?.[id];
}

// Nodes fed by `node`'s MODEL output, through further MODEL → MODEL nodes (patches), breadth first.
function downstream(node) {
  const seen = new Set([node.id]);
  const queue = [node];
  const found = [];
  while (queue.length) {
    const current = queue.shift();
    for (const output of current.outputs ?? []) {
      if (output.type !== "MODEL") continue;
      for (const id of output.links ?? []) {
        const target = app.graph.getNodeById(linkOf(id)?.target_id);
        if (target && !seen.has(target.id)) {
          seen.add(target.id);
          found.push(target);
          queue.push(target);
        }
      }
    }
  }
  return found;
}

// The loader at the start of `node`'s MODEL input chain: {folder, name} or null.
function upstreamModel(node) {
  let current = node;
  for (let hops = 0; current && hops < 64; hops++) {
    const ckpt = widget(current, "ckpt_name") ?? widget(current, "unet_name");
    if (ckpt) return { folder: ckpt.name === "ckpt_name" ? "checkpoints" : "diffusion_models", name: ckpt.value };
    const input = current.inputs?.find((i) => i.type === "MODEL" && i.link != null);
    current = input ? app.graph.getNodeById(linkOf(input.link)?.origin_id) : null;
  }
  return null;
}

function runSettings(node) {
  let steps = null, cfg = null, scheduler = null;
  for (const target of downstream(node)) {
    const s = widget(target, "steps"), c = widget(target, "cfg"), sch = widget(target, "scheduler");
    if (steps == null && s && typeof s.value === "number") steps = s.value;
    if (cfg == null && c && typeof c.value === "number") cfg = c.value;
    if (scheduler == null && sch) scheduler = sch.value;
  }
  return { steps, cfg, scheduler };
}

const modelInfoCache = new Map();
async function modelInfo(model) {
  if (!model?.name) return null;
  const key = `${model.folder}/${model.name}`;
  if (!modelInfoCache.has(key)) {
    const query = new URLSearchParams({ folder: model.folder, name: model.name });
    modelInfoCache.set(key, api.fetchApi(`/steer/model_info?${query}`).then((r) => (r.ok ? r.json() : null))
      .catch(() => null));
  }
  return modelInfoCache.get(key);
}

function widgetValues(node) {
  const values = {};
  for (const w of node.widgets ?? []) if (!w.steerOwn) values[w.name] = w.value;
  return values;
}

async function refreshPreview(node) {
  const ticket = (node.steerTicket = (node.steerTicket ?? 0) + 1);
  const signature = node.steerSignature;
  const run = runSettings(node);
  const info = await modelInfo(upstreamModel(node));
  let preview;
  try {
    const response = await api.fetchApi("/steer/preview", {
      method: "POST",
      body: JSON.stringify({ node: node.comfyClass, values: widgetValues(node), ...run, flow: !!info?.flow,
        model: upstreamModel(node) }),
    });
    preview = await response.json();
  } catch (error) {
    preview = { error: String(error) };
  }
  if (ticket !== node.steerTicket) return; // a newer request is on its way
  node.steerPreview = { ...preview, run, info };
  node.steerPreviewSignature = signature;
  node.setDirtyCanvas(true, true);
}

function schedulePreview(node) {
  clearTimeout(node.steerTimer);
  node.steerTimer = setTimeout(() => refreshPreview(node), 150);
}

function drawAxes(ctx, x, y, w, h) {
  ctx.strokeStyle = "#8899aa";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(x, y);
  ctx.lineTo(x, y + h);
  ctx.lineTo(x + w, y + h);
  ctx.stroke();
}

function drawText(ctx, text, x, y, color = "#c8d0d8") {
  ctx.fillStyle = color;
  ctx.font = "11px sans-serif";
  ctx.textAlign = "left";
  ctx.fillText(text, x, y);
}

function drawSchedule(ctx, preview, x, y, w, h) {
  const points = preview.scales ?? [];
  if (!points.length) return;
  const top = Math.max(...points.map((p) => p[1]), 1) * 1.1;
  const py = (s) => y + h - (h * s) / top;
  drawAxes(ctx, x, y, w, h);
  ctx.strokeStyle = "#60aae6";
  ctx.lineWidth = 2;
  ctx.beginPath();
  points.forEach(([p, s], i) => (i ? ctx.lineTo(x + p * w, py(s)) : ctx.moveTo(x + p * w, py(s))));
  ctx.stroke();
  if (preview.per_step) {
    ctx.fillStyle = "#60aae6";
    for (const [p, s] of points) {
      ctx.fillRect(x + p * w - 1, y + h, 2, 4); // step tick
      ctx.beginPath();
      ctx.arc(x + p * w, py(s), 2, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
  const first = points[0][1], last = points[points.length - 1][1];
  const steps = preview.run?.steps;
  drawText(ctx, `scale ${first.toFixed(2)} → ${last.toFixed(2)}` +
    (steps ? ` · ${steps} steps` : " · steps unknown: connect a sampler") +
    (preview.run?.cfg == null ? " · cfg from the sampler" : ""), x + 4, y + 10);
}

function drawWindow(ctx, preview, x, y, w, h, label) {
  drawAxes(ctx, x, y, w, h);
  const active = preview.active;
  if (active?.length) {
    const n = active.length, bar = w / n;
    active.forEach((on, i) => {
      ctx.fillStyle = on ? "#60aae6" : "#3a4452";
      ctx.fillRect(x + i * bar + 1, y + h * 0.35, Math.max(bar - 2, 1), h * 0.5);
    });
    const count = active.filter(Boolean).length;
    drawText(ctx, `${label} on ${count} of ${n} steps`, x + 4, y + 10);
  } else if (preview.window) {
    const [a, b] = preview.window;
    ctx.fillStyle = "#60aae6";
    ctx.fillRect(x + a * w, y + h * 0.35, Math.max((b - a) * w, 1), h * 0.5);
    drawText(ctx, `${label} from ${Math.round(a * 100)} % to ${Math.round(b * 100)} % of the run`, x + 4, y + 10);
  } else {
    drawText(ctx, `${label}: decided per image while sampling`, x + 4, y + 10);
  }
}

// Lines under the plot, flags (⚠) first: what will not work as set, family notes, the model's blocks.
function previewNotes(node) {
  const preview = node.steerPreview ?? {};
  const notes = [];
  if (node.comfyClass === "SteerCFGSkip" && widget(node, "mode")?.value === "sigma") {
    notes.push(SIGMA_NOTE);
    if (preview.info?.flow) notes.push(`⚠ ${preview.info.family} is a flow model: set σ within 0–1`);
  }
  if (PERTURBATION_NODES[node.comfyClass]) {
    // The node's own refusal, without its "input 'blocks':" prefix: the widget is right above.
    if (preview.problem) notes.push(`⚠ ${preview.problem.replace(/^input 'blocks': /, "")}`);
    const family = preview.model?.family;
    if (preview.auto && preview.blocks?.length) notes.push(`auto = ${preview.blocks.join(", ")} (${family} default)`);
    if (preview.model?.blocks?.length) notes.push(`${family} blocks: ${preview.model.blocks.join(", ")}`);
  }
  for (const name of node.steerIgnored ?? []) notes.push(`⚠ ${name} is ignored by the chosen ${selectorName(node)}`);
  return notes.sort((a, b) => b.startsWith("⚠") - a.startsWith("⚠"));
}

// A note as lines of at most NOTE_WIDTH characters, broken after commas and spaces.
function wrap(text) {
  const lines = [];
  let rest = text;
  while (rest.length > NOTE_WIDTH) {
    const cut = Math.max(rest.lastIndexOf(" ", NOTE_WIDTH), 16);
    lines.push(rest.slice(0, cut));
    rest = `  ${rest.slice(cut).trimStart()}`;
  }
  return [...lines, rest];
}

function drawPreview(node, ctx, width, y) {
  const preview = node.steerPreview;
  const x = 12, w = width - 24, h = PLOT_HEIGHT - 30;
  if (!preview) return drawText(ctx, "…", x, y + 14);
  if (preview.error) return drawText(ctx, `⚠ ${preview.error}`.slice(0, 90), x, y + 14, FLAG);
  if (node.comfyClass === "SteerScaleSchedule") drawSchedule(ctx, preview, x, y + 4, w, h);
  else drawWindow(ctx, preview, x, y + 4, w, h, PERTURBATION_NODES[node.comfyClass] ?? "CFG");
  const lines = previewNotes(node).flatMap((text) => wrap(text).map((line) => [line, text.startsWith("⚠")]));
  lines.slice(0, NOTE_LINES).forEach(([line, flag], i) => drawText(ctx, line, x, y + h + 18 + 12 * i,
    flag ? FLAG : "#aab4c0"));
}

function addPreviewWidget(node) {
  const plot = {
    name: "steer_preview",
    type: "steer_preview",
    value: null,
    serialize: false,
    steerOwn: true,
    options: { serialize: false },
    computeSize: (width) => [width, PLOT_HEIGHT + 24],
    // Steps, cfg and the model live in other nodes: any change there shows up here as a new signature. True when
    // the preview shown is the one for the current settings.
    sync() {
      const signature = JSON.stringify([widgetValues(node), runSettings(node), upstreamModel(node)]);
      if (signature !== node.steerSignature) {
        node.steerSignature = signature;
        schedulePreview(node);
      }
      return node.steerPreviewSignature === signature;
    },
    draw(ctx, n, width, y) {
      plot.sync();
      drawPreview(n, ctx, width, y);
    },
  };
  node.addCustomWidget(plot);
}

function addBlockPresets(node) {
  const blocks = widget(node, "blocks");
  const choices = new Map(presets?.[node.comfyClass] ?? []);
  const preset = node.addWidget("combo", "preset", PRESET_PROMPT, (value) => {
    if (choices.has(value)) {
      blocks.value = choices.get(value);
      blocks.callback?.(blocks.value);
    }
    preset.value = PRESET_PROMPT;
    schedulePreview(node);
  }, { values: [PRESET_PROMPT, ...choices.keys()], serialize: false });
  preset.serialize = false;
  preset.steerOwn = true;
}

function watchWidgets(node) {
  for (const w of node.widgets ?? []) {
    if (w.steerOwn) continue;
    const callback = w.callback;
    w.callback = function (...args) {
      const result = callback?.apply(this, args);
      updateVisibility(node);
      return result;
    };
  }
}

app.registerExtension({
  name: "steer.nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (PERTURBATION_NODES[nodeData.name] && presets === null) {
      presets = await api.fetchApi("/steer/presets").then((r) => (r.ok ? r.json() : {})).catch(() => ({}));
    }
  },
  nodeCreated(node) {
    if (!node.comfyClass?.startsWith("Steer")) return;
    node.color = STEER_COLOR;
    node.bgcolor = STEER_BGCOLOR;
    Object.defineProperty(node, "steerNotes", { get: () => previewNotes(node) });
    if (PERTURBATION_NODES[node.comfyClass]) addBlockPresets(node);
    if (PREVIEW_NODES.has(node.comfyClass)) addPreviewWidget(node);
    watchWidgets(node);
    const onConfigure = node.onConfigure;
    node.onConfigure = function (...args) {
      onConfigure?.apply(this, args);
      updateVisibility(node);
    };
    requestAnimationFrame(() => {
      updateVisibility(node);
      if (PREVIEW_NODES.has(node.comfyClass)) schedulePreview(node);
    });
  },
});
