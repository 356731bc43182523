// How linked images follow one another (modeling_cliptt5/app/static/linked_views.js), against values worked out by
// hand.
// Run by tests/app/test_page_js.py, or on its own: node --test tests/app/js/
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');

const linked = require(path.join(__dirname, '../../../modeling_cliptt5/app/static/linked_views.js'));

test('an image is linked to the others of its link, not to itself nor to unlinked images', () => {
  const links = ['0', '1', '', '0', '1'];  // study images 1 and 2, an unlinked one, then the prior's 1 and 2
  assert.deepEqual(linked.linkedTo(links, 0), [3]);
  assert.deepEqual(linked.linkedTo(links, 4), [1]);
  assert.deepEqual(linked.linkedTo(links, 2), []);
  assert.deepEqual(linked.linkedTo(['0'], 0), []);  // no prior shown: nothing moves with it
});

test('images of the same size and view: the linked point is the same point', () => {
  const view = {scale: 0.5, x: 10, y: 20}, size = {columns: 800, rows: 600};
  assert.deepEqual(linked.linkedPoint(view, size, view, size, 210, 170), {x: 210, y: 170});
});

test('the linked point is the same share of the other image, whatever its size and placement', () => {
  // the leader's frame point (210, 170) is image pixel (400, 300): the middle of an 800 x 600 image
  const leader = {scale: 0.5, x: 10, y: 20}, leaderSize = {columns: 800, rows: 600};
  // the partner, 2000 x 1000 drawn at 0.2 from (5, 60): its middle (1000, 500) is at 5 + 200, 60 + 100
  const partner = {scale: 0.2, x: 5, y: 60}, partnerSize = {columns: 2000, rows: 1000};
  assert.deepEqual(linked.linkedPoint(leader, leaderSize, partner, partnerSize, 210, 170), {x: 205, y: 160});
  // the leader's top-left corner is the partner's
  assert.deepEqual(linked.linkedPoint(leader, leaderSize, partner, partnerSize, 10, 20), {x: 5, y: 60});
});

test('a pan moves the partner by the same share of its shown image', () => {
  // the leader shows 400 x 300 screen pixels, the partner 400 x 200: a pan of (40, 30) is a tenth of each
  const leader = {scale: 0.5, x: 0, y: 0}, leaderSize = {columns: 800, rows: 600};
  const partner = {scale: 0.2, x: 5, y: 60}, partnerSize = {columns: 2000, rows: 1000};
  assert.deepEqual(linked.linkedPan(leader, leaderSize, partner, partnerSize, 40, 30), {x: 45, y: 80, fitted: false});
  // the same image shown the same size: the same pan
  assert.deepEqual(linked.linkedPan(leader, leaderSize, {scale: 0.5, x: 7, y: 9}, leaderSize, -12, 5),
                   {x: -5, y: 14, fitted: false});
});
