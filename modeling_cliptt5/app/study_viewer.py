"""The study's images side by side at their own resolution and full depth: the browser receives each image's values
(8 or 16 bits) and windows them itself in the modality's units, so window/level, presets, zoom and pan cost no server
call; the finding head's heatmaps lie over the images and move with them.

Controls: drag for window/level, Shift+drag (or the middle button) to pan, the wheel to zoom about the pointer;
keys while an image has focus: H header window, L lung, M mediastinum, B bone, A full range, I invert, F fit,
1 one image pixel per screen pixel, R reset. Window buttons and keys act on every image (each with its own values);
a drag or a typed level/width acts on the image under the pointer. The prior study's images stand after the study's,
each linked to the study's image of the same place in the order (frontal with frontal): a drag or the wheel on one
moves both (linked_views.js)."""

import base64
import hashlib
import html
import io
import json
import zlib
from importlib import resources

import numpy as np
from PIL import Image

# Heatmaps are smooth (one value per image patch): a quarter of a typical preview's size is plenty.
HEATMAP_MAX_SIDE = 256
HEATMAP_COLOR = (255, 64, 0)  # orange-red; its opacity follows the patch's probability
DEFAULT_HEATMAP_OPACITY = 60  # percent
# zlib's fastest level: a 2.5 k x 2 k 16-bit film compresses in tens of milliseconds, higher levels gain little.
PIXEL_COMPRESSION_LEVEL = 1

WINDOW_BUTTONS = (("header0", "Header (H)"), ("lung", "Lung (L)"), ("mediastinum", "Mediastinum (M)"),
                  ("bone", "Bone (B)"), ("full", "Full range (A)"))

VIEWER_TEMPLATE = """
<div class="cxr-viewer" data-images="{count}">
  <div class="cxr-controls">
    <label>Level <input type="number" data-control="level" step="any"></label>
    <label>Width <input type="number" data-control="width" step="any" min="1"></label>
    <span class="cxr-active" data-control="active"></span>
    <span class="cxr-windows">{window_buttons}</span>
    <label><input type="checkbox" data-control="invert"> Invert (I)</label>
    <button type="button" data-action="fit">Fit (F)</button>
    <button type="button" data-action="actual">1:1 (1)</button>
    <button type="button" data-action="reset">Reset (R)</button>{heatmap_controls}
  </div>
  <p class="cxr-help">Drag: window/level &middot; Shift+drag or middle button: pan &middot; wheel: zoom at the pointer</p>
  <div class="cxr-images">{figures}</div>
</div>
"""

FIGURE_TEMPLATE = """
<figure class="cxr-figure{figure_class}">
  <div class="cxr-frame" tabindex="0" aria-label="{caption}">
    <div class="cxr-stage" style="width:{columns}px;height:{rows}px">
      <canvas class="cxr-canvas" width="{columns}" height="{rows}" data-key="{key}" data-caption="{caption}"
              data-dtype="{dtype}" data-offset="{offset}" data-slope="{slope}" data-mono1="{monochrome1}"
              data-units="{units}" data-windows="{windows}" data-default="{default}" data-link="{link}"
              data-pixels="{pixels}"></canvas>{overlays}
    </div>
  </div>
  <figcaption>{caption} <span class="cxr-window-text"></span></figcaption>
</figure>
"""

HEATMAP_CONTROLS = """
    <label>Heatmap <select data-control="heatmap"><option value="">none</option>{options}</select></label>
    <label>Opacity <input type="range" data-control="opacity" min="0" max="100" value="{opacity}"></label>"""

OVERLAY_TEMPLATE = '<img class="cxr-heatmap" data-finding="{finding}" src="{src}" alt="heatmap: {finding}" hidden>'

EMPTY_VIEWER = '<div class="cxr-viewer cxr-empty">Drop PNG, JPEG or DICOM images of one study above.</div>'


def static_text(name):
    """A file of the page's front end, app/static/ (package data: the wheel carries it)."""
    return (resources.files(__package__) / "static" / name).read_text(encoding="utf-8")


VIEWER_CSS = static_text("viewer.css")
# gr.HTML's js_on_load: one function body, so the viewer's arithmetic (viewer_logic.js) and how linked images follow
# one another (linked_views.js), each tested on its own by tests/app/js/, go in front of the glue to the page
# (viewer.js) that calls them.
VIEWER_JS = static_text("viewer_logic.js") + static_text("linked_views.js") + static_text("viewer.js")


def value_bytes(values):
    """The values as the browser reads them: little-endian uint8 or uint16 bytes, and which."""
    dtype = "u2" if values.dtype.itemsize == 2 else "u1"
    return np.ascontiguousarray(values, dtype="<u2" if dtype == "u2" else "u1").tobytes(), dtype


def heatmap_data_uri(size, finding_map):
    """A transparent PNG of `size` (width, height) or smaller with its aspect, coloured where the finding's map
    (grid x grid patch probabilities of the square the model read: the centre crop of the shortest side) is high."""
    width, height = size
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


def figure_html(caption, display, maps, send_values=True, link="", prior=False):
    """One image's figure; images with the same `link` move together (linked_views.js); `prior`: an image of the prior
    study, set apart by its frame."""
    raw, dtype = value_bytes(display.values)
    pixels = base64.b64encode(zlib.compress(raw, PIXEL_COMPRESSION_LEVEL)).decode("ascii") if send_values else ""
    rows, columns = display.values.shape
    windows = {key: [label, round(center, 4), round(width, 4)] for key, (label, center, width)
               in display.windows().items()}
    if display.downscale > 1:
        caption = f"{caption} (shown at 1/{display.downscale} of its resolution)"
    overlays = "".join(OVERLAY_TEMPLATE.format(finding=html.escape(name), src=heatmap_data_uri((columns, rows), values))
                       for name, values in (maps or {}).items())
    return FIGURE_TEMPLATE.format(
        figure_class=" cxr-prior" if prior else "", link=link, caption=html.escape(caption), columns=columns,
        rows=rows, key=hashlib.sha1(raw).hexdigest()[:16],
        dtype=dtype, offset=repr(float(display.offset)), slope=repr(float(display.slope)),
        monochrome1=int(display.monochrome1), units=html.escape(display.units),
        windows=html.escape(json.dumps(windows)), default=display.default_window(), pixels=pixels, overlays=overlays)


def viewer_html(images, heatmaps=None, send_values=True, priors=()):
    """The viewer for [(caption, images/display.DisplayImage)], images side by side, then the prior study's images
    (`priors`, the same form): the study's n-th image and the prior's n-th are linked (frontal with frontal, where
    both stand frontal first), so that a drag, the wheel or a pan on one moves the other.

    `heatmaps`: per image, {finding name: grid x grid map} (or None for an image the model did not read); the
    viewer then offers a heatmap choice and its opacity, shown over every image that has one. `send_values`
    False: the page already shows these images (a draft adding heatmaps), so their values are not sent again
    (megabytes for a full-size film); the browser keeps them by content key."""
    if not images:
        return EMPTY_VIEWER
    heatmaps = list(heatmaps or [])
    heatmaps += [None] * (len(images) - len(heatmaps))
    paired = min(len(images), len(priors))
    links = [str(index) if index < paired else "" for index in range(max(len(images), len(priors)))]
    figures = [figure_html(caption, display, maps, send_values, links[index])
               for index, ((caption, display), maps) in enumerate(zip(images, heatmaps))]
    figures += [figure_html(caption, display, None, send_values, links[index], prior=True)
                for index, (caption, display) in enumerate(priors)]
    has_header_window = any(display.header_windows for _, display in [*images, *priors])
    buttons = "".join(f'<button type="button" data-window="{key}">{label}</button>' for key, label in WINDOW_BUTTONS
                      if key != "header0" or has_header_window)
    names = list(dict.fromkeys(name for maps in heatmaps if maps for name in maps))
    controls = HEATMAP_CONTROLS.format(
        options="".join(f'<option value="{html.escape(name)}">{html.escape(name)}</option>' for name in names),
        opacity=DEFAULT_HEATMAP_OPACITY) if names else ""
    return VIEWER_TEMPLATE.format(count=len(images), figures="".join(figures), window_buttons=buttons,
                                  heatmap_controls=controls)
