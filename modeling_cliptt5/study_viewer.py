"""The study's images side by side, with window/level and zoom done in the browser (no server call per move)."""

import base64
import html
import io

from PIL import Image

from .processing_cliptt5 import to_rgb_image

FILTER_ID = "cxr-window"  # one viewer per page

# Previews are downscaled for the page; the model still reads the full decoded image.
PREVIEW_MAX_SIDE = 1024

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
    <button type="button" data-control="reset">Reset</button>
  </div>
  <div class="cxr-images">{figures}</div>
</div>
"""

FIGURE_TEMPLATE = """
<figure class="cxr-figure">
  <div class="cxr-frame"><img class="cxr-image" src="{src}" alt="{caption}" style="filter:url(#{filter_id})"></div>
  <figcaption>{caption}</figcaption>
</figure>
"""

EMPTY_VIEWER = '<div class="cxr-viewer cxr-empty">Drop PNG, JPEG or DICOM images of one study above.</div>'

VIEWER_CSS = """
.cxr-viewer { --cxr-zoom: 1; }
.cxr-controls { display: flex; flex-wrap: wrap; gap: 1em; align-items: center; margin-bottom: 0.5em; }
.cxr-images { display: flex; gap: 0.5em; }
.cxr-figure { flex: 1 1 0; margin: 0; min-width: 0; }
.cxr-frame { height: 520px; overflow: auto; background: #000; }
.cxr-viewer .cxr-image { display: block; width: calc(var(--cxr-zoom) * 100%);
                         height: calc(var(--cxr-zoom) * 100%); max-width: none; margin: 0; object-fit: contain; }
.cxr-figure figcaption { font-size: 0.85em; text-align: center; }
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
}
element.addEventListener('input', (event) => {
  const viewer = event.target.closest('.cxr-viewer');
  if (viewer && event.target.dataset.control) applyWindow(viewer);
});
element.addEventListener('click', (event) => {
  if (event.target.dataset.control !== 'reset') return;
  const viewer = event.target.closest('.cxr-viewer');
  viewer.querySelectorAll('input[data-control]').forEach((input) => {
    if (input.type === 'checkbox') input.checked = false; else input.value = input.defaultValue;
  });
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


def viewer_html(images):
    """The viewer for [(caption, PIL image)]: one window/level/zoom for the whole study, images side by side."""
    if not images:
        return EMPTY_VIEWER
    figures = "".join(FIGURE_TEMPLATE.format(src=preview_data_uri(image), caption=html.escape(caption),
                                             filter_id=FILTER_ID)
                      for caption, image in images)
    return VIEWER_TEMPLATE.format(count=len(images), filter_id=FILTER_ID, figures=figures)
