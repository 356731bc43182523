// How one image of the viewer moves the images linked to it: the study's image and the prior study's image of the same
// place in the order (frontal with frontal) pan, zoom and window together, so that a reader compares like with like.
// Plain functions, no module syntax: gradio runs `js_on_load` as a function body, so study_viewer.py puts this file
// between viewer_logic.js and viewer.js (the page's glue); node's tests load it through the module.exports at the end.
//
// A view is {scale, x, y}: its image drawn at `scale` screen pixels per image pixel, the image's top-left corner at
// (x, y) of its frame; a size is {columns, rows}, the image's. Two images of a patient taken on other days differ in
// size and framing, so places are matched as shares of each image's width and height, not in pixels.

// The positions of the images linked to the one at `index` (the same non-empty link), other than itself.
function linkedTo(links, index) {
  const link = links[index];
  if (!link) return [];
  return links.flatMap((other, position) => (other === link && position !== index ? [position] : []));
}

// Where on the partner's frame the partner shows the place of its image that (x, y) of the leader's frame shows of
// the leader's: the wheel zooms both images about the same place.
function linkedPoint(leader, leaderSize, partner, partnerSize, x, y) {
  const across = (x - leader.x) / (leader.scale * leaderSize.columns);
  const down = (y - leader.y) / (leader.scale * leaderSize.rows);
  return {x: partner.x + across * partner.scale * partnerSize.columns,
          y: partner.y + down * partner.scale * partnerSize.rows};
}

// The partner's view after the leader was panned by (dx, dy) screen pixels: moved by the same share of its shown
// image, so that both keep showing the same place.
function linkedPan(leader, leaderSize, partner, partnerSize, dx, dy) {
  const across = (partner.scale * partnerSize.columns) / (leader.scale * leaderSize.columns);
  const down = (partner.scale * partnerSize.rows) / (leader.scale * leaderSize.rows);
  return {x: partner.x + dx * across, y: partner.y + dy * down, fitted: false};
}

if (typeof module !== 'undefined') {
  module.exports = {linkedTo, linkedPoint, linkedPan};
}
