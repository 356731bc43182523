// The viewer's glue to the page (viewer_logic.js and linked_views.js, in front of this file, do the arithmetic).
// gradio runs them once with `element` the viewer's root; a new study re-renders the template inside it, and the
// observer below starts each new image. Each image's window and zoom are kept by its content key, so a redraft (which
// re-renders the viewer with heatmaps) leaves the reader's window as it was. A drag, a pan or the wheel on an image
// moves the images linked to it (data-link: the study's image and the prior's of the same place) as well.
const states = new Map();
const decoded = new Map();  // content key -> the image's values, for a re-render that does not send them again
const canvases = (viewer) => [...viewer.querySelectorAll('canvas.cxr-canvas')];
const control = (viewer, name) => viewer.querySelector(`[data-control="${name}"]`);
const frameOf = (canvas) => canvas.closest('.cxr-frame');

function render(canvas) {
  const state = canvas.cxrState, values = canvas.cxrValues;
  if (!values) return;
  const started = performance.now();
  const table = canvas.cxrTable;
  const levels = grayLevels(table.length - 1, {
    offset: Number(canvas.dataset.offset), slope: Number(canvas.dataset.slope), center: state.center,
    width: state.width, flip: isFlipped(canvas.dataset.mono1 === '1', state.invert)});
  levels.forEach((shown, value) => { table[value] = 0xff000000 | (shown << 16) | (shown << 8) | shown; });  // RGBA
  const pixels = new Uint32Array(canvas.cxrImage.data.buffer);
  for (let index = 0; index < values.length; index++) pixels[index] = table[values[index]];
  canvas.getContext('2d').putImageData(canvas.cxrImage, 0, 0);
  canvas.dataset.renderMs = (performance.now() - started).toFixed(2);
  canvas.dataset.center = state.center;
  canvas.dataset.width = state.width;
  canvas.dataset.ready = '1';
  canvas.closest('figure').querySelector('.cxr-window-text').textContent =
    windowText(state.center, state.width, canvas.dataset.units, state.windowName);
}

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
  const frame = frameOf(canvas);
  Object.assign(canvas.cxrState, fittedView(frame.clientWidth, frame.clientHeight, canvas.width, canvas.height));
  place(canvas);
}

function zoomAt(canvas, x, y, factor) {
  Object.assign(canvas.cxrState, zoomedView(canvas.cxrState, x, y, factor));
  place(canvas);
}

const windowsOf = (canvas) => JSON.parse(canvas.dataset.windows);
const sizeOf = (canvas) => ({columns: canvas.width, rows: canvas.height});

function partnersOf(canvas) {  // the drawn images linked to this one
  const all = canvases(canvas.closest('.cxr-viewer'));
  return linkedTo(all.map((other) => other.dataset.link || ''), all.indexOf(canvas))
    .map((position) => all[position]).filter((partner) => partner.cxrState && partner.cxrValues);
}

function chooseWindow(canvas, key) {
  const chosen = presetWindow(windowsOf(canvas), key);
  if (!chosen) return false;
  Object.assign(canvas.cxrState, chosen);
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
  control(viewer, 'level').value = round2(state.center);
  control(viewer, 'width').value = round2(state.width);
  control(viewer, 'invert').checked = state.invert;
  control(viewer, 'active').textContent = canvas.dataset.caption +
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
    Object.assign(canvas.cxrState, typedWindow(name, value));
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
  viewer.cxrDrag = {canvas, x: event.clientX, y: event.clientY, pan: event.button === 1 || event.shiftKey,
                    step: dragStep(windowsOf(canvas)),
                    partners: partnersOf(canvas).map((partner) => ({canvas: partner,
                                                                    step: dragStep(windowsOf(partner))}))};
});

element.addEventListener('pointermove', (event) => {
  const viewer = event.target.closest('.cxr-viewer');
  const drag = viewer && viewer.cxrDrag;
  if (!drag) return;
  const dx = event.clientX - drag.x, dy = event.clientY - drag.y, state = drag.canvas.cxrState;
  Object.assign(drag, {x: event.clientX, y: event.clientY});
  if (drag.pan) {
    drag.partners.forEach(({canvas}) => {
      Object.assign(canvas.cxrState, linkedPan(state, sizeOf(drag.canvas), canvas.cxrState, sizeOf(canvas), dx, dy));
      place(canvas);
    });
    Object.assign(state, {x: state.x + dx, y: state.y + dy, fitted: false});
    place(drag.canvas);
    return;
  }
  // each linked image in its own steps: the same share of its own values' range (viewer_logic.dragStep)
  [{canvas: drag.canvas, step: drag.step}, ...drag.partners].forEach(({canvas, step}) => {
    Object.assign(canvas.cxrState, draggedWindow(canvas.cxrState, dx, dy, step));
    schedule(canvas);
  });
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
  const box = frame.getBoundingClientRect(), x = event.clientX - box.left, y = event.clientY - box.top;
  const factor = Math.exp(-event.deltaY * 0.002);
  partnersOf(canvas).forEach((partner) => {  // about the same place of each image
    const point = linkedPoint(canvas.cxrState, sizeOf(canvas), partner.cxrState, sizeOf(partner), x, y);
    zoomAt(partner, point.x, point.y, factor);
  });
  zoomAt(canvas, x, y, factor);
}, {passive: false});

element.addEventListener('keydown', (event) => {
  const frame = event.target.closest('.cxr-frame'), pressed = viewerKey(event);
  if (!frame || !pressed) return;
  const viewer = frame.closest('.cxr-viewer');
  if (pressed.window) everyImage(viewer, (canvas) => chooseWindow(canvas, pressed.window));
  else act(viewer, pressed.action);
  event.preventDefault();
});
