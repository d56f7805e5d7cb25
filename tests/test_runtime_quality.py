"""Frame quality checks on real photos and frames made from them: blank, dark, blurred, frozen, and skipping."""
from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edgepilot.assets import asset
from edgepilot.runtime.item import Item
from edgepilot.runtime.quality import QualityChecker, QualityConfig


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.imread(str(asset("photo-astronaut", download=False)), cv2.IMREAD_COLOR)


@pytest.fixture(scope="module")
def photos(astronaut) -> dict[str, np.ndarray]:
    out = {"astronaut": astronaut}
    for name in ("coffee", "chelsea", "rocket", "camera", "brick"):
        out[name] = cv2.imread(str(asset(f"photo-{name}", download=False)), cv2.IMREAD_COLOR)
    return out


def item(frame: np.ndarray | None, seq: int = 0, source: str = "cam") -> Item:
    return Item(source=source, seq=seq, ts=0.0, frame=frame)


def flags(checker: QualityChecker, frame: np.ndarray, source: str = "cam") -> list[str]:
    out = checker.process(item(frame, source=source))
    assert out is not None
    return out.meta["quality"]


def test_sharp_well_lit_photos_pass_clean(photos):
    checker = QualityChecker()
    for name, img in photos.items():
        assert flags(checker, img, source=name) == [], name
    out = checker.process(item(photos["astronaut"], source="astronaut"))
    m = out.meta["quality_metrics"]
    assert m["std"] > 50 and m["mean"] > 100 and m["blur_var"] > 1000 and m["diff"] == 0.0


def test_uniform_gray_is_blank(astronaut):
    gray = np.full_like(astronaut, 128)
    noisy = np.clip(gray.astype(np.int16) + np.random.default_rng(0).integers(-3, 4, gray.shape), 0, 255)
    checker = QualityChecker()
    assert flags(checker, gray) == ["blank"]  # not "blurred": focus cannot be judged without any texture
    assert flags(checker, noisy.astype(np.uint8), source="other") == ["blank"]
    assert flags(checker, np.zeros_like(astronaut), source="third") == ["blank", "dark"]


def test_dark_photo_is_dark(astronaut):
    dark = (astronaut.astype(np.float32) * 0.2).astype(np.uint8)
    assert flags(QualityChecker(), dark) == ["dark"]


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera", "brick"])
def test_blurred_photo_is_blurred(photos, name):
    blurred = cv2.GaussianBlur(photos[name], (0, 0), 5)
    out = QualityChecker().process(item(blurred))
    assert out.meta["quality"] == ["blurred"]
    assert out.meta["quality_metrics"]["blur_var"] < 100


def test_blur_measure_does_not_depend_on_resolution(astronaut):
    checker = QualityChecker()
    big = cv2.resize(astronaut, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    _, small_m = checker.measure(astronaut)
    _, big_m = checker.measure(big)
    assert big_m["blur_var"] == pytest.approx(small_m["blur_var"], rel=0.25)


def test_repeated_frame_is_frozen_after_n(astronaut, photos):
    checker = QualityChecker(QualityConfig(frozen_frames=3))
    got = [flags(checker, astronaut.copy()) for _ in range(6)]
    assert got == [[], [], [], ["frozen"], ["frozen"], ["frozen"]]
    assert flags(checker, photos["coffee"]) == []  # the picture changed: the count starts again
    assert flags(checker, photos["coffee"]) == []
    # per source: another camera showing the same picture is not frozen
    assert flags(checker, astronaut, source="cam2") == []
    assert checker.stats()["flagged"]["frozen"] == 3


def test_small_sensor_noise_still_counts_as_frozen_but_motion_does_not(astronaut):
    checker = QualityChecker(QualityConfig(frozen_frames=2))
    rng = np.random.default_rng(1)
    frames = [np.clip(astronaut.astype(np.int16) + rng.integers(-2, 3, astronaut.shape), 0, 255).astype(np.uint8)
              for _ in range(3)]
    assert [flags(checker, f) for f in frames] == [[], [], ["frozen"]]
    moving = QualityChecker(QualityConfig(frozen_frames=2))
    shifted = [np.roll(astronaut, 4 * k, axis=1) for k in range(4)]
    assert all(flags(moving, f) == [] for f in shifted)


def test_skip_drops_flagged_items_and_counts_them(astronaut):
    checker = QualityChecker(QualityConfig(skip=["blank", "blurred"]))
    assert checker.process(item(np.full_like(astronaut, 200))) is None
    assert checker.process(item(cv2.GaussianBlur(astronaut, (0, 0), 6), source="b")) is None
    dark = (astronaut * 0.2).astype(np.uint8)
    kept = checker.process(item(dark, source="c"))
    assert kept is not None and kept.meta["quality"] == ["dark"]  # flagged but not in skip: passes
    assert checker.process(item(astronaut, source="d")).meta["quality"] == []
    s = checker.stats()
    assert s["checked"] == 4 and s["skipped_items"] == 2
    assert s["skipped"] == {"blank": 1, "dark": 0, "blurred": 1, "frozen": 0}
    assert s["flagged"] == {"blank": 1, "dark": 1, "blurred": 1, "frozen": 0}


def test_items_without_frames_and_disabled_checker_pass_untouched(astronaut):
    checker = QualityChecker(QualityConfig(skip=["blank"]))
    sensor = Item(source="s", seq=0, ts=0.0, values={"t": 1.0})
    assert checker.process(sensor) is sensor and "quality" not in sensor.meta
    off = QualityChecker(QualityConfig(enabled=False, skip=["blank"]))
    blank = item(np.zeros_like(astronaut))
    assert off.process(blank) is blank and "quality" not in blank.meta
    assert checker.stats()["checked"] == 0


def test_reset_forgets_the_previous_frame(astronaut):
    checker = QualityChecker(QualityConfig(frozen_frames=1))
    assert flags(checker, astronaut) == []
    checker.reset("cam")
    assert flags(checker, astronaut) == []
    assert flags(checker, astronaut) == ["frozen"]


def test_concurrent_sources_keep_their_own_state(photos):
    checker = QualityChecker(QualityConfig(frozen_frames=5))
    results: dict[str, list[list[str]]] = {}

    def feed(name: str) -> None:
        results[name] = [flags(checker, photos[name], source=name) for _ in range(10)]

    threads = [threading.Thread(target=feed, args=(n,)) for n in ("astronaut", "coffee", "chelsea", "rocket")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, got in results.items():
        assert got == [[]] * 5 + [["frozen"]] * 5, name
    assert checker.stats()["checked"] == 40 and checker.stats()["flagged"]["frozen"] == 20


def test_config_rejects_unknown_flags_and_fields():
    with pytest.raises(ValidationError):
        QualityConfig(skip=["noisy"])
    with pytest.raises(ValidationError):
        QualityConfig(blank=3)
