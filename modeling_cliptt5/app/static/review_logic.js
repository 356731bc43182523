// The sentence review's keys, apart from the page: which key does what, which sentence it acts on, where an item's
// sentence is in its text box. Plain functions, no module syntax: gradio runs `js_on_load` as a function body, so
// web_app.py puts this file in front of review_keys.js (the page's glue); node's tests load it through the
// module.exports at the end.

// A review item's section (report_review.review_items writes "Findings: ..." / "Impression: ...") -> the elem_id
// of the text box that holds its sentences.
const SECTION_BOXES = {Findings: 'findings', Impression: 'impression'};

// What a key press asks of the review, or null: Ctrl+Enter (Cmd+Enter) drafts; Alt+Down / Alt+Up move to the next /
// previous sentence, Alt+A accepts it, Alt+E edits it. A and E are read from `code`, the key's place on the
// keyboard: with Alt, macOS types another character ("å") into `key`.
function reviewKey({key, code, altKey, ctrlKey, metaKey}) {
  if ((ctrlKey || metaKey) && key === 'Enter') return 'draft';
  if (!altKey || ctrlKey || metaKey) return null;
  if (key === 'ArrowDown') return 'next';
  if (key === 'ArrowUp') return 'previous';
  if (code === 'KeyA') return 'accept';
  if (code === 'KeyE') return 'edit';
  return null;
}

// The sentence the keys act on (`checked`: each item's box, in order; `focused`: the index of the box with the
// focus, -1 for none): the focused one, else the first not yet accepted, else the first.
function currentSentence(checked, focused) {
  return focused >= 0 ? focused : Math.max(checked.findIndex((done) => !done), 0);
}

// Where Alt+Down (step 1) or Alt+Up (step -1) goes: from the focused sentence one on, kept within the list; with no
// sentence focused, to the current one. null without sentences.
function movedSentence(checked, focused, step) {
  if (!checked.length) return null;
  return focused >= 0 ? Math.min(Math.max(focused + step, 0), checked.length - 1) : currentSentence(checked, -1);
}

// Where the focus goes once the sentence at `index` is accepted: the next one not yet accepted, else it stays.
function afterAccepting(checked, index) {
  const next = checked.findIndex((done, position) => position > index && !done);
  return next >= 0 ? next : index;
}

// A mark report_review.review_items puts after a sentence: the change it states ("[increased]"), an invented
// comparison ("[invented comparison: ...]"), which copy of it the item is ("[repeat 2]").
const ITEM_MARK = / \[(?:new|increased|decreased|resolved|unchanged|invented comparison[^\]]*|repeat (\d+))\]$/;

// A review item as {box, sentence, copy}: the elem_id of its text box, the sentence without the item's marks, and
// which copy of it the item is ("Impression: No effusion. [repeat 2]" is the second "No effusion." of IMPRESSION).
// null for anything else.
function reviewItem(item) {
  const parts = item.match(/^(\w+): ([\s\S]*)$/);
  if (!parts || !SECTION_BOXES[parts[1]]) return null;
  let sentence = parts[2], copy = 1;
  for (let mark = sentence.match(ITEM_MARK); mark; mark = sentence.match(ITEM_MARK)) {
    if (mark[1]) copy = Number(mark[1]);
    sentence = sentence.slice(0, mark.index);
  }
  return {box: SECTION_BOXES[parts[1]], sentence, copy};
}

// Where the `copy`-th occurrence of `sentence` starts in `text`, or -1 where the text has fewer.
function occurrenceStart(text, sentence, copy) {
  let start = -1;
  for (let seen = 0; seen < copy; seen++) {
    start = text.indexOf(sentence, start + 1);
    if (start < 0) return -1;
  }
  return start;
}

if (typeof module !== 'undefined') {
  module.exports = {SECTION_BOXES, reviewKey, currentSentence, movedSentence, afterAccepting, reviewItem,
                    occurrenceStart};
}
