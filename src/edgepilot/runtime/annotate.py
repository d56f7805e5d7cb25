"""Draw results on a frame: boxes with labels and scores, keypoints, the top class, quality flags, rule states."""
from __future__ import annotations

import numpy as np

from edgepilot.runtime.item import Item

_PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
            (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0)]


def annotate(item: Item) -> np.ndarray:
    """A copy of item.frame (BGR) with everything the pipeline found drawn on it."""
    import cv2

    img = item.frame.copy()
    h, w = img.shape[:2]
    thick = max(1, round(min(h, w) / 320))
    font = 0.4 * thick + 0.1
    r = item.result
    if r is not None and r.kind == "detection":
        for d in r.detections:
            color = _PALETTE[d.class_id % len(_PALETTE)]
            x1, y1, x2, y2 = (round(v) for v in d.box)
            cv2.rectangle(img, (x1, y1), (x2, y2), color, thick + 1)
            _label(img, f"{d.label} {d.score:.2f}", (x1, y1), color, font, thick)
            for px, py in d.keypoints:
                cv2.circle(img, (round(px), round(py)), thick + 1, color, -1)
    elif r is not None and r.kind == "classification" and r.classes:
        _, label, score = r.classes[0]
        _label(img, f"{label} {score:.2f}", (0, 0), _PALETTE[0], font, thick, inside=True)
    lines = [f"{item.source} #{item.seq}"]
    flags = item.meta.get("quality")
    if flags:
        lines.append("quality: " + ",".join(flags))
    lines += [f"{e.rule}: {e.state or e.kind}" for e in item.events]
    for i, text in enumerate(lines):
        y = h - 8 - (len(lines) - 1 - i) * round(22 * font + 6)
        cv2.putText(img, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(img, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), thick, cv2.LINE_AA)
    return img


def _label(img: np.ndarray, text: str, at: tuple[int, int], color, font: float, thick: int,
           inside: bool = False) -> None:
    import cv2

    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, thick)
    x, y = at
    top = y if inside or y - th - base - 4 < 0 else y - th - base - 4
    cv2.rectangle(img, (x, top), (x + tw + 4, top + th + base + 4), color, -1)
    cv2.putText(img, text, (x + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), thick,
                cv2.LINE_AA)
