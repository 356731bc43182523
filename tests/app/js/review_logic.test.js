// The review keys' logic (modeling_cliptt5/app/static/review_logic.js): which key does what, on which sentence,
// and where an item's sentence is in its text box.
// Run by tests/app/test_page_js.py, or on its own: node --test tests/app/js/
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');

const review = require(path.join(__dirname, '../../../modeling_cliptt5/app/static/review_logic.js'));

test('Ctrl+Enter or Cmd+Enter drafts; Alt with arrows, A and E moves, accepts and edits', () => {
  assert.equal(review.reviewKey({key: 'Enter', ctrlKey: true}), 'draft');
  assert.equal(review.reviewKey({key: 'Enter', metaKey: true}), 'draft');
  assert.equal(review.reviewKey({key: 'ArrowDown', altKey: true}), 'next');
  assert.equal(review.reviewKey({key: 'ArrowUp', altKey: true}), 'previous');
  assert.equal(review.reviewKey({key: 'å', code: 'KeyA', altKey: true}), 'accept');  // Option+A on a Mac
  assert.equal(review.reviewKey({key: 'e', code: 'KeyE', altKey: true}), 'edit');
});

test('other keys are left to the page', () => {
  assert.equal(review.reviewKey({key: 'Enter'}), null);
  assert.equal(review.reviewKey({key: 'ArrowDown'}), null);
  assert.equal(review.reviewKey({key: 'a', code: 'KeyA'}), null);
  assert.equal(review.reviewKey({key: 'a', code: 'KeyA', altKey: true, ctrlKey: true}), null);
  assert.equal(review.reviewKey({key: 'x', code: 'KeyX', altKey: true}), null);
});

test('the keys act on the focused sentence, else the first not accepted, else the first', () => {
  assert.equal(review.currentSentence([true, false, false], 2), 2);
  assert.equal(review.currentSentence([true, false, false], -1), 1);
  assert.equal(review.currentSentence([true, true], -1), 0);
});

test('Alt+Down and Alt+Up move one sentence within the list, or to the current one', () => {
  const checked = [true, false, false];
  assert.equal(review.movedSentence(checked, 1, 1), 2);
  assert.equal(review.movedSentence(checked, 2, 1), 2);
  assert.equal(review.movedSentence(checked, 1, -1), 0);
  assert.equal(review.movedSentence(checked, 0, -1), 0);
  assert.equal(review.movedSentence(checked, -1, 1), 1);  // nothing focused: the first not accepted
  assert.equal(review.movedSentence([], -1, 1), null);
});

test('after accepting, the focus goes to the next sentence not accepted, or stays', () => {
  assert.equal(review.afterAccepting([true, true, true, false], 1), 3);
  assert.equal(review.afterAccepting([false, true, true], 2), 2);  // an earlier open sentence is not jumped back to
  assert.equal(review.afterAccepting([false, false], 0), 1);  // on, even where the box stayed unchecked (disabled)
});

test('an item names its text box, its sentence and which copy of it', () => {
  assert.deepEqual(review.reviewItem('Findings: The heart is normal.'),
                   {box: 'findings', sentence: 'The heart is normal.', copy: 1});
  assert.deepEqual(review.reviewItem('Impression: No effusion. [repeat 2]'),
                   {box: 'impression', sentence: 'No effusion.', copy: 2});
  assert.deepEqual(review.reviewItem('Findings: Lines: none.'), {box: 'findings', sentence: 'Lines: none.', copy: 1});
  // the change a sentence states and an invented comparison are marks, not part of the sentence
  assert.deepEqual(review.reviewItem('Findings: Increased right effusion. [increased] [repeat 3]'),
                   {box: 'findings', sentence: 'Increased right effusion.', copy: 3});
  const invented = 'Impression: Stable heart. [unchanged] [invented comparison: drafted without a prior]';
  assert.deepEqual(review.reviewItem(invented), {box: 'impression', sentence: 'Stable heart.', copy: 1});
  assert.deepEqual(review.reviewItem('Findings: See note [1].'), {box: 'findings', sentence: 'See note [1].', copy: 1});
  assert.equal(review.reviewItem('Indication: cough.'), null);
  assert.equal(review.reviewItem('no section'), null);
});

test('the n-th copy of a sentence is found where it is', () => {
  const text = 'No effusion. Clear lungs. No effusion.';
  assert.equal(review.occurrenceStart(text, 'No effusion.', 1), 0);
  assert.equal(review.occurrenceStart(text, 'No effusion.', 2), 26);
  assert.equal(review.occurrenceStart(text, 'No effusion.', 3), -1);
  assert.equal(review.occurrenceStart(text, 'Pneumothorax.', 1), -1);
});
