"""The rule engine: YAML rules over results and sensor values, with dwell, debounce, hysteresis and cooldown.

A rule runs on every item of the sources it names (all sources when `sources` is omitted); its state is kept per
(rule, source). `item.ts` is the clock, so a replayed file behaves like the live camera it was recorded from.

Per item, a rule that applies to it is evaluated once:

1. Condition. A result rule (no `when.field`) matches classes or detections by label/class id and confidence (a
   classification counts only its `top_k` best classes); detections may also have to lie in `zone` (their box
   centre, or bottom centre, inside the polygon). The condition is `min_count <= count <= max_count`. A sensor
   rule (`when.field`) tests `item.values[field]` against `above` or `below`.
2. Dwell. The condition must have held on every evaluation for `dwell_s` seconds (the first true evaluation
   starts the clock) before it counts as true at all.
3. Debounce. `debounce.frames` consecutive dwelled-true evaluations, spanning at least `debounce.seconds`, make
   the rule active. On activation the rule emits `Event(kind="alert", state="raised")` for an `alert` action and
   `Event(kind="event")` for an `event` action; `{mqtt: topic}` and `{webhook: url}` actions are extra
   destinations of those events (`mqtt_topics`, `webhooks`). While active nothing repeats.
4. Clear hysteresis. While active the rule is evaluated with the looser clear thresholds (`clear_confidence`,
   `clear_below`/`clear_above`); `clear.frames` consecutive false evaluations spanning `clear.seconds` clear it,
   and an `alert` action emits `state="cleared"` (with `raised_event_id` and `active_s` in its data). After
   clearing, a new activation needs a fresh dwell and debounce.
5. Cooldown. An activation within `cooldown_s` of the previous *announced* activation is tracked (state() shows
   it) but emits nothing, and neither does its clearing; suppressed activations do not extend the cooldown.

Items that do not apply to a rule leave its state untouched: items with `error` set; for result rules items
without a `result`; for sensor rules items whose `values` lack the field or hold a non-numeric/non-finite value.
A rule that cannot be evaluated on an item that does apply (a normalized zone when neither `item.frame` nor
`item.transform` gives the frame size; a zone over classification results) logs the error once per (rule, source)
and counts as false. A `raw` result has nothing to match: its count is 0.

Events carry the `seq` and `ts` of the item that changed the state and, in `data`, what triggered it: count,
labels, scores, class_ids and (detections) frame-pixel boxes, or field, value and threshold; plus `since`, when
the condition began. If `item.ts` jumps back (a looping file), the state's time anchors move back with it.

The config models (RuleConfig, Condition, Hold, Action, RulesConfig) live in rules_config.py and are
re-exported here.
"""
from __future__ import annotations

import hashlib
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any

from edgepilot.errors import ConfigError
from edgepilot.runtime.item import Event, Item
from edgepilot.runtime.rules_config import (
    TEMPLATE_FIELDS,
    Action,
    Condition,
    Hold,
    RuleConfig,
    RulesConfig,
    _check_unique,
)

__all__ = ["TEMPLATE_FIELDS", "Action", "Condition", "Hold", "RuleConfig", "RuleEngine", "RulesConfig"]

log = logging.getLogger(__name__)

_DEFAULT_MESSAGE = {"result": "{rule} on {source}: {count} {label} (score {score:.2f})",
                    "sensor": "{rule} on {source}: {field} = {value:g}"}


class _EvalError(Exception):
    """The rule applies to the item but cannot be evaluated on it: logged once, counted, the condition is false."""


@dataclass
class _State:
    last_ts: float | None = None
    run_since: float | None = None  # the raw condition has held since (dwell)
    streak_n: int = 0  # consecutive evaluations towards the next change: dwelled-true ones, or false once active
    streak_since: float | None = None
    active_since: float | None = None  # None = not active
    announced: bool = False  # this activation emitted events (not suppressed by the cooldown)
    last_announced: float | None = None
    raised_id: str | None = None
    message: str = ""
    logged: set[str] = field(default_factory=set)

    def rebase(self, ts: float) -> None:
        """A clock that jumps back (a looping file, a corrected RTC) moves every anchor with it, keeping spans."""
        if self.last_ts is not None and ts < self.last_ts:
            d = ts - self.last_ts
            for name in ("run_since", "streak_since", "active_since", "last_announced"):
                if getattr(self, name) is not None:
                    setattr(self, name, getattr(self, name) + d)
        self.last_ts = ts

    def streak(self, ts: float) -> None:
        self.streak_n += 1
        self.streak_since = ts if self.streak_since is None else self.streak_since


@dataclass
class _Rule:
    cfg: RuleConfig
    sensor: bool
    template: str
    kinds: tuple[str, ...]
    mqtt_topics: tuple[str, ...]
    webhooks: tuple[str, ...]
    labels: frozenset[str] | None
    class_ids: frozenset[int] | None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("evaluations", "skipped", "activations", "suppressed", "clears", "events", "errors"), 0))

    @classmethod
    def build(cls, cfg: RuleConfig) -> _Rule:
        w, kinds = cfg.when, [a.kind for a in cfg.actions]
        sensor = w.field is not None
        return cls(cfg, sensor, cfg.message or _DEFAULT_MESSAGE["sensor" if sensor else "result"],
                   tuple(k for k in ("alert", "event") if k in kinds),
                   tuple(dict.fromkeys(a.target for a in cfg.actions if a.kind == "mqtt")),
                   tuple(dict.fromkeys(a.target for a in cfg.actions if a.kind == "webhook")),
                   _as_set(w.label), _as_set(w.class_id))

    def applies(self, item: Item) -> bool:
        if item.error is not None:
            return False
        if not self.sensor:
            return item.result is not None
        v = (item.values or {}).get(self.cfg.when.field)
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def evaluate(self, item: Item, active: bool) -> tuple[bool, dict[str, Any], dict[str, Any]]:
        """(condition, event data, template fields); the clear thresholds apply while active."""
        return self._sensor(item, active) if self.sensor else self._result(item, active)

    def _sensor(self, item: Item, active: bool) -> tuple[bool, dict[str, Any], dict[str, Any]]:
        w = self.cfg.when
        v = float(item.values[w.field])
        if w.above is not None:
            ok = (v >= w.clear_below if active and w.clear_below is not None else v > w.above)
            threshold = w.clear_below if active and w.clear_below is not None else w.above
        else:
            ok = (v <= w.clear_above if active and w.clear_above is not None else v < w.below)
            threshold = w.clear_above if active and w.clear_above is not None else w.below
        data = {"field": w.field, "value": v, "threshold": threshold, "direction": "above" if w.above is not None
                else "below"}
        return ok, data, {"count": int(ok), "label": "", "score": math.nan, "value": v, "field": w.field}

    def _result(self, item: Item, active: bool) -> tuple[bool, dict[str, Any], dict[str, Any]]:
        w, r = self.cfg.when, item.result
        thr = w.clear_confidence if active and w.clear_confidence is not None else w.min_confidence
        found: list[tuple[int, str, float, tuple[float, ...] | None]] = []
        if r.kind == "classification":
            if w.zone is not None:
                raise _EvalError("a zone needs detections, but this source gives classification results")
            top = sorted(r.classes, key=lambda c: -c[2])[:w.top_k]
            found = [(c, lab, s, None) for c, lab, s in top if self._class_ok(c, lab) and s >= thr]
        elif r.kind == "detection":
            poly = self._zone_px(item) if w.zone is not None else None
            for d in r.detections:
                if self._class_ok(d.class_id, d.label) and d.score >= thr and (poly is None or _inside(
                        _anchor(d.box, w.zone_anchor), poly)):
                    found.append((d.class_id, d.label, d.score, d.box))
        found.sort(key=lambda m: -m[2])
        n = len(found)
        ok = w.min_count <= n and (w.max_count is None or n <= w.max_count)
        data: dict[str, Any] = {"count": n, "labels": [m[1] for m in found], "scores": [round(float(m[2]), 6)
                                for m in found], "class_ids": [m[0] for m in found]}
        if r.kind == "detection":
            data["boxes"] = [[round(float(v), 2) for v in m[3]] for m in found]
        label = found[0][1] if found else ", ".join(sorted(self.labels or ()))
        fmt = {"count": n, "label": label, "score": float(found[0][2]) if found else 0.0, "value": math.nan,
               "field": ""}
        return ok, data, fmt

    def _class_ok(self, class_id: int, label: str) -> bool:
        return ((self.labels is None or label in self.labels)
                and (self.class_ids is None or class_id in self.class_ids))

    def _zone_px(self, item: Item) -> list[tuple[float, float]]:
        w = self.cfg.when
        if w.zone_units == "pixels":
            return list(w.zone)
        if item.frame is not None:
            fh, fw = item.frame.shape[:2]
        elif item.transform is not None:
            fw, fh = item.transform.frame_w, item.transform.frame_h
        else:
            raise _EvalError("a normalized zone needs the frame size, but the item has neither frame nor transform "
                             "(set zone_units: pixels, or keep frames on the items)")
        return [(x * fw, y * fh) for x, y in w.zone]


def _as_set(v: Any) -> frozenset | None:
    return None if v is None else frozenset(v if isinstance(v, list) else [v])


def _anchor(box: tuple[float, ...], where: str) -> tuple[float, float]:
    x1, y1, x2, y2 = box
    return (x1 + x2) / 2, (y2 if where == "bottom_center" else (y1 + y2) / 2)


def _inside(p: tuple[float, float], poly: list[tuple[float, float]]) -> bool:
    """Even-odd ray casting; a point exactly on an edge may fall either way."""
    x, y = p
    inside = False
    for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1]):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


class RuleEngine:
    """Evaluates rules on items and appends their Events to `item.events`; state is kept per (rule, source)."""

    def __init__(self, rules: list[RuleConfig], namespace: str = "pipeline") -> None:
        """`namespace` (the pipeline's name) goes into every event id."""
        _check_unique(rules, ConfigError)
        self._namespace = namespace
        self._rules = [_Rule.build(r) for r in rules]
        self._states: dict[tuple[str, str], _State] = {}
        self._lock = threading.Lock()
        self._items = 0

    def process(self, item: Item) -> Item:
        with self._lock:
            self._items += 1
            for rule in self._rules:
                if rule.cfg.sources is None or item.source in rule.cfg.sources:
                    self._step(rule, item)
        return item

    def _step(self, rule: _Rule, item: Item) -> None:
        if not rule.applies(item):
            rule.counts["skipped"] += 1
            return
        cfg, ts = rule.cfg, item.ts
        st = self._states.setdefault((cfg.name, item.source), _State())
        st.rebase(ts)
        active = st.active_since is not None
        rule.counts["evaluations"] += 1
        try:
            ok, data, fmt = rule.evaluate(item, active)
        except _EvalError as e:
            rule.counts["errors"] += 1
            if str(e) not in st.logged:
                st.logged.add(str(e))
                log.error("rule %s on %s: %s", cfg.name, item.source, e)
            ok, data, fmt = False, {"error": str(e)}, {}
        if not active:
            st.run_since = (ts if st.run_since is None else st.run_since) if ok else None
            if ok and ts - st.run_since >= cfg.when.dwell_s:
                st.streak(ts)
            else:
                st.streak_n, st.streak_since = 0, None
            if st.streak_n >= cfg.debounce.frames and ts - st.streak_since >= cfg.debounce.seconds:
                self._activate(rule, st, item, data, fmt)
        elif ok:
            st.streak_n, st.streak_since = 0, None
        else:
            st.streak(ts)
            if st.streak_n >= cfg.clear.frames and ts - st.streak_since >= cfg.clear.seconds:
                self._deactivate(rule, st, item, data)

    def _activate(self, rule: _Rule, st: _State, item: Item, data: dict[str, Any], fmt: dict[str, Any]) -> None:
        cfg, ts = rule.cfg, item.ts
        rule.counts["activations"] += 1
        st.active_since, st.streak_n, st.streak_since, st.raised_id = ts, 0, None, None
        st.message = self._format(rule, st, {"rule": cfg.name, "source": item.source, **fmt})
        st.announced = st.last_announced is None or ts - st.last_announced >= cfg.cooldown_s
        if not st.announced:
            rule.counts["suppressed"] += 1
            log.debug("rule %s on %s: activation within the cooldown, not announced", cfg.name, item.source)
            return
        st.last_announced = ts
        for kind in rule.kinds:
            ev = self._event(rule, item, kind, "raised" if kind == "alert" else None, st.message,
                             {**data, "since": st.run_since})
            st.raised_id = ev.event_id if kind == "alert" else st.raised_id

    def _deactivate(self, rule: _Rule, st: _State, item: Item, data: dict[str, Any]) -> None:
        rule.counts["clears"] += 1
        if st.announced and "alert" in rule.kinds:
            data = {**data, "raised_event_id": st.raised_id, "active_s": item.ts - st.active_since}
            self._event(rule, item, "alert", "cleared", f"cleared: {st.message}", data)
        st.active_since, st.announced, st.raised_id, st.run_since, st.streak_n, st.streak_since = (None, False, None,
                                                                                                  None, 0, None)

    def _event(self, rule: _Rule, item: Item, kind: str, state: str | None, message: str,
               data: dict[str, Any]) -> Event:
        cfg = rule.cfg
        ev = Event(rule=cfg.name, source=item.source, seq=item.seq, kind=kind, state=state, severity=cfg.severity,
                   message=message, data=data, mqtt_topics=rule.mqtt_topics, webhooks=rule.webhooks, ts=item.ts,
                   event_id=event_id(self._namespace, item, cfg.name, kind, state))
        item.events.append(ev)
        rule.counts["events"] += 1
        return ev

    @staticmethod
    def _format(rule: _Rule, st: _State, fields: dict[str, Any]) -> str:
        try:
            return rule.template.format(**fields)
        except (ValueError, TypeError, KeyError, IndexError) as e:  # validated at load; kept so a run never dies
            if "template" not in st.logged:
                st.logged.add("template")
                log.error("rule %s: message template failed (%s); using it unformatted", rule.cfg.name, e)
            return rule.template

    def state(self) -> list[dict[str, Any]]:
        """The active (rule, source) pairs, oldest first: since when, and whether cooldown kept them quiet."""
        by_name = {r.cfg.name: r for r in self._rules}
        with self._lock:
            out = [{"rule": name, "source": src, "since": st.active_since, "severity": by_name[name].cfg.severity,
                    "message": st.message, "suppressed": not st.announced, "raised_event_id": st.raised_id}
                   for (name, src), st in self._states.items() if st.active_since is not None]
        return sorted(out, key=lambda d: (d["since"], d["rule"], d["source"]))

    def stats(self) -> dict[str, Any]:
        """Items seen, and per rule: evaluations, skipped items, activations, suppressed ones, clears, events,
        evaluation errors, and on how many sources it is active now."""
        with self._lock:
            active = [name for (name, _), st in self._states.items() if st.active_since is not None]
            return {"items": self._items,
                    "rules": {r.cfg.name: {**r.counts, "active": active.count(r.cfg.name)} for r in self._rules}}


def event_id(namespace: str, item: Item, rule: str, kind: str, state: str | None) -> str:
    """The same event gets the same id after a restart, so subscribers can drop the duplicates.

    A file's frames have a position in the file (path, frame index) that a rerun reproduces; live frames
    have only their capture time, which a restart never repeats.
    """
    meta = item.meta
    position = (f"{meta['path']}#{meta.get('frame_index', '')}" if "path" in meta else f"t{item.ts:.6f}")
    key = "\x1f".join((namespace, item.source, position, rule, kind, state or ""))
    return hashlib.sha256(key.encode()).hexdigest()[:32]
