"""The book's figure style: one place that sets every figure's resolution, type size and width.

The book is read on a laptop and projected in a lecture hall, so a figure's text must stay
legible at the size the page shows it. The rule, checked by ``benchmarks/book_browser_check.py``:

- every figure is rendered at ``DPI`` (150) and shown at its size in inches, one inch being
  96 CSS px (the CSS inch), so a font of f pt appears at f pt on the page;
- the page's main column is ``COLUMN_PX`` CSS px wide (the content box of the theme's
  ``article.bd-article``, sphinx-book-theme 1.3, in a 1280-px window: 752 px minus 2 x 32 px
  padding); a wider figure is scaled down to the column (``max-width: 100%`` in
  ``book/_static/medad.css``), and its fonts with it;
- so the smallest font of a figure, times its displayed width over its width, must be at least
  ``MIN_FONT_PT`` (10 pt). Figures are therefore drawn at most ``COLUMN_IN`` inches wide, with
  no font below 10 pt (:data:`RC`); a full-width figure is ``WIDTH_IN`` wide, so that the tight
  crop's margin still fits.

:func:`use` applies :data:`RC` and, inside IPython, renders every displayed matplotlib figure
through :func:`png_output`, which records the figure's width and smallest drawn font (:func:`measure`)
in the PNG itself (a ``medad-figure`` text chunk) and tells the page its display width.
"""
from __future__ import annotations

import base64
import io
import json
import sys

DPI = 150
MIN_FONT_PT = 10.0
CSS_PX_PER_INCH = 96
COLUMN_PX = 688
COLUMN_IN = COLUMN_PX / CSS_PX_PER_INCH  # 7.17 in
WIDTH_IN = 7.0  # a full-width figure: the column less the crop's margin (PAD_IN on each side)
PAD_IN = 0.04
PNG_KEY = "medad-figure"  # the PNG text chunk that carries a figure's record

RC = {
    "figure.dpi": DPI, "savefig.dpi": DPI, "figure.figsize": (WIDTH_IN, 3.6),
    "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 10, "ytick.labelsize": 10,
    "legend.fontsize": 10, "legend.title_fontsize": 10, "figure.titlesize": 11,
    "axes.titlelocation": "center", "legend.frameon": False,
}


def use() -> None:
    """Apply the book's style (:data:`RC`); in IPython, also show figures through :func:`png_output`."""
    import matplotlib

    matplotlib.rcParams.update(RC)
    _install_png_formatter()


def _install_png_formatter() -> None:
    shell = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    if shell is None:
        return
    from matplotlib.figure import Figure

    try:  # the inline backend registers its own PNG formatter when it first loads: load it first, then replace it
        import matplotlib_inline.backend_inline  # noqa: F401
    except ImportError:
        pass
    shell.display_formatter.formatters["image/png"].for_type(Figure, png_output)


def subplots(nrows: int = 1, ncols: int = 1, height: float = 3.6, width: float = WIDTH_IN, **kwargs):
    """``plt.subplots`` at the column's width (or ``width`` inches) and ``height`` inches."""
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(width, height), **kwargs)


def measure(fig) -> tuple[bytes, dict]:
    """Render ``fig`` as the book shows it; returns (PNG bytes without record, record).

    The record: ``width_in``/``height_in`` of the rendered image (after the tight crop, so a
    legend outside the axes counts), ``min_font_pt``, the smallest size of any text the renderer
    drew (titles, labels, tick labels, legends, colour bars, annotations; not hidden tick labels
    of an axis that is turned off), and ``dpi``.
    """
    from matplotlib.text import Text
    from PIL import Image

    drawn: list[float] = []
    original = Text.draw

    def recording_draw(text, renderer):
        if text.get_visible() and text.get_text().strip():
            drawn.append(float(text.get_fontsize()))
        return original(text, renderer)

    buffer = io.BytesIO()
    Text.draw = recording_draw  # for this render only: which texts are drawn is the renderer's decision, not ours
    try:
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=PAD_IN, facecolor="white")
    finally:
        Text.draw = original
    png = buffer.getvalue()
    width, height = Image.open(io.BytesIO(png)).size
    record = {"width_in": round(width / DPI, 3), "height_in": round(height / DPI, 3),
              "min_font_pt": min(drawn) if drawn else None, "dpi": DPI}
    return png, record


def png_output(fig) -> tuple[str, dict]:
    """The IPython ``image/png`` output of a figure: base64 PNG carrying its record, and its display width in px."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    png, record = measure(fig)
    info = PngInfo()
    info.add_text(PNG_KEY, json.dumps(record))
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).save(out, format="PNG", pnginfo=info, dpi=(DPI, DPI))
    return base64.b64encode(out.getvalue()).decode("ascii"), {"width": round(record["width_in"] * CSS_PX_PER_INCH)}


def read_record(png) -> dict | None:
    """The record :func:`png_output` stored in a PNG (a path or bytes); None for a PNG without one."""
    from PIL import Image

    image = Image.open(io.BytesIO(png) if isinstance(png, (bytes, bytearray)) else png)
    text = getattr(image, "text", {}) or {}
    return json.loads(text[PNG_KEY]) if PNG_KEY in text else None


def displayed_font_pt(record: dict, displayed_px: float) -> float:
    """The smallest font's size on the page when the figure is shown ``displayed_px`` CSS px wide (inf: no text)."""
    if record.get("min_font_pt") is None:
        return float("inf")
    return record["min_font_pt"] * displayed_px / (record["width_in"] * CSS_PX_PER_INCH)
