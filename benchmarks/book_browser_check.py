"""Render the book's pages in headless Chromium; fail on sideways overflow, a broken image or too small figure text.

    .venv/bin/python benchmarks/book_browser_check.py [--html book/_build/html] [--chapters a,b | --pages p,q]
                                                       [--screenshots DIR] [--width 1280]

Every page of the table of contents (``_toc.yml``: the front page, the executed chapters,
Reproducing, References, ...) is checked, or just the named executed chapters (``--chapters``)
or pages (``--pages book/intro,book/reproducing``). A copy of each page with a small script
appended is loaded by Chromium (Debian's ``chromium`` package, run headless, no network); the
script waits for the page to load and writes what it measured into the DOM, which
``--dump-dom`` returns:

- the main column (the theme's ``article.bd-article``) must not be wider than the window lets it be
  (its ``scrollWidth`` within its ``clientWidth``), and no table, code block or
  output inside it may scroll sideways;
- every ``<img>`` in the page must have loaded (``naturalWidth > 0``);
- every figure in a cell output must carry the record ``medad.reports.style`` writes into its PNG
  (its width in inches and its smallest font in pt), and that font, scaled by the width the page
  shows the figure at over the figure's width, must be at least ``style.MIN_FONT_PT`` (10 pt).
  This reads the figure's parameters, not its pixels.

With ``--screenshots DIR`` each page is also saved as PNG slices (window height
1600 px) for a person to look at. Exit status 1 when any page fails.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=15000"]

PROBE = r"""
<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    var main = document.querySelector("article.bd-article") || document.querySelector("main")
               || document.querySelector("article") || document.body;
    var wide = [];
    main.querySelectorAll("table, pre, div.output, div.cell_output, div.highlight, img, div.math, mjx-container[display='true']")
      .forEach(function (el) {
        var style = getComputedStyle(el);
        if (el.offsetParent === null || style.display === "none") return;  // hidden (collapsed input)
        if (el.scrollWidth > el.clientWidth + 1 && el.clientWidth > 0) {
          wide.push(el.tagName.toLowerCase() + "." + (el.className.baseVal !== undefined ? el.className.baseVal : el.className)
                    + " " + el.scrollWidth + ">" + el.clientWidth + " px: " + (el.textContent || "").trim().slice(0, 60));
        }
        var box = el.getBoundingClientRect(), outer = main.getBoundingClientRect();
        if (box.width > 0 && box.right > outer.right + 1) {
          wide.push(el.tagName.toLowerCase() + " reaches " + Math.round(box.right) + " px, main column ends at "
                    + Math.round(outer.right) + " px: " + (el.textContent || "").trim().slice(0, 60));
        }
      });
    var broken = [], figures = [];
    document.querySelectorAll("img").forEach(function (img) {
      if (!img.complete || img.naturalWidth === 0) broken.push(img.getAttribute("src"));
      if (main.contains(img) && img.offsetParent !== null) {
        figures.push({src: img.src, shown_px: img.getBoundingClientRect().width,
                      output: !!img.closest("div.cell_output, div.output")});
      }
    });
    var out = document.createElement("pre");
    out.id = "medad-browser-check";
    out.textContent = JSON.stringify({
      main_scroll: main.scrollWidth, main_client: main.clientWidth,
      page_scroll: document.documentElement.scrollWidth, page_client: document.documentElement.clientWidth,
      height: document.documentElement.scrollHeight, images: document.images.length,
      wide: wide, broken: broken, figures: figures});
    document.body.appendChild(out);
  }, 1500);
});
</script>
"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("Chromium not found: apt-get install -y chromium (Debian's package)")


def check_page(page: Path, width: int, browser: str) -> dict:
    probe = page.with_name(page.stem + ".browser-check.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    try:
        with tempfile.TemporaryDirectory() as profile:
            proc = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},1200",
                                   "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=180)
    finally:
        probe.unlink(missing_ok=True)
    match = re.search(r'<pre id="medad-browser-check">(.*?)</pre>', proc.stdout, re.S)
    if not match:
        return {"error": f"no measurement from Chromium (exit {proc.returncode}): {proc.stderr[-500:]}"}
    import html

    return json.loads(html.unescape(match.group(1)))


def screenshots(page: Path, width: int, height: int, out: Path, browser: str, slice_px: int = 1600) -> list[Path]:
    """Full-page PNG cut into slices a person can read."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    full = out / f"{page.stem}-full.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={full}", page.as_uri()], capture_output=True, text=True, timeout=180)
    if not full.is_file():
        return []
    image = Image.open(full)
    parts = []
    for k, top in enumerate(range(0, image.height, slice_px)):
        part = out / f"{page.stem}-{k:02d}.png"
        image.crop((0, top, image.width, min(image.height, top + slice_px))).save(part)
        parts.append(part)
    full.unlink()
    return parts


def toc_pages(root: Path = ROOT) -> list[str]:
    """Every page of ``_toc.yml`` (``root`` first), as paths without suffix: ``book/intro``, ``book/executed/mvfa``."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                pages.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return list(dict.fromkeys(pages))


def figure_problems(figures: list[dict]) -> list[str]:
    """Figures in cell outputs whose smallest text would show below the minimum, or that carry no record."""
    from urllib.parse import unquote, urlparse

    from medad.reports import style

    problems = []
    for fig in figures:
        path = Path(unquote(urlparse(fig["src"]).path))
        if not path.is_file() or path.suffix.lower() != ".png":
            continue  # not loaded (reported as broken) or not a PNG (an SVG logo scales its own text)
        record = style.read_record(path)
        if record is None:
            if fig["output"]:
                problems.append(f"figure {path.name}: no '{style.PNG_KEY}' record (not drawn through medad.reports.style)")
            continue
        shown = style.displayed_font_pt(record, fig["shown_px"])
        if shown < style.MIN_FONT_PT - 0.05:
            problems.append(f"figure {path.name}: smallest text {record['min_font_pt']:g} pt in a {record['width_in']:g} in "
                            f"figure shown {fig['shown_px']:.0f} px wide = {shown:.1f} pt on the page "
                            f"(minimum {style.MIN_FONT_PT:g} pt)")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--html", type=Path, default=ROOT / "book" / "_build" / "html")
    parser.add_argument("--chapters", default="", help="comma-separated executed chapters (e.g. mvfa,egc)")
    parser.add_argument("--pages", default="", help="comma-separated pages as in _toc.yml (default: every page there)")
    parser.add_argument("--screenshots", type=Path, default=None)
    parser.add_argument("--width", type=int, default=1280, help="window width in px (1280: a laptop screen)")
    args = parser.parse_args()
    browser = chromium()
    names = ([f"book/executed/{c}" for c in args.chapters.split(",")] if args.chapters
             else args.pages.split(",") if args.pages else toc_pages())
    pages = [(args.html / f"{name}.html").resolve() for name in names]
    if not any(p.is_file() for p in pages):
        sys.exit(f"no pages under {args.html}: build the book first (python -m medad book)")
    failed = 0
    print(f"{'page':24s} {'images':>6s} {'main px':>9s} {'height':>7s}  result")
    for name, page in zip(names, pages):
        label = name.removeprefix("book/").removeprefix("executed/")
        if not page.is_file():
            print(f"{label:24s} missing page {page}")
            failed += 1
            continue
        m = check_page(page, args.width, browser)
        if "error" in m:
            print(f"{label:24s} {m['error']}")
            failed += 1
            continue
        problems = list(m["wide"]) + [f"image not loaded: {src}" for src in m["broken"]]
        problems += figure_problems(m.get("figures", []))
        if m["main_scroll"] > m["main_client"] + 1:
            problems.insert(0, f"main column {m['main_scroll']} px wide in {m['main_client']} px")
        if m["page_scroll"] > m["page_client"] + 1:
            problems.insert(0, f"page scrolls sideways: {m['page_scroll']} px in {m['page_client']} px")
        status = "ok" if not problems else f"FAIL ({len(problems)})"
        print(f"{label:24s} {m['images']:6d} {m['main_client']:6d} px {m['height']:7d}  {status}")
        for p in problems[:20]:
            print(f"    - {p}")
        failed += bool(problems)
        if args.screenshots:
            parts = screenshots(page, args.width, min(int(m["height"]) + 50, 30000), args.screenshots, browser)
            print(f"    screenshots: {len(parts)} slices in {args.screenshots}")
    print("every page fits, every image loaded, every figure's text is legible" if not failed
          else f"{failed} page(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
