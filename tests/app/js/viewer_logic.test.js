// The viewer's arithmetic (modeling_cliptt5/app/static/viewer_logic.js) against values worked out by hand.
// Run by tests/app/test_page_js.py, or on its own: node --test tests/app/js/
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');

const viewer = require(path.join(__dirname, '../../../modeling_cliptt5/app/static/viewer_logic.js'));

test('a window of centre 128 and width 256 shows each 8-bit value as itself', () => {
  // t = (x - 127.5) / 255 + 0.5 = x / 255, so the grey is x
  for (const x of [0, 1, 100, 127, 128, 254, 255]) assert.equal(viewer.windowGray(x, 128, 256), x);
});

test('the linear window is black at or below its lower edge, white above its upper edge', () => {
  // centre 40, width 400: edges at 39.5 -/+ 199.5, that is -160 and 239
  assert.equal(viewer.windowGray(-1000, 40, 400), 0);
  assert.equal(viewer.windowGray(-160, 40, 400), 0);
  assert.equal(viewer.windowGray(239, 40, 400), 255);
  assert.equal(viewer.windowGray(3000, 40, 400), 255);
  assert.equal(viewer.windowGray(39.5, 40, 400), 128);  // the middle: round(0.5 * 255)
});

test('a window of width 1 is a threshold at centre - 0.5', () => {
  assert.equal(viewer.windowGray(99.5, 100, 1), 0);
  assert.equal(viewer.windowGray(99.6, 100, 1), 255);
  assert.equal(viewer.windowGray(100, 100, 0.5), 255);
});

test('stored values go through the rescale, then the window', () => {
  // modality value -1000 + 10 * stored; centre -872 and width 256 is the identity window moved by -1000,
  // so the grey is 10 * stored, up to 255
  const settings = {offset: -1000, slope: 10, center: -872, width: 256, flip: false};
  assert.deepEqual([...viewer.grayLevels(30, settings)].filter((_, stored) => [0, 5, 25, 26, 30].includes(stored)),
                   [0, 50, 250, 255, 255]);
  assert.equal(viewer.grayLevels(30, settings).length, 31);  // one grey per stored value 0..30
});

test('flipped greys are 255 minus the unflipped ones', () => {
  const settings = {offset: -1000, slope: 10, center: -872, width: 256};
  const flipped = viewer.grayLevels(26, {...settings, flip: true});
  assert.deepEqual([flipped[0], flipped[5], flipped[25], flipped[26]], [255, 205, 5, 0]);
});

test('MONOCHROME1 is shown inverted, and Invert turns any image over once more', () => {
  assert.equal(viewer.isFlipped(false, false), false);
  assert.equal(viewer.isFlipped(true, false), true);  // MONOCHROME1: its lowest value is white
  assert.equal(viewer.isFlipped(false, true), true);
  assert.equal(viewer.isFlipped(true, true), false);  // MONOCHROME1 inverted by the reader: as stored
});

const WINDOWS = {lung: ['Lung', -600, 1500], full: ['Full range', 2047.5, 4096]};

test('a preset sets the centre, width and its name; an image without it keeps its window', () => {
  assert.deepEqual(viewer.presetWindow(WINDOWS, 'lung'),
                   {center: -600, width: 1500, windowKey: 'lung', windowName: 'Lung'});
  assert.equal(viewer.presetWindow(WINDOWS, 'header0'), null);
});

test('the full-range window spans the values; a drag sweeps that range in 512 screen pixels', () => {
  assert.deepEqual(viewer.valueRange(WINDOWS), [-0.5, 4095.5]);
  assert.equal(viewer.dragStep(WINDOWS), 8);  // 4096 / 512
  assert.equal(viewer.dragStep({full: ['Full range', 0, 0.5]}), 1 / 512);  // a range under 1 counts as 1
});

test('dragging right widens the window, down raises the level; the width stays at least 1', () => {
  const state = {center: 40, width: 400, windowKey: 'mediastinum', windowName: 'Mediastinum'};
  assert.deepEqual(viewer.draggedWindow(state, 10, -5, 8), {width: 480, center: 0, windowKey: null, windowName: ''});
  assert.equal(viewer.draggedWindow(state, -100, 0, 8).width, 1);
});

test('a typed level or width replaces the window; a width under 1 is 1', () => {
  assert.deepEqual(viewer.typedWindow('level', 50), {center: 50, windowKey: null, windowName: ''});
  assert.deepEqual(viewer.typedWindow('width', 300), {width: 300, windowKey: null, windowName: ''});
  assert.deepEqual(viewer.typedWindow('width', 0), {width: 1, windowKey: null, windowName: ''});
});

test('fit: the whole image, centred, as large as the frame allows', () => {
  // 2000 x 2600 in 800 x 520: the height limits, 520 / 2600 = 0.2; 400 px wide, so 200 px either side
  assert.deepEqual(viewer.fittedView(800, 520, 2000, 2600), {scale: 0.2, x: 200, y: 0, fitted: true});
});

test('zooming keeps the image point under the pointer in place, within 0.01 to 32', () => {
  const zoomed = viewer.zoomedView({scale: 1, x: 0, y: 0}, 100, 50, 2);
  assert.deepEqual(zoomed, {scale: 2, x: -100, y: -50, fitted: false});
  assert.deepEqual([(100 - zoomed.x) / zoomed.scale, (50 - zoomed.y) / zoomed.scale], [100, 50]);
  assert.equal(viewer.zoomedView({scale: 20, x: 0, y: 0}, 0, 0, 2).scale, 32);
  assert.equal(viewer.zoomedView({scale: 0.02, x: 0, y: 0}, 0, 0, 0.1).scale, 0.01);
});

test('the window line under an image', () => {
  assert.equal(viewer.windowText(40, 400, 'HU', 'Mediastinum'), '(level 40, width 400 HU, Mediastinum)');
  assert.equal(viewer.windowText(1234.5678, 7.001, '', ''), '(level 1234.57, width 7)');
});

test('keys: H L M B A choose a window, F 1 R I act, nothing with Ctrl, Cmd or Alt', () => {
  assert.deepEqual(viewer.viewerKey({key: 'L'}), {window: 'lung'});
  assert.deepEqual(viewer.viewerKey({key: 'h'}), {window: 'header0'});
  assert.deepEqual(viewer.viewerKey({key: 'a'}), {window: 'full'});
  assert.deepEqual(viewer.viewerKey({key: '1'}), {action: 'actual'});
  assert.deepEqual(viewer.viewerKey({key: 'i'}), {action: 'invert'});
  assert.equal(viewer.viewerKey({key: 'l', ctrlKey: true}), null);
  assert.equal(viewer.viewerKey({key: 'r', altKey: true}), null);
  assert.equal(viewer.viewerKey({key: 'x'}), null);
});
