// The study viewer's arithmetic, apart from the page: windowing, presets, window/level drag, zoom and keys.
// Plain functions, no module syntax: gradio runs `js_on_load` as a function body, so study_viewer.py puts this file
// in front of viewer.js (the page's glue); node's tests load it through the module.exports at the end.

// DICOM PS3.3 C.11.2.1.2.1, the LINEAR window: 0 at or below c - 0.5 - (w - 1) / 2, 255 above c - 0.5 + (w - 1) / 2.
function windowGray(x, center, width) {
  if (width <= 1) return x > center - 0.5 ? 255 : 0;
  const t = (x - (center - 0.5)) / (width - 1) + 0.5;
  return t <= 0 ? 0 : t >= 1 ? 255 : Math.round(t * 255);
}

// Whether the greys are turned over: a MONOCHROME1 image stores white as its lowest value, so it is shown inverted,
// and the reader's Invert turns any image over once more.
const isFlipped = (monochrome1, invert) => monochrome1 !== invert;

// The grey shown for each stored value 0..highest: the modality value (offset + slope * stored, the rescale)
// through the window, flipped where isFlipped says. The viewer draws an image by looking each pixel up here, so a
// 16-bit film costs 65536 window computations, not one per pixel.
function grayLevels(highest, {offset, slope, center, width, flip}) {
  const levels = new Uint8Array(highest + 1);
  for (let stored = 0; stored <= highest; stored++) {
    const level = windowGray(offset + slope * stored, center, width);
    levels[stored] = flip ? 255 - level : level;
  }
  return levels;
}

// A preset of the image's windows ({key: [name, center, width]}, from the server) as the image's window state, or
// null where the image has no such window (a PNG has no header window).
function presetWindow(windows, key) {
  const chosen = windows[key];
  return chosen ? {center: chosen[1], width: chosen[2], windowKey: key, windowName: chosen[0]} : null;
}

// The range of the image's modality values: the "full" window spans exactly it.
function valueRange(windows) {
  const [, center, width] = windows.full;
  return [center - width / 2, center + width / 2];
}

// How far one screen pixel of drag moves the level or width: 512 pixels sweep the image's whole range.
function dragStep(windows) {
  const [low, high] = valueRange(windows);
  return Math.max(high - low, 1) / 512;
}

// A window/level drag by (dx, dy) screen pixels: right widens the window, down raises the level (the image darkens),
// as on most reading stations. The window is no longer a named preset.
function draggedWindow(state, dx, dy, step) {
  return {width: Math.max(state.width + dx * step, 1), center: state.center + dy * step, windowKey: null,
          windowName: ''};
}

// A level or width typed into its field; a width under 1 is taken as 1.
function typedWindow(name, value) {
  return {...(name === 'level' ? {center: value} : {width: Math.max(value, 1)}), windowKey: null, windowName: ''};
}

// The whole image in the frame, centred, as large as fits.
function fittedView(frameWidth, frameHeight, columns, rows) {
  const scale = Math.min(frameWidth / columns, frameHeight / rows);
  return {scale, x: (frameWidth - columns * scale) / 2, y: (frameHeight - rows * scale) / 2, fitted: true};
}

// Zoom by `factor` (kept within 1/100 to 32 screen pixels per image pixel) so that the image point under (x, y) of
// the frame stays there.
function zoomedView(view, x, y, factor) {
  const scale = Math.min(Math.max(view.scale * factor, 0.01), 32);
  const imageX = (x - view.x) / view.scale, imageY = (y - view.y) / view.scale;
  return {scale, x: x - imageX * scale, y: y - imageY * scale, fitted: false};
}

const round2 = (value) => Math.round(value * 100) / 100;

// The window line under an image: "(level 40, width 400 HU, Mediastinum)".
function windowText(center, width, units, windowName) {
  return `(level ${round2(center)}, width ${round2(width)}${units ? ` ${units}` : ''}` +
         `${windowName ? ', ' + windowName : ''})`;
}

// The viewer's keys while an image has focus: {window: preset key} or {action: name}, or null (also for any key with
// Ctrl, Cmd or Alt, which belong to the browser and the page).
const WINDOW_KEYS = {h: 'header0', l: 'lung', m: 'mediastinum', b: 'bone', a: 'full'};
const ACTION_KEYS = {f: 'fit', 1: 'actual', r: 'reset', i: 'invert'};
function viewerKey({key, ctrlKey, metaKey, altKey}) {
  if (ctrlKey || metaKey || altKey) return null;
  const pressed = key.toLowerCase();
  if (WINDOW_KEYS[pressed]) return {window: WINDOW_KEYS[pressed]};
  if (ACTION_KEYS[pressed]) return {action: ACTION_KEYS[pressed]};
  return null;
}

if (typeof module !== 'undefined') {
  module.exports = {windowGray, isFlipped, grayLevels, presetWindow, valueRange, dragStep, draggedWindow, typedWindow,
                    fittedView, zoomedView, round2, windowText, viewerKey};
}
