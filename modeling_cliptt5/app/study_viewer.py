"""The study's images side by side, with window/level and zoom done in the browser (no server call per move), and the
finding head's heatmaps laid over them (which finding and how opaque are chosen in the browser too)."""

import base64
import html
import io

import numpy as np
from PIL import Image

from modeling_cliptt5.processing_cliptt5 import to_rgb_image

FILTER_ID = "cxr-window"  # one viewer per page

# Previews are downscaled for the page; the model still reads the full decoded image.
PREVIEW_MAX_SIDE = 1024
# Heatmaps are smooth (one value per image patch): a quarter of the preview's size is plenty.
HEATMAP_MAX_SIDE = 256
HEATMAP_COLOR = (255, 64, 0)  # orange-red; its opacity follows the patch's probability
DEFAULT_HEATMAP_OPACITY = 60  # percent

# Window/level is a linear map of display values, out = (in - level) / width + 0.5, clipped to [0, 1]: an SVG
# feComponentTransfer with slope 1/width and intercept 0.5 - level/width does exactly that (CSS brightness and
# contrast cannot shift and scale at once). Values are in sRGB, as the reader sees them, hence
# color-interpolation-filters="sRGB" (SVG filters default to linear RGB).
VIEWER_TEMPLATE = """
<div class="cxr-viewer" data-images="{count}">
  <svg width="0" height="0" style="position:absolute" aria-hidden="true">
    <filter id="{filter_id}" color-interpolation-filters="sRGB">
      <feComponentTransfer>
        <feFuncR type="linear" slope="1" intercept="0"/>
        <feFuncG type="linear" slope="1" intercept="0"/>
        <feFuncB type="linear" slope="1" intercept="0"/>
      </feComponentTransfer>
    </filter>
  </svg>
  <div class="cxr-controls">
    <label>Level <input type="range" data-control="level" min="0" max="100" value="50"></label>
    <label>Width <input type="range" data-control="width" min="5" max="200" value="100"></label>
    <label>Zoom <input type="range" data-control="zoom" min="100" max="400" value="100"></label>
    <label><input type="checkbox" data-control="invert"> Invert</label>
    <button type="button" data-control="reset">Reset</button>{heatmap_controls}
  </div>
  <div class="cxr-images">{figures}</div>
</div>
"""

FIGURE_TEMPLATE = """
<figure class="cxr-figure">
  <div class="cxr-frame"><img class="cxr-image" src="{src}" alt="{caption}" style="filter:url(#{filter_id})">{overlays}</div>
  <figcaption>{caption}</figcaption>
</figure>
"""

HEATMAP_CONTROLS = """
    <label>Heatmap <select data-control="heatmap"><option value="">none</option>{options}</select></label>
    <label>Opacity <input type="range" data-control="opacity" min="0" max="100" value="{opacity}"></label>"""

OVERLAY_TEMPLATE = '<img class="cxr-heatmap" data-finding="{finding}" src="{src}" alt="heatmap: {finding}" hidden>'


EMPTY_VIEWER = '<div class="cxr-viewer cxr-empty">Drop PNG, JPEG or DICOM images of one study above.</div>'

VIEWER_CSS = """
.cxr-viewer { --cxr-zoom: 1; }
.cxr-controls { display: flex; flex-wrap: wrap; gap: 1em; align-items: center; margin-bottom: 0.5em; }
.cxr-images { display: flex; gap: 0.5em; }
.cxr-figure { flex: 1 1 0; margin: 0; min-width: 0; }
.cxr-frame { height: 520px; overflow: auto; background: #000; position: relative; }
.cxr-viewer .cxr-image, .cxr-viewer .cxr-heatmap { display: block; width: calc(var(--cxr-zoom) * 100%);
                         height: calc(var(--cxr-zoom) * 100%); max-width: none; margin: 0; object-fit: contain; }
.cxr-viewer .cxr-heatmap { position: absolute; top: 0; left: 0; pointer-events: none;
                           opacity: var(--cxr-heatmap-opacity, 0.6); }
.cxr-viewer .cxr-heatmap[hidden] { display: none; }
.cxr-figure figcaption { font-size: 14px; text-align: center; }
.cxr-empty { padding: 2em; text-align: center; opacity: 0.7; }
"""

# gr.HTML runs this once with `element` its root; listeners on the root keep working when a new study
# re-renders the template inside it. Every move changes only the page: nothing is sent to the server.
VIEWER_JS = """
function applyWindow(viewer) {
  const value = (name) => viewer.querySelector(`[data-control="${name}"]`);
  const level = value('level').value / 100, width = value('width').value / 100;
  const sign = value('invert').checked ? -1 : 1;
  const slope = sign / width, intercept = 0.5 - sign * level / width;
  viewer.querySelectorAll('feFuncR, feFuncG, feFuncB').forEach((f) => {
    f.setAttribute('slope', slope);
    f.setAttribute('intercept', intercept);
  });
  viewer.style.setProperty('--cxr-zoom', value('zoom').value / 100);
  const heatmap = value('heatmap');
  if (heatmap) {
    viewer.style.setProperty('--cxr-heatmap-opacity', value('opacity').value / 100);
    viewer.querySelectorAll('img.cxr-heatmap').forEach((overlay) => {
      overlay.hidden = overlay.dataset.finding !== heatmap.value;
    });
  }
}
element.addEventListener('input', (event) => {
  const viewer = event.target.closest('.cxr-viewer');
  if (viewer && event.target.dataset.control) applyWindow(viewer);
});
element.addEventListener('change', (event) => {
  const viewer = event.target.closest('.cxr-viewer');
  if (viewer && event.target.dataset.control === 'heatmap') applyWindow(viewer);
});
element.addEventListener('click', (event) => {
  if (event.target.dataset.control !== 'reset') return;
  const viewer = event.target.closest('.cxr-viewer');
  viewer.querySelectorAll('input[data-control]').forEach((input) => {
    if (input.type === 'checkbox') input.checked = false; else input.value = input.defaultValue;
  });
  const heatmap = viewer.querySelector('[data-control="heatmap"]');
  if (heatmap) heatmap.value = '';
  applyWindow(viewer);
});
"""


def preview_data_uri(image):
    """A PNG data URI of the image for display (grayscale stays one channel), at most PREVIEW_MAX_SIDE a side.

    Inlined in the page rather than served as a file: the preview never lands on disk.
    """
    rgb = to_rgb_image(image)
    red, green, blue = rgb.split()
    preview = rgb.convert("L") if red.tobytes() == green.tobytes() == blue.tobytes() else rgb
    preview.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    preview.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def heatmap_data_uri(image, finding_map):
    """A transparent PNG the shape of `image`'s preview, coloured where the finding's map (grid x grid patch
    probabilities of the square the model read: the centre crop of the shortest side) is high."""
    width, height = image.size
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


def viewer_html(images, heatmaps=None):
    """The viewer for [(caption, PIL image)]: one window/level/zoom for the whole study, images side by side.

    `heatmaps`: per image, {finding name: grid x grid map} (or None for an image the model did not read); the
    viewer then offers a heatmap choice and its opacity, shown over every image that has one."""
    if not images:
        return EMPTY_VIEWER
    heatmaps = list(heatmaps or [])
    heatmaps += [None] * (len(images) - len(heatmaps))
    figures = []
    for (caption, image), maps in zip(images, heatmaps):
        overlays = "".join(OVERLAY_TEMPLATE.format(finding=html.escape(name), src=heatmap_data_uri(image, values))
                           for name, values in (maps or {}).items())
        figures.append(FIGURE_TEMPLATE.format(src=preview_data_uri(image), caption=html.escape(caption),
                                              filter_id=FILTER_ID, overlays=overlays))
    names = list(dict.fromkeys(name for maps in heatmaps if maps for name in maps))
    controls = HEATMAP_CONTROLS.format(
        options="".join(f'<option value="{html.escape(name)}">{html.escape(name)}</option>' for name in names),
        opacity=DEFAULT_HEATMAP_OPACITY) if names else ""
    return VIEWER_TEMPLATE.format(count=len(images), filter_id=FILTER_ID, figures="".join(figures),
                                  heatmap_controls=controls)
