"""The rule engine: dwell, debounce, hysteresis, cooldown, zones, counts, sensors, actions, messages, config errors."""
from __future__ import annotations

import logging
import math
import threading

import numpy as np
import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from edgepilot.config import load_yaml
from edgepilot.errors import ConfigError
from edgepilot.runtime.item import Detection, FrameTransform, Item, Result
from edgepilot.runtime.rules import RuleConfig, RuleEngine, RulesConfig

DIGITS = [str(d) for d in range(10)]


def engine(text: str) -> RuleEngine:
    return RuleEngine(RulesConfig.model_validate(yaml.safe_load(text)).rules)


def classified(top: str, score: float, ts: float, seq: int = 0, source: str = "cam0") -> Item:
    """A digit classification: `top` first with `score`, the rest share what is left."""
    rest = [(i, d, (1 - score) / 9) for i, d in enumerate(DIGITS) if d != top]
    classes = [(int(top), top, score)] + rest[:4]
    return Item(source, seq, ts, result=Result("classification", classes=classes))


def detected(boxes: list[tuple[float, float, float, float]], ts: float, seq: int = 0, source: str = "cam0",
             label: str = "face", score: float = 0.9, frame_wh: tuple[int, int] | None = (640, 480),
             via_transform: bool = False) -> Item:
    dets = [Detection(tuple(map(float, b)), score, 0, label) for b in boxes]
    item = Item(source, seq, ts, result=Result("detection", detections=dets))
    if frame_wh and via_transform:
        item.transform = FrameTransform(0.2, 0.2, 0, 0, frame_wh[0], frame_wh[1], 128, 128)
    elif frame_wh:
        item.frame = np.zeros((frame_wh[1], frame_wh[0], 3), np.uint8)
    return item


def sensor(value: float, ts: float, seq: int = 0, source: str = "board", name: str = "temperature") -> Item:
    return Item(source, seq, ts, values={name: value})


def run(eng: RuleEngine, items: list[Item]) -> list[tuple[int, str, str | None]]:
    """(item seq, kind, state) of every event, in order."""
    return [(e.seq, e.kind, e.state) for it in items for e in eng.process(it).events]


def test_debounce_frames_activates_on_the_nth_true_evaluation_and_does_not_repeat():
    eng = engine("rules: [{name: seven, when: {label: '7', min_confidence: 0.5}, debounce: {frames: 3}}]")
    items = [classified("7", 0.9, ts=i * 0.1, seq=i) for i in range(6)]
    assert run(eng, items[:2]) == []
    assert run(eng, items[2:]) == [(2, "alert", "raised")]
    # a false frame before the Nth restarts the count
    eng = engine("rules: [{name: seven, when: {label: '7'}, debounce: {frames: 3}}]")
    seq = ["7", "7", "1", "7", "7", "7"]
    assert run(eng, [classified(d, 0.9, ts=i, seq=i) for i, d in enumerate(seq)]) == [(5, "alert", "raised")]


def test_debounce_seconds_needs_the_span_as_well_as_the_frames():
    eng = engine("rules: [{name: seven, when: {label: '7'}, debounce: {frames: 2, seconds: 1.0}}]")
    items = [classified("7", 0.9, ts=i * 0.25, seq=i) for i in range(6)]
    assert run(eng, items) == [(4, "alert", "raised")]  # ts 1.0 is the first a full second after ts 0


def test_clear_hysteresis_needs_consecutive_false_evaluations():
    eng = engine("rules: [{name: seven, when: {label: '7'}, clear: {frames: 3}}]")
    digits = ["7", "1", "1", "7", "2", "3", "4", "5"]
    events = run(eng, [classified(d, 0.9, ts=i, seq=i) for i, d in enumerate(digits)])
    assert events == [(0, "alert", "raised"), (6, "alert", "cleared")]


def test_clear_seconds_counts_from_the_first_false_evaluation():
    eng = engine("rules: [{name: seven, when: {label: '7'}, clear: {frames: 1, seconds: 2}}]")
    items = [classified("7", 0.9, ts=0, seq=0)] + [classified("1", 0.9, ts=t, seq=i + 1)
                                                    for i, t in enumerate([1, 2, 2.5, 3, 4])]
    assert run(eng, items) == [(0, "alert", "raised"), (4, "alert", "cleared")]


def test_clear_confidence_band_stops_a_wobbling_score_from_flapping():
    wobble = [0.7, 0.55, 0.65, 0.5, 0.62, 0.45, 0.68, 0.52]
    rule = "{name: seven, when: {label: '7', min_confidence: 0.6%s}}"
    flappy = engine(f"rules: [{rule % ''}]")
    banded = engine(f"rules: [{rule % ', clear_confidence: 0.4'}]")
    items = lambda: [classified("7", s, ts=i, seq=i) for i, s in enumerate(wobble)]  # noqa: E731
    assert [st for _, _, st in run(flappy, items())] == ["raised", "cleared"] * 4
    assert run(banded, items()) == [(0, "alert", "raised")]
    # below the band it does clear
    assert run(banded, [classified("7", 0.3, ts=10, seq=10)]) == [(10, "alert", "cleared")]


def test_cooldown_suppresses_events_but_the_state_machine_keeps_tracking():
    eng = engine("rules: [{name: seven, when: {label: '7'}, cooldown_s: 10, actions: [alert, event]}]")
    timeline = [(0, "7"), (2, "1"), (4, "7"), (6, "1"), (10.5, "7"), (11, "1")]
    items = [classified(d, 0.9, ts=t, seq=i) for i, (t, d) in enumerate(timeline)]
    assert run(eng, items[:2]) == [(0, "alert", "raised"), (0, "event", None), (1, "alert", "cleared")]
    assert run(eng, items[2:3]) == []  # activation within the cooldown: tracked, not announced
    assert eng.state() == [{"rule": "seven", "source": "cam0", "since": 4, "severity": "warning",
                            "message": eng.state()[0]["message"], "suppressed": True, "raised_event_id": None}]
    assert run(eng, items[3:4]) == []  # and its clearing is silent too
    assert eng.state() == []
    # the suppressed activation did not extend the cooldown: 10.5 s after the announced one it speaks again
    assert run(eng, items[4:]) == [(4, "alert", "raised"), (4, "event", None), (5, "alert", "cleared")]
    stats = eng.stats()["rules"]["seven"]
    assert (stats["activations"], stats["suppressed"], stats["clears"], stats["events"]) == (3, 1, 3, 6)


def test_state_is_kept_per_source_and_sources_filter_applies():
    eng = engine("""
rules:
  - {name: any-seven, when: {label: '7'}, debounce: {frames: 2}}
  - {name: cam1-only, sources: [cam1], when: {label: '7'}}
""")
    items = []
    for i in range(3):  # interleaved: cam0 sees 7s, cam1 sees 7 only once, cam2 never
        items += [classified("7", 0.9, ts=i, seq=i, source="cam0"),
                  classified("7" if i == 0 else "3", 0.9, ts=i, seq=i, source="cam1"),
                  classified("4", 0.9, ts=i, seq=i, source="cam2")]
    events = [(e.rule, e.source, e.seq, e.state) for it in items for e in eng.process(it).events]
    assert events == [("cam1-only", "cam1", 0, "raised"), ("any-seven", "cam0", 1, "raised"),
                      ("cam1-only", "cam1", 1, "cleared")]
    assert [(s["rule"], s["source"], s["since"]) for s in eng.state()] == [("any-seven", "cam0", 1)]
    stats = eng.stats()
    assert stats["items"] == 9
    assert stats["rules"]["cam1-only"]["evaluations"] == 3 and stats["rules"]["any-seven"]["evaluations"] == 9
    assert stats["rules"]["any-seven"]["active"] == 1


ZONE = "[[0.1, 0.1], [0.6, 0.1], [0.6, 0.9], [0.1, 0.9]]"  # on 640x480: x 64..384, y 48..432
INSIDE, OUTSIDE = (100, 100, 200, 200), (450, 100, 550, 200)


@pytest.mark.parametrize("via_transform", [False, True])
def test_normalized_zone_tests_the_box_centre_in_frame_pixels(via_transform):
    eng = engine(f"rules: [{{name: door, when: {{label: face, zone: {ZONE}}}, clear: {{frames: 1}}}}]")
    items = [detected([OUTSIDE], ts=0, seq=0, via_transform=via_transform),
             detected([OUTSIDE, INSIDE], ts=1, seq=1, via_transform=via_transform),
             detected([OUTSIDE], ts=2, seq=2, via_transform=via_transform)]
    out = [eng.process(it).events for it in items]
    assert [[(e.state, e.data["count"]) for e in evs] for evs in out] == [[], [("raised", 1)], [("cleared", 0)]]
    assert out[1][0].data["boxes"] == [list(map(float, INSIDE))]


def test_pixel_zone_and_bottom_centre_anchor():
    # a box whose centre (150, 150) is above the zone but whose bottom centre (150, 390) is inside it
    box = (100, 0, 200, 300)
    zone = "[[64, 300], [384, 300], [384, 432], [64, 432]]"
    centre = engine(f"rules: [{{name: z, when: {{zone_units: pixels, zone: {zone}}}}}]")
    feet = engine(f"rules: [{{name: z, when: {{zone_units: pixels, zone_anchor: bottom_center, zone: {zone}}}}}]")
    assert run(centre, [detected([box], ts=0, frame_wh=None)]) == []  # pixels need no frame size
    assert run(feet, [detected([box], ts=0, frame_wh=None)]) == [(0, "alert", "raised")]


def test_normalized_zone_without_frame_size_logs_once_and_counts_as_false(caplog):
    eng = engine(f"rules: [{{name: door, when: {{zone: {ZONE}}}}}]")
    with caplog.at_level(logging.ERROR, logger="edgepilot.runtime.rules"):
        events = run(eng, [detected([INSIDE], ts=i, seq=i, frame_wh=None) for i in range(3)])
    assert events == []
    assert [r.getMessage() for r in caplog.records if "frame size" in r.getMessage()] == [
        "rule door on cam0: a normalized zone needs the frame size, but the item has neither frame nor transform "
        "(set zone_units: pixels, or keep frames on the items)"]
    assert eng.stats()["rules"]["door"]["errors"] == 3
    # once frames carry a size the same rule works
    assert run(eng, [detected([INSIDE], ts=5, seq=5)]) == [(5, "alert", "raised")]


def test_dwell_needs_the_condition_to_hold_continuously_before_debounce_counts():
    eng = engine(f"rules: [{{name: loiter, when: {{zone: {ZONE}, dwell_s: 2.0}}, debounce: {{frames: 2}}}}]")
    # inside at 0, 0.5, 1.0, out at 1.5 (dwell restarts), inside from 2.0: dwell met at 4.0, debounce 2 -> 4.5
    boxes = {0: INSIDE, 0.5: INSIDE, 1.0: INSIDE, 1.5: OUTSIDE}
    items = [detected([boxes.get(i * 0.5, INSIDE)], ts=i * 0.5, seq=i) for i in range(12)]
    events = [e for it in items for e in eng.process(it).events]
    assert [(e.seq, e.ts, e.state) for e in events] == [(9, 4.5, "raised")]
    assert events[0].data["since"] == 2.0


def test_a_clock_that_jumps_back_keeps_the_spans_already_held():
    # a looping file restarts its timestamps: dwell and cooldown carry on instead of stalling until ts catches up
    eng = engine("rules: [{name: seven, when: {label: '7', dwell_s: 2}, cooldown_s: 5}]")
    timeline = [(100, "7"), (101, "7"), (0, "7"), (1, "7"), (2, "1"), (3, "7"), (5, "7"), (6, "1"), (7, "7"),
                (9, "7")]
    items = [classified(d, 0.9, ts=t, seq=i) for i, (t, d) in enumerate(timeline)]
    # 100 -> 101 -> (jump) 0 -> 1 is 2 s of dwell; the re-activation at 5 is 4 s after the raise (suppressed),
    # the one at 9 is 8 s after it
    assert run(eng, items) == [(3, "alert", "raised"), (4, "alert", "cleared"), (9, "alert", "raised")]
    assert eng.stats()["rules"]["seven"]["suppressed"] == 1


def test_min_and_max_count():
    eng = engine("rules: [{name: crowd, when: {label: person, min_count: 2, max_count: 3}}]")
    n_boxes = [1, 4, 2]
    items = [detected([INSIDE] * n, ts=i, seq=i, label="person") for i, n in enumerate(n_boxes)]
    assert run(eng, items) == [(2, "alert", "raised")]
    empty = engine("rules: [{name: nobody, when: {label: person, min_count: 0, max_count: 0}}]")
    items = [detected([INSIDE], ts=0, seq=0, label="person"), detected([INSIDE], ts=1, seq=1, label="cat")]
    assert run(empty, items) == [(1, "alert", "raised")]


def test_labels_class_ids_confidence_and_top_k_on_classification():
    item = lambda seq: Item("cam0", seq, seq, result=Result(  # noqa: E731
        "classification", classes=[(3, "3", 0.5), (8, "8", 0.4), (5, "5", 0.1)]))
    assert run(engine("rules: [{name: r, when: {label: '8'}}]"), [item(0)]) == []  # top-1 only by default
    assert run(engine("rules: [{name: r, when: {label: [9, 8], top_k: 2}}]"), [item(0)]) == [(0, "alert", "raised")]
    assert run(engine("rules: [{name: r, when: {class_id: [3, 9], min_confidence: 0.5}}]"), [item(0)]) == [
        (0, "alert", "raised")]
    assert run(engine("rules: [{name: r, when: {class_id: 3, min_confidence: 0.51}}]"), [item(0)]) == []


def test_sensor_above_with_clear_below_band():
    eng = engine("rules: [{name: hot, when: {field: temperature, above: 70, clear_below: 65}}]")
    values = [60, 71, 69, 72, 66, 64.9, 70.5]
    events = [e for i, v in enumerate(values) for e in eng.process(sensor(v, ts=i, seq=i)).events]
    assert [(e.seq, e.state, e.data["value"]) for e in events] == [
        (1, "raised", 71.0), (5, "cleared", 64.9), (6, "raised", 70.5)]
    assert events[0].message == "hot on board: temperature = 71"
    assert events[0].data["threshold"] == 70 and events[1].data["threshold"] == 65


def test_sensor_below_with_clear_above_band_and_skipped_readings():
    eng = engine("rules: [{name: cold, when: {field: t, below: 10, clear_above: 12}}]")
    items = [sensor(9, 0, 0, name="t"), sensor(11, 1, 1, name="t"), sensor(13, 2, 2, name="humidity"),
             sensor(math.nan, 3, 3, name="t"), Item("board", 4, 4, values={"t": 13}, error="read failed"),
             sensor(12.5, 5, 5, name="t")]
    assert run(eng, items) == [(0, "alert", "raised"), (5, "alert", "cleared")]
    assert eng.stats()["rules"]["cold"]["skipped"] == 3  # wrong field, NaN, error: state untouched


def test_items_without_result_or_with_an_error_do_not_advance_result_rules():
    eng = engine("rules: [{name: seven, when: {label: '7'}, debounce: {frames: 2}, clear: {frames: 2}}]")
    broken = classified("1", 0.9, ts=1.5, seq=99)
    broken.error = "inference failed"
    items = [classified("7", 0.9, 0, 0), Item("cam0", 1, 1.0), broken, sensor(1.0, 1.7, 98, source="cam0"),
             classified("7", 0.9, 2, 2)]
    assert run(eng, items) == [(2, "alert", "raised")]
    assert eng.stats()["rules"]["seven"]["skipped"] == 3


def test_actions_map_to_event_kinds_and_destinations():
    eng = engine("""
rules:
  - name: door
    when: {label: face}
    actions: [alert, event, {mqtt: alerts/door}, {mqtt: alerts/all}, {webhook: "http://127.0.0.1:9/hook"}]
  - name: log-only
    when: {label: face}
    actions: [event]
""")
    raised = eng.process(detected([INSIDE], ts=0)).events
    cleared = eng.process(detected([], ts=1, seq=1)).events
    assert [(e.rule, e.kind, e.state) for e in raised] == [("door", "alert", "raised"), ("door", "event", None),
                                                             ("log-only", "event", None)]
    assert [(e.rule, e.kind, e.state) for e in cleared] == [("door", "alert", "cleared")]
    for e in raised[:2] + cleared:
        assert e.mqtt_topics == ("alerts/door", "alerts/all") and e.webhooks == ("http://127.0.0.1:9/hook",)
    assert raised[2].mqtt_topics == () and raised[2].webhooks == ()
    assert cleared[0].data["raised_event_id"] == raised[0].event_id and cleared[0].data["active_s"] == 1
    assert raised[0].severity == "warning" and raised[0].ts == 0 and raised[0].source == "cam0"
    assert raised[0].data == {"count": 1, "labels": ["face"], "scores": [0.9], "class_ids": [0],
                              "boxes": [[100.0, 100.0, 200.0, 200.0]], "since": 0}


def test_message_templates():
    eng = engine(f"""
rules:
  - name: door
    when: {{label: face, zone: {ZONE}}}
    severity: critical
    message: "{{count}} {{label}} in zone on {{source}} ({{rule}}, best {{score:.2f}})"
  - name: default-message
    when: {{label: face}}
""")
    raised = eng.process(detected([INSIDE, INSIDE], ts=0)).events
    assert [(e.message, e.severity) for e in raised] == [("2 face in zone on cam0 (door, best 0.90)", "critical"),
                                                          ("default-message on cam0: 2 face (score 0.90)", "warning")]
    cleared = eng.process(detected([], ts=1, seq=1)).events
    assert cleared[0].message == "cleared: 2 face in zone on cam0 (door, best 0.90)"


HEAD = "rules:\n  - name: r\n"


@pytest.mark.parametrize("body,line,field,msg", [
    ("    when:\n      label: face\n      min_confidence: 0.5\n      clear_confidence: 0.7\n",
     6, "rules.0.when.clear_confidence", r"clear_confidence \(0.7\) must be <= min_confidence \(0.5\)"),
    ("    when:\n      field: temperature\n      above: 70\n      zone: [[0, 0], [1, 0], [1, 1]]\n",
     6, "rules.0.when.zone", r"a sensor condition \(field: temperature\) cannot have zone"),
    ("    when:\n      zone: [[0, 0], [1, 1]]\n", 4, "rules.0.when.zone", "zone needs at least 3 points, got 2"),
    ("    when:\n      zone: [[0, 0], [640, 0], [640, 480]]\n", 4, "rules.0.when.zone",
     r"zone point 1 \(640, 0\) is outside 0..1 while zone_units is normalized: set zone_units: pixels"),
    ("    when: {zone: [[0, 0], [0.5, 0.5], [1, 1]]}\n", 3, "rules.0.when.zone", "zone has zero area"),
    ("    when: {field: temperature}\n", 3, "rules.0.when", r"needs above or below"),
    ("    when: {field: t, above: 70, below: 10}\n", 3, "rules.0.when.below", "set above or below, not both"),
    ("    when: {field: t, above: 70, clear_below: 75}\n", 3, "rules.0.when.clear_below",
     r"clear_below \(75.0\) is the clear band under above"),
    ("    when: {label: face, max_count: 0}\n", 3, "rules.0.when.max_count",
     r"max_count \(0\) must be >= min_count \(1\); set min_count: 0"),
    ("    when: {label: face}\n    message: '{count} {colour}'\n", 4, "rules.0.message",
     r"unknown field \{colour\}; known: \{rule\} \{source\}"),
    ("    when: {label: face}\n    message: '{label:.2f}'\n", 4, "rules.0.message", "cannot be formatted"),
    ("    when: {label: face}\n    actions: [alert, {email: a@b}]\n", 4, "rules.0.actions.1",
     r"an action is alert, event, \{mqtt: topic\} or \{webhook: url\}"),
    ("    when: {label: face}\n    actions: [{mqtt: alerts/#}]\n", 4, "rules.0.actions.0", "wildcard"),
    ("    when: {label: face}\n    actions: [{mqtt: alerts/door}]\n", 4, "rules.0.actions",
     "actions needs alert or event"),
    ("    when: {label: face}\n    debounce: {frames: 0}\n", 4, "rules.0.debounce.frames", "greater than or equal"),
    ("    when: {label: face}\n    sources: []\n", 4, "rules.0.sources", "omit it to match every source"),
    ("    when: {label: face, colour: red}\n", 3, "rules.0.when.colour", "Extra inputs are not permitted"),
    ("    when: {label: face}\n  - name: r\n    when: {label: cat}\n", 1, "rules", "two rules are named 'r'"),
])
def test_config_errors_name_file_line_and_field(tmp_path, body, line, field, msg):
    class PipelineLike(BaseModel):
        model_config = ConfigDict(extra="forbid")
        rules: list[RuleConfig] = []

    path = tmp_path / "rules.yaml"
    path.write_text(HEAD + body)
    model = RulesConfig if field == "rules" else PipelineLike
    with pytest.raises(ConfigError, match=rf"rules\.yaml:{line}: {field}: .*{msg}"):
        load_yaml(path, model)


def test_config_round_trips_and_duplicate_names_fail_in_the_engine(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("""
rules:
  - name: face-at-door
    sources: [cam0]
    when:
      label: face
      min_confidence: 0.6
      clear_confidence: 0.4
      min_count: 1
      zone: [[0.1, 0.1], [0.6, 0.1], [0.6, 0.9], [0.1, 0.9]]
      dwell_s: 2.0
    debounce: {frames: 3}
    clear: {frames: 5}
    cooldown_s: 30
    message: "{count} {label} in zone on {source}"
    actions: [alert, event, {mqtt: alerts/door}, {webhook: "http://127.0.0.1:8080/hook"}]
  - name: overheating
    when: {field: temperature, above: 70, clear_below: 65}
""")
    cfg = load_yaml(path, RulesConfig)
    assert RulesConfig.model_validate(cfg.model_dump()) == cfg
    assert RulesConfig.model_validate_json(cfg.model_dump_json()) == cfg
    with pytest.raises(ConfigError, match="two rules are named 'overheating'"):
        RuleEngine(cfg.rules + cfg.rules[1:])


def test_concurrent_sources_each_get_exactly_their_events():
    eng = engine("rules: [{name: seven, when: {label: '7'}, debounce: {frames: 2}, clear: {frames: 2}}]")
    collected: dict[str, list] = {}

    def feed(source: str) -> None:
        # 20 cycles of 7,7,7,1,1: one raise and one clear per cycle
        digits = ["7", "7", "7", "1", "1"] * 20
        collected[source] = run(eng, [classified(d, 0.9, ts=i, seq=i, source=source) for i, d in enumerate(digits)])

    threads = [threading.Thread(target=feed, args=(f"cam{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for events in collected.values():
        assert [s for _, _, s in events] == ["raised", "cleared"] * 20
        assert [q for q, _, _ in events[:2]] == [1, 4]
    assert eng.stats()["rules"]["seven"]["events"] == 4 * 40


def test_digit_classification_raises_once_at_the_debounce_frame_and_clears_once():
    eng = engine("""
rules:
  - name: seven-seen
    when: {label: 7, min_confidence: 0.6}   # unquoted: YAML reads an int, the rule a label
    debounce: {frames: 3}
    clear: {frames: 4}
    message: "digit {label} on {source} (p={score:.2f})"
""")
    digits = ["7"] * 5 + ["1", "2", "7", "3", "4", "5", "6", "8", "9", "0"]
    items = [classified(d, 0.8 + 0.01 * i, ts=i / 30, seq=i, source="digits") for i, d in enumerate(digits)]
    events = [e for it in items for e in eng.process(it).events]
    # raised at the 3rd "7"; the stray "7" at seq 7 resets the clear count, so it clears at seq 11
    assert [(e.seq, e.kind, e.state) for e in events] == [(2, "alert", "raised"), (11, "alert", "cleared")]
    assert events[0].message == "digit 7 on digits (p=0.82)"
    assert events[0].data["labels"] == ["7"] and events[0].data["count"] == 1
    assert events[1].data["count"] == 0 and events[1].message == "cleared: digit 7 on digits (p=0.82)"
    assert eng.state() == [] and eng.stats()["rules"]["seven-seen"]["clears"] == 1
