"""The demo's PNG: training loss per sweep for each version, and Recall@10 per version next to
the popularity baseline. Drawn with Pillow's primitives (no plotting stack needed)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
W, H, PAD = 460, 320, 48


def _panel(draw, x0, title, series, ylabel, xlabel):
    """series: [(label, [(x, y), ...], colour)]; draws axes, ticks and polylines."""
    pts = [p for _, s, _ in series for p in s]
    draw.text((x0 + PAD, 10), title, fill="black")
    left, top, right, bottom = x0 + PAD, 34, x0 + W - 16, H - PAD
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, bottom + 26), xlabel, fill="black")
    draw.text((x0 + 4, top - 14), ylabel, fill="black")
    if not pts:
        draw.text((left + 10, top + 10), "no data", fill="black")
        return
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    xmin, xmax = min(xs), max(xs)
    ymin, ymax = min(0.0, min(ys)), max(ys) * 1.1 or 1.0
    if xmax == xmin:
        xmax = xmin + 1

    def tx(x):
        return left + (x - xmin) / (xmax - xmin) * (right - left - 20) + 10

    def ty(y):
        return bottom - (y - ymin) / (ymax - ymin) * (bottom - top)

    for k in range(5):
        y = ymin + (ymax - ymin) * k / 4
        draw.line([left - 4, ty(y), left, ty(y)], fill="black")
        draw.text((x0 + 2, ty(y) - 6), f"{y:.3g}", fill="black")
    for x in sorted(set(xs)):
        draw.line([tx(x), bottom, tx(x), bottom + 4], fill="black")
        draw.text((tx(x) - 3, bottom + 8), f"{x:g}", fill="black")
    for n, (label, s, colour) in enumerate(series):
        s = sorted(s)
        if len(s) > 1:
            draw.line([(tx(x), ty(y)) for x, y in s], fill=colour, width=2)
        for x, y in s:
            draw.ellipse([tx(x) - 3, ty(y) - 3, tx(x) + 3, ty(y) + 3], fill=colour)
        draw.text((right - 150, top + 6 + 14 * n), label, fill=colour)


def plot_report(metas: list[dict], path: Path) -> Path:
    img = Image.new("RGB", (2 * W, H), "white")
    draw = ImageDraw.Draw(img)
    loss = []
    for k, m in enumerate(metas):
        hist = (m.get("training") or {}).get("history") or []
        loss.append((f"version {m['version']} loss", [(h["epoch"], h["loss"]) for h in hist if "loss" in h],
                     COLOURS[k % len(COLOURS)]))
    _panel(draw, 0, "training loss per sweep", loss, "loss", "sweep / epoch")
    rec_model = [(m["version"], m["evaluation"]["model"]["recall@10"]) for m in metas
                 if m.get("evaluation", {}).get("model", {}).get("recall@10") is not None]
    rec_pop = [(m["version"], m["evaluation"]["popular"]["recall@10"]) for m in metas
               if m.get("evaluation", {}).get("popular", {}).get("recall@10") is not None]
    _panel(draw, W, "held-out Recall@10 per version", [
        ("model", rec_model, COLOURS[0]), ("most popular", rec_pop, COLOURS[1])], "Recall@10", "version")
    path = Path(path)
    img.save(path)
    return path
