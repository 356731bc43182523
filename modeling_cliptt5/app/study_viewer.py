"""The study's images side by side at their own resolution and full depth: the browser receives each image's values
(8 or 16 bits) and windows them itself in the modality's units, so window/level, presets, zoom and pan cost no server
call; the finding head's heatmaps lie over the images and move with them.

Controls: drag for window/level, Shift+drag (or the middle button) to pan, the wheel to zoom about the pointer;
keys while an image has focus: H header window, L lung, M mediastinum, B bone, A full range, I invert, F fit,
1 one image pixel per screen pixel, R reset. Window buttons and keys act on every image (each with its own values);
a drag or a typed level/width acts on the image under the pointer."""

import base64
import hashlib
import html
import io
import json
import zlib

import numpy as np
from PIL import Image

# Heatmaps are smooth (one value per image patch): a quarter of a typical preview's size is plenty.
HEATMAP_MAX_SIDE = 256
HEATMAP_COLOR = (255, 64, 0)  # orange-red; its opacity follows the patch's probability
DEFAULT_HEATMAP_OPACITY = 60  # percent
# zlib's fastest level: a 2.5 k x 2 k 16-bit film compresses in tens of milliseconds, higher levels gain little.
PIXEL_COMPRESSION_LEVEL = 1

WINDOW_BUTTONS = (("header0", "Header (H)"), ("lung", "Lung (L)"), ("mediastinum", "Mediastinum (M)"),
                  ("bone", "Bone (B)"), ("full", "Full range (A)"))

VIEWER_TEMPLATE = """
<div class="cxr-viewer" data-images="{count}">
  <div class="cxr-controls">
    <label>Level <input type="number" data-control="level" step="any"></label>
    <label>Width <input type="number" data-control="width" step="any" min="1"></label>
    <span class="cxr-active" data-control="active"></span>
    <span class="cxr-windows">{window_buttons}</span>
    <label><input type="checkbox" data-control="invert"> Invert (I)</label>
    <button type="button" data-action="fit">Fit (F)</button>
    <button type="button" data-action="actual">1:1 (1)</button>
    <button type="button" data-action="reset">Reset (R)</button>{heatmap_controls}
  </div>
  <p class="cxr-help">Drag: window/level &middot; Shift+drag or middle button: pan &middot; wheel: zoom at the pointer</p>
  <div class="cxr-images">{figures}</div>
</div>
"""

FIGURE_TEMPLATE = """
<figure class="cxr-figure">
  <div class="cxr-frame" tabindex="0" aria-label="{caption}">
    <div class="cxr-stage" style="width:{columns}px;height:{rows}px">
      <canvas class="cxr-canvas" width="{columns}" height="{rows}" data-key="{key}" data-dtype="{dtype}"
              data-offset="{offset}" data-slope="{slope}" data-mono1="{monochrome1}" data-units="{units}"
              data-windows="{windows}" data-default="{default}" data-pixels="{pixels}"></canvas>{overlays}
    </div>
  </div>
  <figcaption>{caption} <span class="cxr-window-text"></span></figcaption>
</figure>
"""

HEATMAP_CONTROLS = """
    <label>Heatmap <select data-control="heatmap"><option value="">none</option>{options}</select></label>
    <label>Opacity <input type="range" data-control="opacity" min="0" max="100" value="{opacity}"></label>"""

OVERLAY_TEMPLATE = '<img class="cxr-heatmap" data-finding="{finding}" src="{src}" alt="heatmap: {finding}" hidden>'

EMPTY_VIEWER = '<div class="cxr-viewer cxr-empty">Drop PNG, JPEG or DICOM images of one study above.</div>'

VIEWER_CSS = """
.cxr-controls { display: flex; flex-wrap: wrap; gap: 0.4em 1em; align-items: center; margin-bottom: 0.3em; }
.cxr-controls input[type=number] { width: 6.5em; }
.cxr-windows { display: inline-flex; gap: 0.3em; }
.cxr-viewer button { border: 1px solid #94a3b8; border-radius: 4px; padding: 0.1em 0.5em; background: #f8fafc; }
.cxr-viewer button.cxr-chosen { background: #1e3a8a; color: #fff; }
.cxr-help { margin: 0 0 0.3em 0; opacity: 0.8; }
.cxr-images { display: flex; gap: 0.5em; }
.cxr-figure { flex: 1 1 0; margin: 0; min-width: 0; }
.cxr-frame { height: 520px; overflow: hidden; background: #000; position: relative; cursor: crosshair;
             touch-action: none; user-select: none; }
.cxr-frame:focus { outline: 2px solid #2563eb; }
.cxr-stage { position: absolute; left: 0; top: 0; transform-origin: 0 0; }
.cxr-viewer .cxr-canvas, .cxr-viewer .cxr-heatmap { display: block; position: absolute; left: 0; top: 0;
                                                   width: 100%; height: 100%; max-width: none; margin: 0; }
.cxr-viewer .cxr-heatmap { pointer-events: none; opacity: var(--cxr-heatmap-opacity, 0.6); }
.cxr-viewer .cxr-heatmap[hidden] { display: none; }
.cxr-figure figcaption { font-size: 14px; text-align: center; }
.cxr-empty { padding: 2em; text-align: center; opacity: 0.7; }
"""

# gr.HTML runs this once with `element` its root; a new study re-renders the template inside it, and the observer
# below starts each new image. Each image's window and zoom are kept by its content key, so a redraft (which
# re-renders the viewer with heatmaps) leaves the reader's window as it was.
VIEWER_JS = """
const states = new Map();
const decoded = new Map();  // content key -> the image's values, for a re-render that does not send them again
const canvases = (viewer) => [...viewer.querySelectorAll('canvas.cxr-canvas')];
const control = (viewer, name) => viewer.querySelector(`[data-control="${name}"]`);
const frameOf = (canvas) => canvas.closest('.cxr-frame');

// DICOM PS3.3 C.11.2.1.2.1, the LINEAR window: 0 at or below c - 0.5 - (w - 1) / 2, 255 above c - 0.5 + (w - 1) / 2.
function gray(x, center, width) {
  if (width <= 1) return x > center - 0.5 ? 255 : 0;
  const t = (x - (center - 0.5)) / (width - 1) + 0.5;
  return t <= 0 ? 0 : t >= 1 ? 255 : Math.round(t * 255);
}

function render(canvas) {
  const state = canvas.cxrState, values = canvas.cxrValues;
  if (!values) return;
  const started = performance.now();
  const offset = Number(canvas.dataset.offset), slope = Number(canvas.dataset.slope);
  const flip = (canvas.dataset.mono1 === '1') !== state.invert;
  const table = canvas.cxrTable;
  for (let value = 0; value < table.length; value++) {
    const level = gray(offset + slope * value, state.center, state.width);
    const shown = flip ? 255 - level : level;
    table[value] = 0xff000000 | (shown << 16) | (shown << 8) | shown;
  }
  const pixels = new Uint32Array(canvas.cxrImage.data.buffer);
  for (let index = 0; index < values.length; index++) pixels[index] = table[values[index]];
  canvas.getContext('2d').putImageData(canvas.cxrImage, 0, 0);
  canvas.dataset.renderMs = (performance.now() - started).toFixed(2);
  canvas.dataset.center = state.center;
  canvas.dataset.width = state.width;
  canvas.dataset.ready = '1';
  const text = canvas.closest('figure').querySelector('.cxr-window-text');
  const units = canvas.dataset.units ? ` ${canvas.dataset.units}` : '';
  text.textContent = `(level ${round(state.center)}, width ${round(state.width)}${units}` +
                     `${state.windowName ? ', ' + state.windowName : ''})`;
}

const round = (value) => Math.round(value * 100) / 100;

function schedule(canvas) {  // at most one render per frame while a drag or the wheel runs
  if (canvas.cxrPending) return;
  canvas.cxrPending = true;
  requestAnimationFrame(() => { canvas.cxrPending = false; render(canvas); });
}

function place(canvas) {
  const state = canvas.cxrState;
  canvas.parentElement.style.transform = `translate(${state.x}px, ${state.y}px) scale(${state.scale})`;
  canvas.dataset.scale = state.scale;
}

function fit(canvas) {
  const frame = frameOf(canvas), state = canvas.cxrState;
  const scale = Math.min(frame.clientWidth / canvas.width, frame.clientHeight / canvas.height);
  Object.assign(state, {scale, x: (frame.clientWidth - canvas.width * scale) / 2,
                        y: (frame.clientHeight - canvas.height * scale) / 2, fitted: true});
  place(canvas);
}

function zoomAt(canvas, x, y, factor) {  // the image point under (x, y) of the frame stays there
  const state = canvas.cxrState;
  const scale = Math.min(Math.max(state.scale * factor, 0.01), 32);
  const imageX = (x - state.x) / state.scale, imageY = (y - state.y) / state.scale;
  Object.assign(state, {scale, x: x - imageX * scale, y: y - imageY * scale, fitted: false});
  place(canvas);
}

function chooseWindow(canvas, key) {
  const windows = JSON.parse(canvas.dataset.windows), chosen = windows[key];
  if (!chosen) return false;
  Object.assign(canvas.cxrState, {center: chosen[1], width: chosen[2], windowKey: key, windowName: chosen[0]});
  return true;
}

function defaultState(canvas) {
  const state = {invert: false, scale: 1, x: 0, y: 0, fitted: true};
  canvas.cxrState = state;
  chooseWindow(canvas, canvas.dataset.default);
  return state;
}

function showControls(viewer) {
  const canvas = viewer.cxrActive;
  if (!canvas || !canvas.cxrState) return;
  const state = canvas.cxrState;
  control(viewer, 'level').value = round(state.center);
  control(viewer, 'width').value = round(state.width);
  control(viewer, 'invert').checked = state.invert;
  const figure = canvas.closest('figure');
  control(viewer, 'active').textContent = `${figure.querySelector('figcaption').firstChild.textContent.trim()}` +
                                          (canvas.dataset.units ? ` (${canvas.dataset.units})` : '');
  viewer.querySelectorAll('[data-window]').forEach((button) =>
    button.classList.toggle('cxr-chosen', button.dataset.window === state.windowKey));
}

async function valuesOf(canvas) {
  if (!canvas.dataset.pixels) return decoded.get(canvas.dataset.key);
  const response = await fetch('data:application/octet-stream;base64,' + canvas.dataset.pixels);
  const bytes = await new Response(response.body.pipeThrough(new DecompressionStream('deflate'))).arrayBuffer();
  canvas.removeAttribute('data-pixels');  // the values live in the array now, not twice in the page
  const values = canvas.dataset.dtype === 'u2' ? new Uint16Array(bytes) : new Uint8Array(bytes);
  let highest = 0;
  for (const value of values) if (value > highest) highest = value;
  const entry = {values, highest};
  decoded.set(canvas.dataset.key, entry);
  return entry;
}

async function start(canvas) {
  const viewer = canvas.closest('.cxr-viewer');
  canvas.cxrValues = null;
  const kept = states.get(canvas.dataset.key);
  canvas.cxrState = kept ? {...kept} : defaultState(canvas);
  states.set(canvas.dataset.key, canvas.cxrState);
  viewer.cxrActive = viewer.cxrActive || canvas;
  const entry = await valuesOf(canvas);
  if (!entry) {  // a re-render of images this page no longer holds (it cannot happen without a reload)
    canvas.closest('figure').querySelector('.cxr-window-text').textContent = '(drop the files again to show it)';
    return;
  }
  canvas.cxrValues = entry.values;
  canvas.cxrTable = new Uint32Array(entry.highest + 1);
  canvas.cxrImage = canvas.getContext('2d').createImageData(canvas.width, canvas.height);
  if (canvas.cxrState.fitted) fit(canvas); else place(canvas);
  new ResizeObserver(() => { if (canvas.cxrState.fitted) fit(canvas); }).observe(frameOf(canvas));
  render(canvas);
  showControls(viewer);
}

// gradio patches a re-rendered viewer into the page in place: a canvas may stay the same element with new
// attributes (another image, or the same one with its drawing and position reset), so each is checked by its key.
function startNew() {
  const shown = [...element.querySelectorAll('canvas.cxr-canvas')];
  if (shown.some((canvas) => canvas.dataset.pixels)) {  // values sent: a study shown anew, drop the others' values
    const keys = new Set(shown.map((canvas) => canvas.dataset.key));
    [...decoded.keys()].forEach((key) => { if (!keys.has(key)) decoded.delete(key); });
  }
  shown.forEach((canvas) => {
    if (canvas.cxrKey !== canvas.dataset.key) {
      canvas.cxrKey = canvas.dataset.key;
      start(canvas);
    } else if (canvas.cxrValues && !canvas.dataset.ready) {  // the same image, patched: draw and place it again
      canvas.removeAttribute('data-pixels');
      if (canvas.cxrState.fitted) fit(canvas); else place(canvas);
      render(canvas);
    }
  });
}
new MutationObserver(startNew).observe(element, {childList: true, subtree: true, attributes: true,
                                                 attributeFilter: ['data-key', 'data-ready', 'width', 'style']});
startNew();

function everyImage(viewer, change) {
  canvases(viewer).forEach((canvas) => { if (canvas.cxrState && change(canvas) !== false) schedule(canvas); });
  showControls(viewer);
}

function act(viewer, action) {
  if (action === 'fit') canvases(viewer).forEach((canvas) => canvas.cxrState && fit(canvas));
  if (action === 'actual') canvases(viewer).forEach((canvas) => {
    if (!canvas.cxrState) return;
    const frame = frameOf(canvas);  // one image pixel on one screen pixel, about the frame's centre
    zoomAt(canvas, frame.clientWidth / 2, frame.clientHeight / 2, 1 / (window.devicePixelRatio * canvas.cxrState.scale));
  });
  if (action === 'reset') everyImage(viewer, (canvas) => { states.set(canvas.dataset.key, defaultState(canvas));
                                                           fit(canvas); });
  if (action === 'invert') everyImage(viewer, (canvas) => { canvas.cxrState.invert = !canvas.cxrState.invert; });
}

element.addEventListener('click', (event) => {
  const viewer = event.target.closest('.cxr-viewer');
  const button = event.target.closest('button');
  if (!viewer || !button) return;
  if (button.dataset.window) everyImage(viewer, (canvas) => chooseWindow(canvas, button.dataset.window));
  if (button.dataset.action) act(viewer, button.dataset.action);
});

const typed = (event) => {
  const viewer = event.target.closest('.cxr-viewer'), name = event.target.dataset.control;
  if (!viewer || !name) return;
  const canvas = viewer.cxrActive;
  if ((name === 'level' || name === 'width') && canvas && canvas.cxrState) {
    const value = Number(event.target.value);
    if (!Number.isFinite(value)) return showControls(viewer);
    Object.assign(canvas.cxrState, name === 'level' ? {center: value} : {width: Math.max(value, 1)},
                  {windowKey: null, windowName: ''});
    schedule(canvas);
    showControls(viewer);
  }
  if (name === 'invert') everyImage(viewer, (canvas) => { canvas.cxrState.invert = event.target.checked; });
  if (name === 'heatmap') showHeatmap(viewer);
};
element.addEventListener('change', typed);
element.addEventListener('input', (event) => {  // a typed level or width shows as it is typed
  if (['level', 'width'].includes(event.target.dataset.control)) typed(event);
});

function showHeatmap(viewer) {
  const choice = control(viewer, 'heatmap');
  if (!choice) return;
  viewer.style.setProperty('--cxr-heatmap-opacity', control(viewer, 'opacity').value / 100);
  viewer.querySelectorAll('img.cxr-heatmap').forEach((overlay) => {
    overlay.hidden = overlay.dataset.finding !== choice.value;
  });
}
element.addEventListener('input', (event) => {
  const viewer = event.target.closest('.cxr-viewer');
  if (viewer && event.target.dataset.control === 'opacity') showHeatmap(viewer);
});

element.addEventListener('pointerover', (event) => {  // the image under the pointer is the one the fields show
  const frame = event.target.closest('.cxr-frame'), viewer = event.target.closest('.cxr-viewer');
  if (!frame || !viewer || viewer.cxrDrag) return;
  viewer.cxrActive = frame.querySelector('canvas');
  showControls(viewer);
});

element.addEventListener('pointerdown', (event) => {
  const frame = event.target.closest('.cxr-frame');
  if (!frame || (event.button !== 0 && event.button !== 1)) return;
  const viewer = frame.closest('.cxr-viewer'), canvas = frame.querySelector('canvas');
  if (!canvas.cxrState) return;
  event.preventDefault();
  frame.focus();
  frame.setPointerCapture(event.pointerId);
  viewer.cxrActive = canvas;
  const [low, high] = valueRange(canvas);
  viewer.cxrDrag = {canvas, x: event.clientX, y: event.clientY, pan: event.button === 1 || event.shiftKey,
                    perPixel: Math.max(high - low, 1) / 512};
});

function valueRange(canvas) {
  const windows = JSON.parse(canvas.dataset.windows), full = windows.full;
  return [full[1] - full[2] / 2, full[1] + full[2] / 2];
}

element.addEventListener('pointermove', (event) => {
  const viewer = event.target.closest('.cxr-viewer');
  const drag = viewer && viewer.cxrDrag;
  if (!drag) return;
  const dx = event.clientX - drag.x, dy = event.clientY - drag.y, state = drag.canvas.cxrState;
  Object.assign(drag, {x: event.clientX, y: event.clientY});
  if (drag.pan) {
    Object.assign(state, {x: state.x + dx, y: state.y + dy, fitted: false});
    place(drag.canvas);
    return;
  }
  // Right widens the window, down raises the level (the image darkens), as on most reading stations.
  Object.assign(state, {width: Math.max(state.width + dx * drag.perPixel, 1), center: state.center + dy * drag.perPixel,
                        windowKey: null, windowName: ''});
  schedule(drag.canvas);
  showControls(viewer);
});

const endDrag = (event) => { const viewer = event.target.closest('.cxr-viewer'); if (viewer) viewer.cxrDrag = null; };
element.addEventListener('pointerup', endDrag);
element.addEventListener('pointercancel', endDrag);

element.addEventListener('wheel', (event) => {
  const frame = event.target.closest('.cxr-frame');
  if (!frame) return;
  const canvas = frame.querySelector('canvas');
  if (!canvas.cxrState) return;
  event.preventDefault();
  const box = frame.getBoundingClientRect();
  zoomAt(canvas, event.clientX - box.left, event.clientY - box.top, Math.exp(-event.deltaY * 0.002));
}, {passive: false});

const KEYS = {h: 'header0', l: 'lung', m: 'mediastinum', b: 'bone', a: 'full'};
const ACTIONS = {f: 'fit', 1: 'actual', r: 'reset', i: 'invert'};
element.addEventListener('keydown', (event) => {
  const frame = event.target.closest('.cxr-frame');
  if (!frame || event.ctrlKey || event.metaKey || event.altKey) return;
  const viewer = frame.closest('.cxr-viewer'), key = event.key.toLowerCase();
  if (KEYS[key]) everyImage(viewer, (canvas) => chooseWindow(canvas, KEYS[key]));
  else if (ACTIONS[key]) act(viewer, ACTIONS[key]);
  else return;
  event.preventDefault();
});
"""


def value_bytes(values):
    """The values as the browser reads them: little-endian uint8 or uint16 bytes, and which."""
    dtype = "u2" if values.dtype.itemsize == 2 else "u1"
    return np.ascontiguousarray(values, dtype="<u2" if dtype == "u2" else "u1").tobytes(), dtype


def heatmap_data_uri(size, finding_map):
    """A transparent PNG of `size` (width, height) or smaller with its aspect, coloured where the finding's map
    (grid x grid patch probabilities of the square the model read: the centre crop of the shortest side) is high."""
    width, height = size
    scale = min(1.0, HEATMAP_MAX_SIDE / max(width, height))
    width, height = max(1, round(width * scale)), max(1, round(height * scale))
    side = min(width, height)
    values = np.clip(np.asarray(finding_map, dtype=np.float32), 0.0, 1.0)
    alpha = Image.fromarray((values * 255 + 0.5).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
    overlay = Image.new("RGBA", (width, height), (*HEATMAP_COLOR, 0))
    square = Image.new("RGBA", (side, side), HEATMAP_COLOR)
    square.putalpha(alpha)
    overlay.paste(square, ((width - side) // 2, (height - side) // 2))
    buffer = io.BytesIO()
    overlay.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def figure_html(caption, display, maps, send_values=True):
    raw, dtype = value_bytes(display.values)
    pixels = base64.b64encode(zlib.compress(raw, PIXEL_COMPRESSION_LEVEL)).decode("ascii") if send_values else ""
    rows, columns = display.values.shape
    windows = {key: [label, round(center, 4), round(width, 4)] for key, (label, center, width)
               in display.windows().items()}
    if display.downscale > 1:
        caption = f"{caption} (shown at 1/{display.downscale} of its resolution)"
    overlays = "".join(OVERLAY_TEMPLATE.format(finding=html.escape(name), src=heatmap_data_uri((columns, rows), values))
                       for name, values in (maps or {}).items())
    return FIGURE_TEMPLATE.format(
        caption=html.escape(caption), columns=columns, rows=rows, key=hashlib.sha1(raw).hexdigest()[:16],
        dtype=dtype, offset=repr(float(display.offset)), slope=repr(float(display.slope)),
        monochrome1=int(display.monochrome1), units=html.escape(display.units),
        windows=html.escape(json.dumps(windows)), default=display.default_window(), pixels=pixels, overlays=overlays)


def viewer_html(images, heatmaps=None, send_values=True):
    """The viewer for [(caption, images/display.DisplayImage)], images side by side.

    `heatmaps`: per image, {finding name: grid x grid map} (or None for an image the model did not read); the
    viewer then offers a heatmap choice and its opacity, shown over every image that has one. `send_values`
    False: the page already shows these images (a draft adding heatmaps), so their values are not sent again
    (megabytes for a full-size film); the browser keeps them by content key."""
    if not images:
        return EMPTY_VIEWER
    heatmaps = list(heatmaps or [])
    heatmaps += [None] * (len(images) - len(heatmaps))
    figures = [figure_html(caption, display, maps, send_values) for (caption, display), maps in zip(images, heatmaps)]
    has_header_window = any(display.header_windows for _, display in images)
    buttons = "".join(f'<button type="button" data-window="{key}">{label}</button>' for key, label in WINDOW_BUTTONS
                      if key != "header0" or has_header_window)
    names = list(dict.fromkeys(name for maps in heatmaps if maps for name in maps))
    controls = HEATMAP_CONTROLS.format(
        options="".join(f'<option value="{html.escape(name)}">{html.escape(name)}</option>' for name in names),
        opacity=DEFAULT_HEATMAP_OPACITY) if names else ""
    return VIEWER_TEMPLATE.format(count=len(images), figures="".join(figures), window_buttons=buttons,
                                  heatmap_controls=controls)
