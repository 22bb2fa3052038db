"""The pictures of a classification report: the confusion matrix and the reliability diagram (PIL, no plotting
library: they ship in a packed bundle)."""

from __future__ import annotations

import numpy as np

__all__ = ["confusion_matrix_png", "reliability_png"]


def confusion_matrix_png(cm: np.ndarray, names: list[str], path: str, cell: int = 64):
    """A plain confusion-matrix picture: rows = truth, columns = prediction, darker = more, counts written in.
    Saved to ``path``; the PIL image is returned."""
    from PIL import Image, ImageDraw

    c = len(names)
    margin = 110
    img = Image.new("RGB", (margin + c * cell + 10, margin + c * cell + 10), "white")
    draw = ImageDraw.Draw(img)
    row_sums = cm.sum(1, keepdims=True).clip(min=1)
    for i in range(c):
        for j in range(c):
            v = cm[i, j] / row_sums[i, 0]
            shade = int(255 * (1 - 0.85 * v))
            x0, y0 = margin + j * cell, margin + i * cell
            draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=(shade, shade, 255), outline="grey")
            draw.text((x0 + cell // 3, y0 + cell // 3), str(int(cm[i, j])), fill="black" if v < 0.6 else "white")
        draw.text((4, margin + i * cell + cell // 3), names[i][:16], fill="black")
        draw.text((margin + i * cell + 4, margin - 20), names[i][:9], fill="black")
    draw.text((margin, 8), "prediction ->", fill="black")
    draw.text((4, margin - 40), "truth", fill="black")
    img.save(path)
    return img


def reliability_png(reliability: list, path: str, size: int = 240) -> None:
    """The reliability diagram of :func:`calibration`'s bins: per bin, accuracy (bar) against mean confidence (dot),
    the diagonal being perfect calibration."""
    from PIL import Image, ImageDraw

    m, n = 30, len(reliability)
    img = Image.new("RGB", (size + 2 * m, size + 2 * m), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([m, m, m + size, m + size], outline="grey")
    draw.line([m, m + size, m + size, m], fill="grey")
    w = size / n
    for b, (count, conf, acc) in enumerate(reliability):
        if count:
            x0 = m + b * w
            draw.rectangle([x0 + 1, m + size * (1 - acc), x0 + w - 1, m + size], fill=(90, 120, 220))
            cx, cy = m + conf * size, m + size * (1 - conf)
            draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill="red")
    draw.text((m, 6), "accuracy (bars) vs confidence (dots)", fill="black")
    draw.text((m, m + size + 8), "0      confidence      1", fill="black")
    img.save(path)
