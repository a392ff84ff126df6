// The Sampling view's hover (gradio gr.HTML js_on_load; `element`, `props`, `server`, `watch` are
// gradio's): as the pointer moves over the Sampling picture, this draws the chosen deformable
// layer's sampling at the cell under the pointer, with no request to the server.
//
// props.value (viz_app.views.hover.hover_state): the run's token, every layer's geometry, the
// letterbox and picture transforms, the marks' style and the name of the detections-only picture.
// What it names comes once and is kept here: a layer's offsets (H, W, G, P, 2) and weights
// (H, W, G, P), raw float32, once per (run, layer) from the server function `hover_arrays`; the
// detections-only picture (drawn under the hovered cell in place of the served one, whose pinned
// cell would show through) once per picture from `hover_base`.
//
// The arithmetic repeats dcnv3.record.geometry in the same order as /sampling, in float64 (JS
// numbers), so the points drawn are the points /sampling returns for the same `data-xy`. The
// marks repeat dcnv3.draw.overlay (CellAnnotator): grey grid rings, arrows from grid to sample,
// discs sized and faded by dcnv3.record.weight_encoding's rule, hollow rings for negative
// weights, a cross on the cell centre.
//
// Testability contract: the surface over the picture carries data-deformlens="sampling-hover";
// after each move it sets data-layer, data-xy (original-image px, JSON [x, y]) and data-points
// (JSON list of {group, k, x, y, weight}, original-image px). The component's own element
// carries data-ready = the layer whose arrays are loaded.

const targetId = props.target || "overlay";
const groupsId = props.groups_target || "groups";
const arrays = new Map(); // "token|layer" -> {offsets: Float32Array, weights: Float32Array, bytes}
const requests = new Map(); // "token|layer" or "base|name" -> Promise
const bases = new Map(); // base name (as JSON) -> JPEG data URI (the few most recent)
const KEEP_BASES = 8;
const statusBox = element.querySelector(".deformlens-hover-status");
let state = null;

function key(token, layer) {
  return token + "|" + layer;
}

function decodeFloat32(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new Float32Array(bytes.buffer); // little-endian, as the server sends (every browser's order)
}

function say(text) {
  if (statusBox) statusBox.textContent = text;
}

function kilobytes(count) {
  return (count / 1024).toFixed(count < 10240 ? 1 : 0) + " KB";
}

async function fetchLayer(token, layer) {
  const name = key(token, layer);
  if (arrays.has(name)) return arrays.get(name);
  if (!requests.has(name)) {
    requests.set(
      name,
      server.hover_arrays({ token: token, layer: layer }).then((answer) => {
        requests.delete(name);
        if (!answer || answer.error) throw new Error(answer ? answer.error : "no answer");
        const entry = {
          offsets: decodeFloat32(answer.offsets),
          weights: decodeFloat32(answer.weights),
          bytes: answer.bytes,
        };
        arrays.set(name, entry);
        return entry;
      })
    );
  }
  return requests.get(name);
}

async function fetchBase(name) {
  const id = JSON.stringify(name);
  if (bases.has(id)) return bases.get(id);
  const request = "base|" + id;
  if (!requests.has(request)) {
    requests.set(
      request,
      server.hover_base({ base: name }).then((answer) => {
        requests.delete(request);
        if (!answer || answer.error) throw new Error(answer ? answer.error : "no answer");
        bases.set(id, answer.picture);
        while (bases.size > KEEP_BASES) bases.delete(bases.keys().next().value);
        return answer.picture;
      })
    );
  }
  return requests.get(request);
}

function showState() {
  state = props.value && props.value.token ? props.value : null;
  element.dataset.ready = "";
  if (!state || !state.layer) {
    say("");
    hide();
    return;
  }
  const wanted = state;
  const geometry = state.layers[state.layer];
  say("Loading " + geometry.name + "'s offsets and weights for the hover...");
  Promise.all([fetchLayer(state.token, state.layer), fetchBase(state.base)]).then(
    ([entry]) => {
      if (state !== wanted) return;
      element.dataset.ready = wanted.layer;
      say(
        "Move the pointer over the picture: your browser draws " + geometry.stage + " " + geometry.name +
          "'s sampling under it (" + kilobytes(entry.bytes) + " of float32 offsets and weights, " +
          "fetched once for this layer). Click to pin a cell: the zoom, trace and weights follow it."
      );
    },
    (error) => {
      if (state === wanted) say("The hover could not load this layer: " + error.message);
    }
  );
}

// -- finding the picture and placing the surface over it ------------------------------------------
function picture() {
  const block = document.getElementById(targetId);
  if (!block) return null;
  return block.querySelector("img");
}

function surfaceOver(img) {
  const host = img.parentElement;
  let surface = host.querySelector(':scope > [data-deformlens="sampling-hover"]');
  if (!surface) {
    surface = document.createElement("div");
    surface.dataset.deformlens = "sampling-hover";
    // pointer-events none: clicks reach the picture underneath, which pins the cell (gradio's select).
    // The detections-only picture is the surface's background (not an <img>: the block's own
    // picture stays its one <img>, for whoever looks it up).
    surface.style.cssText =
      "position:absolute;pointer-events:none;display:none;z-index:3;overflow:hidden;" +
      "background-size:100% 100%;background-repeat:no-repeat;";
    const canvas = document.createElement("canvas");
    canvas.style.cssText = "position:absolute;left:0;top:0;width:100%;height:100%;";
    surface.append(canvas);
    if (getComputedStyle(host).position === "static") host.style.position = "relative";
    host.appendChild(surface);
  }
  return surface;
}

// Where the picture is drawn inside its <img> box (object-fit contain keeps its aspect ratio):
// {left, top, width, height} in the host's CSS px, and in client px for the pointer.
function drawnRect(img, naturalWidth, naturalHeight) {
  const box = img.getBoundingClientRect();
  let width = box.width;
  let height = box.height;
  const fit = getComputedStyle(img).objectFit;
  if (fit === "contain" || fit === "scale-down") {
    let factor = Math.min(box.width / naturalWidth, box.height / naturalHeight);
    if (fit === "scale-down") factor = Math.min(factor, 1);
    width = naturalWidth * factor;
    height = naturalHeight * factor;
  }
  const dx = (box.width - width) / 2;
  const dy = (box.height - height) / 2;
  // The surface is placed in the picture's parent: its position there, from the two boxes
  // (offsetLeft would be relative to whichever ancestor is positioned, not necessarily the parent).
  const host = img.parentElement;
  const hostBox = host.getBoundingClientRect();
  return {
    clientLeft: box.left + dx,
    clientTop: box.top + dy,
    left: box.left + dx - hostBox.left - host.clientLeft + host.scrollLeft,
    top: box.top + dy - hostBox.top - host.clientTop + host.scrollTop,
    width: width,
    height: height,
  };
}

function hide() {
  const img = picture();
  if (!img) return;
  const surface = img.parentElement.querySelector(':scope > [data-deformlens="sampling-hover"]');
  if (surface) surface.style.display = "none";
}

// -- the geometry (dcnv3.record.geometry, same operations in the same order) ------------------------
function cellAt(geometry, x, y) {
  // /sampling: original px -> processed px (LoadedImage.to_processed); the view's bounds check;
  // then geometry.cell_at through the letterbox.
  const px = x * state.image_scale[0];
  const py = y * state.image_scale[1];
  const [height, width] = state.processed_shape;
  if (!(px >= 0 && px < width && py >= 0 && py < height)) return null;
  const box = state.letterbox;
  const u = px * box.ratio + box.pad[0];
  const v = py * box.ratio + box.pad[1];
  const fx = Math.floor(u / geometry.stride);
  const fy = Math.floor(v / geometry.stride);
  const col = Math.floor((fx + geometry.pad - geometry.centre) / geometry.layer_stride);
  const row = Math.floor((fy + geometry.pad - geometry.centre) / geometry.layer_stride);
  const inside = u >= 0 && u < box.input_shape[1] && v >= 0 && v < box.input_shape[0];
  if (inside && row >= 0 && row < geometry.grid[0] && col >= 0 && col < geometry.grid[1]) return [row, col];
  return null;
}

function toProcessed(geometry, featureX, featureY) {
  // geometry._to_image: letterbox.to_image((feature + 0.5) * stride)
  const box = state.letterbox;
  return [
    ((featureX + 0.5) * geometry.stride - box.pad[0]) / box.ratio,
    ((featureY + 0.5) * geometry.stride - box.pad[1]) / box.ratio,
  ];
}

// Every point of the cell: processed-px location and grid position, weight, the kind's relative weight.
function cellPoints(geometry, entry, row, col) {
  const G = geometry.groups;
  const P = geometry.points;
  const baseX = col * geometry.layer_stride - geometry.pad + geometry.centre;
  const baseY = row * geometry.layer_stride - geometry.pad + geometry.centre;
  const scale = geometry.offset_scale;
  const first = (row * geometry.grid[1] + col) * G * P;
  const points = [];
  for (let g = 0; g < G; g++) {
    let meanMagnitude = 0;
    for (let k = 0; k < P; k++) meanMagnitude += Math.abs(entry.weights[first + g * P + k]);
    meanMagnitude /= P;
    for (let k = 0; k < P; k++) {
      const index = first + g * P + k;
      const [gx, gy] = geometry.kernel_points[k];
      const ox = entry.offsets[2 * index];
      const oy = entry.offsets[2 * index + 1];
      const weight = entry.weights[index];
      let relative = weight; // sigmoid: the weight itself
      if (geometry.weight_kind === "softmax") relative = weight * P;
      else if (geometry.weight_kind === "free") relative = meanMagnitude > 1e-12 ? Math.abs(weight) / meanMagnitude : 0;
      points.push({
        group: g,
        k: k,
        sample: toProcessed(geometry, baseX + scale * (gx + ox), baseY + scale * (gy + oy)),
        grid: toProcessed(geometry, baseX + scale * (gx + 0), baseY + scale * (gy + 0)),
        weight: weight,
        relative: relative,
      });
    }
  }
  return { points: points, centre: toProcessed(geometry, baseX, baseY) };
}

function shownGroups(count) {
  const box = document.getElementById(groupsId);
  const inputs = box ? box.querySelectorAll('input[type="checkbox"]') : [];
  if (!inputs.length) return new Set(Array.from({ length: count }, (_, g) => g));
  const shown = new Set();
  inputs.forEach((input, position) => {
    const label = input.closest("label");
    const match = label ? /group\s+(\d+)/.exec(label.textContent) : null;
    if (input.checked) shown.add(match ? Number(match[1]) : position);
  });
  return shown;
}

// -- the marks (dcnv3.draw.overlay's CellAnnotator, in canvas px of the served picture) -------------
function drawCell(context, geometry, cell, shown) {
  const style = state.style;
  const unit = state.unit;
  const [sx, sy] = state.canvas_scale;
  const onCanvas = (xy) => [xy[0] * sx, xy[1] * sy];
  const chosen = cell.points.filter((point) => shown.has(point.group));
  const [low, high] = style.size_range;
  for (const point of chosen) {
    const size = Math.min(high, Math.max(low, Math.sqrt(point.relative)));
    point.radius = style.point_radius * unit * size;
    point.opacity = Math.min(1, Math.max(style.opacity_floor, style.opacity_floor + (1 - style.opacity_floor) * point.relative));
    point.at = onCanvas(point.sample);
    point.from = onCanvas(point.grid);
  }
  // Grid rings: each position once (groups share the grid), dark edge first.
  const rings = new Map();
  for (const point of chosen) rings.set(point.from[0].toFixed(3) + "," + point.from[1].toFixed(3), point.from);
  for (const [width, colour] of [[unit + 1, style.ghost_outline], [unit, style.ghost]]) {
    context.lineWidth = width;
    context.strokeStyle = colour;
    for (const [x, y] of rings.values()) {
      context.beginPath();
      context.arc(x, y, style.grid_ring_radius * unit, 0, 2 * Math.PI);
      context.stroke();
    }
  }
  // Arrows from grid to the disc's edge (cv2.arrowedLine's head: two strokes at 45 degrees).
  context.lineWidth = unit;
  context.lineCap = "round";
  for (const point of chosen) {
    const [x0, y0] = point.from;
    const [x1, y1] = point.at;
    const length = Math.hypot(x1 - x0, y1 - y0);
    if (!(length > point.radius + style.arrow_clearance)) continue;
    const endX = x1 - (x1 - x0) * (point.radius / length);
    const endY = y1 - (y1 - y0) * (point.radius / length);
    const tip = Math.min(0.5, (style.arrow_head * unit) / (length - point.radius)) * Math.hypot(endX - x0, endY - y0);
    const angle = Math.atan2(y0 - endY, x0 - endX);
    context.strokeStyle = geometry.colours[point.group];
    context.beginPath();
    context.moveTo(x0, y0);
    context.lineTo(endX, endY);
    for (const turn of [Math.PI / 4, -Math.PI / 4]) {
      context.moveTo(endX + tip * Math.cos(angle + turn), endY + tip * Math.sin(angle + turn));
      context.lineTo(endX, endY);
    }
    context.stroke();
  }
  // Points, lightest first (heaviest on top, a stable order as numpy's argsort); hollow if negative.
  const order = chosen.map((point, position) => [point.relative, position]);
  order.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  for (const [, position] of order) {
    const point = chosen[position];
    const [x, y] = point.at;
    context.globalAlpha = point.opacity;
    if (point.weight < 0) {
      const width = Math.max(2, Math.round(point.radius / 3));
      const middle = Math.max(1 / 16, point.radius - width / 2);
      context.beginPath();
      context.arc(x, y, middle, 0, 2 * Math.PI);
      context.lineWidth = width + 2;
      context.strokeStyle = "black";
      context.stroke();
      context.lineWidth = width;
      context.strokeStyle = geometry.colours[point.group];
      context.stroke();
    } else {
      context.beginPath();
      context.arc(x, y, point.radius, 0, 2 * Math.PI);
      context.fillStyle = geometry.colours[point.group];
      context.fill();
      context.lineWidth = 1;
      context.strokeStyle = "black";
      context.stroke();
    }
  }
  context.globalAlpha = 1;
  // The cell centre's cross: dark then white.
  const [cx, cy] = onCanvas(cell.centre);
  const size = style.marker_size * unit;
  for (const [width, colour] of [[3 * unit, "black"], [unit, "white"]]) {
    context.lineWidth = width;
    context.strokeStyle = colour;
    context.beginPath();
    context.moveTo(cx - size, cy);
    context.lineTo(cx + size, cy);
    context.moveTo(cx, cy - size);
    context.lineTo(cx, cy + size);
    context.stroke();
  }
  return chosen;
}

// -- the pointer ---------------------------------------------------------------------------------------
function onMove(event) {
  const started = performance.now();
  const img = picture();
  const block = document.getElementById(targetId);
  // Over the picture: on the <img>, or on what gradio lays over it (its label), but not on one of
  // its buttons (download, full screen; the picture itself sits in a button of its own).
  const button = event.target.closest ? event.target.closest("button") : null;
  const over = img && block.contains(event.target) && (!button || button.contains(img));
  if (!state || !state.layer || !over) {
    hide();
    return;
  }
  const entry = arrays.get(key(state.token, state.layer));
  if (!entry) return;
  const [canvasHeight, canvasWidth] = state.canvas_shape;
  // A picture of other dimensions is a previous one still on show while the new one loads.
  if (img.naturalWidth && (img.naturalWidth !== canvasWidth || img.naturalHeight !== canvasHeight)) return;
  const rect = drawnRect(img, canvasWidth, canvasHeight);
  const inside =
    event.clientX >= rect.clientLeft &&
    event.clientX < rect.clientLeft + rect.width &&
    event.clientY >= rect.clientTop &&
    event.clientY < rect.clientTop + rect.height;
  if (!inside) {
    hide();
    return;
  }
  // Pointer -> served-picture px -> processed px -> original px (continuous, as /sampling takes it).
  const canvasX = ((event.clientX - rect.clientLeft) * canvasWidth) / rect.width;
  const canvasY = ((event.clientY - rect.clientTop) * canvasHeight) / rect.height;
  const x = canvasX / state.canvas_scale[0] / state.image_scale[0];
  const y = canvasY / state.canvas_scale[1] / state.image_scale[1];
  const surface = surfaceOver(img);
  const geometry = state.layers[state.layer];
  surface.dataset.layer = geometry.name;
  surface.dataset.xy = JSON.stringify([x, y]);
  const [originalHeight, originalWidth] = state.original_shape;
  const cell = x >= 0 && x < originalWidth && y >= 0 && y < originalHeight ? cellAt(geometry, x, y) : null;
  if (!cell) {
    surface.dataset.cell = "";
    surface.dataset.points = "[]";
    surface.style.display = "none";
    return;
  }
  Object.assign(surface.style, {
    display: "block",
    left: rect.left + "px",
    top: rect.top + "px",
    width: rect.width + "px",
    height: rect.height + "px",
  });
  const baseId = JSON.stringify(state.base);
  if (surface.dataset.base !== baseId && bases.has(baseId)) {
    surface.style.backgroundImage = "url(" + bases.get(baseId) + ")";
    surface.dataset.base = baseId;
  }
  const canvas = surface.querySelector("canvas");
  const ratio = window.devicePixelRatio || 1;
  const pixelWidth = Math.round(rect.width * ratio);
  const pixelHeight = Math.round(rect.height * ratio);
  if (canvas.width !== pixelWidth || canvas.height !== pixelHeight) {
    canvas.width = pixelWidth;
    canvas.height = pixelHeight;
  }
  const context = canvas.getContext("2d");
  context.setTransform(1, 0, 0, 1, 0, 0);
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.setTransform((pixelWidth / canvasWidth), 0, 0, (pixelHeight / canvasHeight), 0, 0);
  const points = cellPoints(geometry, entry, cell[0], cell[1]);
  const drawn = drawCell(context, geometry, points, shownGroups(geometry.groups));
  surface.dataset.cell = JSON.stringify(cell);
  surface.dataset.points = JSON.stringify(
    drawn.map((point) => ({
      group: point.group,
      k: point.k,
      x: point.sample[0] / state.image_scale[0],
      y: point.sample[1] / state.image_scale[1],
      weight: point.weight,
    }))
  );
  // For benchmarks/bench_hover.py, in ms: this handler's own work; the pointer event's time stamp
  // to the end of the drawing (Chromium delivers pointer moves aligned to frames, so this includes
  // the wait for the frame); and to the next animation frame, when the drawing is painted.
  const timings = (window.deformlensHoverTimings = window.deformlensHoverTimings || []);
  const finished = performance.now();
  requestAnimationFrame(() =>
    timings.push([finished - started, finished - event.timeStamp, performance.now() - event.timeStamp])
  );
}

// One listener per page (gradio may run this again when the component mounts again).
const registry = (window.deformlensHover = window.deformlensHover || {});
if (registry[targetId]) document.removeEventListener("pointermove", registry[targetId], { capture: true });
registry[targetId] = onMove;
document.addEventListener("pointermove", onMove, { capture: true, passive: true });

watch("value", showState);
showState();
