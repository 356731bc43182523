// The review's keys on the whole page (review_logic.js, in front of this file, decides what each key does; gradio
// runs both once). A sentence is a checkbox of #sentence-review whose choice value is its review item: gradio sets
// that value as the box's `name`, which unlike the label's rendered text keeps the sentence exactly as in its text
// box. Accepting clicks the box (so gradio hears it), editing selects the sentence in its box.
const boxes = () => [...document.querySelectorAll('#sentence-review input[type=checkbox]')];
const focusedIn = (all) => all.indexOf(document.activeElement);

function focusBox(box) {
  box.focus();
  box.scrollIntoView({block: 'nearest'});
}

function edit(box) {
  const item = reviewItem(box.name);
  const area = item && document.querySelector(`#${item.box} textarea`);
  if (!area) return;
  const start = occurrenceStart(area.value, item.sentence, item.copy);
  if (start < 0) return;
  area.focus();
  area.setSelectionRange(start, start + item.sentence.length);
}

document.addEventListener('keydown', (event) => {
  const action = reviewKey(event);
  if (action === 'draft') {
    const button = document.querySelector('#draft-button');
    if (button && !button.disabled) { event.preventDefault(); button.click(); }
    return;
  }
  if (!action) return;
  const all = boxes(), checked = all.map((box) => box.checked);
  if (action === 'next' || action === 'previous') {
    const index = movedSentence(checked, focusedIn(all), action === 'next' ? 1 : -1);
    if (index !== null) focusBox(all[index]);
  } else if (!all.length) {
    return;
  } else if (action === 'accept') {
    const index = currentSentence(checked, focusedIn(all)), box = all[index];
    if (!box.checked && !box.disabled) box.click();
    all[afterAccepting(all.map((other) => other.checked), index)].focus();
  } else if (action === 'edit') {
    edit(all[currentSentence(checked, focusedIn(all))]);
  }
  event.preventDefault();
});
