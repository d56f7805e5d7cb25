"""The YAML form of rules (condition, debounce/clear holds, actions), validated at load; semantics in rules.py."""
from __future__ import annotations

import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

TEMPLATE_FIELDS = ("rule", "source", "count", "label", "score", "value", "field")
# Same types as at run time, so a template that formats here cannot fail later.
_SAMPLE = {"rule": "r", "source": "s", "count": 1, "label": "x", "score": 0.5, "value": 1.0, "field": "f"}
_RESULT_FIELDS = ("label", "class_id", "top_k", "min_confidence", "clear_confidence", "min_count", "max_count",
                  "zone_units", "zone_anchor", "zone")


class Hold(BaseModel):
    """How long a change must hold before it takes effect: consecutive evaluations and, optionally, seconds."""

    model_config = ConfigDict(extra="forbid")

    frames: int = Field(1, ge=1, description="Consecutive evaluations the new condition must hold (1 = at once).")
    seconds: float = Field(0.0, ge=0, description="And the first to the last of them must span at least this long.")


class Condition(BaseModel):
    """What a rule tests: either a result condition (label, confidence, count, zone) or a sensor one (`field`)."""

    model_config = ConfigDict(extra="forbid")

    # Declaration order matters: each validator reads the fields declared before it from info.data, so that a
    # cross-field error is reported at the offending field (and its YAML line).
    field: str | None = Field(None, min_length=1, description="Sensor condition: the name in item.values to test.")
    above: float | None = Field(None, description="Sensor: true while the value is above this.")
    below: float | None = Field(None, description="Sensor: true while the value is below this.")
    clear_below: float | None = Field(
        None, description="Sensor hysteresis for `above`: once active, clears only when the value drops below this.")
    clear_above: float | None = Field(
        None, description="Sensor hysteresis for `below`: once active, clears only when the value rises above this.")
    label: str | list[str] | None = Field(None, description="Match these labels (default: any class).")
    class_id: int | list[int] | None = Field(None, description="Or match these class ids (not both with label).")
    top_k: int = Field(1, ge=1, description="Classification: how many of the best classes may match (1 = top-1).")
    min_confidence: float = Field(0.0, ge=0, le=1, description="A class or detection matches from this score up.")
    clear_confidence: float | None = Field(
        None, ge=0, le=1, description="Hysteresis: once active, matches still count from this (lower) score up.")
    min_count: int = Field(1, ge=0, description="True when at least this many match (0 with max_count: absence).")
    max_count: int | None = Field(None, ge=0, description="And at most this many match.")
    zone_units: Literal["normalized", "pixels"] = Field(
        "normalized", description="Zone coordinates: fractions of the frame size (0..1) or frame pixels.")
    zone_anchor: Literal["center", "bottom_center"] = Field(
        "center", description="The point of a detection box that must lie inside the zone (bottom_center = feet).")
    zone: list[tuple[float, float]] | None = Field(
        None, description="Detections only: a polygon [[x, y], ...] of at least 3 points the anchor must lie in.")
    dwell_s: float = Field(0.0, ge=0, description="The condition must hold continuously this long to count as true.")

    @field_validator("label", mode="before")
    @classmethod
    def _numeric_label(cls, v: Any) -> Any:
        # `label: 7` is how people write the digit seven, and YAML makes it an int
        def as_str(x: Any) -> Any:
            return str(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x
        return [as_str(x) for x in v] if isinstance(v, list) else as_str(v)

    @field_validator("above", "below", "clear_below", "clear_above")
    @classmethod
    def _sensor_field(cls, v: float | None, info: ValidationInfo) -> float | None:
        d, name = info.data, info.field_name
        if v is None:
            return v
        if d.get("field") is None:
            raise ValueError(f"{name} tests a sensor value: set field (the name in item.values) too")
        if name == "below" and d.get("above") is not None:
            raise ValueError("set above or below, not both (write two rules for an out-of-range band)")
        if name == "clear_below" and (d.get("above") is None or v > d["above"]):
            raise ValueError(f"clear_below ({v}) is the clear band under above: set above, at or over it")
        if name == "clear_above" and (d.get("below") is None or v < d["below"]):
            raise ValueError(f"clear_above ({v}) is the clear band over below: set below, at or under it")
        return v

    @field_validator(*_RESULT_FIELDS)
    @classmethod
    def _result_field(cls, v: Any, info: ValidationInfo) -> Any:
        d, name = info.data, info.field_name
        if v is None:
            return v
        if d.get("field") is not None and v != cls.model_fields[name].default:  # a default is as good as absent
            raise ValueError(f"a sensor condition (field: {d['field']}) cannot have {name}: it applies to results")
        if name in ("label", "class_id") and isinstance(v, list) and not v:
            raise ValueError(f"{name} is an empty list: omit it to match any class")
        if name == "class_id" and d.get("label") is not None:
            raise ValueError("set label or class_id, not both")
        if name == "clear_confidence" and "min_confidence" in d and v > d["min_confidence"]:
            raise ValueError(f"clear_confidence ({v}) must be <= min_confidence ({d['min_confidence']})")
        if name == "max_count" and "min_count" in d and v < d["min_count"]:
            raise ValueError(f"max_count ({v}) must be >= min_count ({d['min_count']}); set min_count: 0 to "
                             "test for absence")
        if name == "zone":
            _check_zone(v, d.get("zone_units", "normalized"))
        return v

    @model_validator(mode="after")
    def _sensor_needs_threshold(self) -> Condition:
        if self.field is not None and self.above is None and self.below is None:
            raise ValueError(f"field: a sensor condition (field: {self.field}) needs above or below")
        return self


def _check_zone(zone: list[tuple[float, float]], units: str) -> None:
    if len(zone) < 3:
        raise ValueError(f"zone needs at least 3 points, got {len(zone)}")
    if units == "normalized":
        for i, (x, y) in enumerate(zone):
            if not (0 <= x <= 1 and 0 <= y <= 1):
                raise ValueError(f"zone point {i} ({x:g}, {y:g}) is outside 0..1 while zone_units is normalized: "
                                 "set zone_units: pixels for pixel coordinates")
    area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(zone, zone[1:] + zone[:1]))
    if abs(area) < 1e-12:
        raise ValueError("zone has zero area: its points lie on one line")


class Action(BaseModel):
    """In YAML: `alert`, `event`, `{mqtt: topic}` or `{webhook: url}`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["alert", "event", "mqtt", "webhook"] = Field(description="What the action does.")
    target: str | None = Field(None, description="The MQTT topic or webhook URL.")

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, v: Any) -> Any:
        if isinstance(v, dict) and set(v) <= {"kind", "target"} and "kind" in v:  # a model_dump() round trip
            v = v["kind"] if v.get("target") is None else {v["kind"]: v["target"]}
        if v in ("alert", "event"):
            return {"kind": v}
        if isinstance(v, dict) and len(v) == 1 and next(iter(v)) in ("mqtt", "webhook"):
            kind, target = next(iter(v.items()))
            if not isinstance(target, str) or not target:
                raise ValueError(f"{kind} needs a {'topic' if kind == 'mqtt' else 'URL'} string, got {target!r}")
            if kind == "mqtt" and ("+" in target or "#" in target):
                raise ValueError(f"mqtt topic {target!r} has a wildcard (+ or #): one cannot publish to it")
            if kind == "webhook" and not target.startswith(("http://", "https://")):
                raise ValueError(f"webhook URL must start with http:// or https://, got {target!r}")
            return {"kind": kind, "target": target}
        if isinstance(v, Action):
            return v
        raise ValueError(f"an action is alert, event, {{mqtt: topic}} or {{webhook: url}}; got {v!r}")


class RuleConfig(BaseModel):
    """One rule: when its condition holds (after dwell and debounce) it activates and runs its actions."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Unique name; events carry it as `rule`.")
    sources: list[str] | None = Field(None, description="Only these sources (default: every source).")
    when: Condition = Field(description="The condition: a result condition or a sensor one (`field`).")
    debounce: Hold = Field(default_factory=Hold, description="How long the condition must hold to activate.")
    clear: Hold = Field(default_factory=Hold, description="How long it must fail (hysteresis) to clear.")
    cooldown_s: float = Field(0.0, ge=0, description="No activation events within this of the last announced one.")
    severity: Literal["info", "warning", "error", "critical"] = Field("warning", description="Copied to its events.")
    message: str | None = Field(None, description="str.format template; fields: " + ", ".join(TEMPLATE_FIELDS))
    actions: list[Action] = Field(default_factory=lambda: [Action(kind="alert")],
                                  description="alert, event, {mqtt: topic}, {webhook: url} (default: [alert]).")

    @field_validator("sources", "message", "actions")
    @classmethod
    def _check(cls, v: Any, info: ValidationInfo) -> Any:
        if info.field_name == "sources" and v is not None and not v:
            raise ValueError("sources is an empty list: omit it to match every source")
        if info.field_name == "message" and v is not None:
            _check_template(v)
        if info.field_name == "actions" and not any(a.kind in ("alert", "event") for a in v):
            raise ValueError("actions needs alert or event: mqtt and webhook are extra destinations of those")
        return v


def _check_template(t: str) -> None:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(t) if name is not None]
    except ValueError as e:
        raise ValueError(f"message is not a valid template ({e})") from e
    for name in names:
        if name not in TEMPLATE_FIELDS:
            raise ValueError(f"message has an unknown field {{{name}}}; known: "
                             + " ".join(f"{{{f}}}" for f in TEMPLATE_FIELDS))
    try:
        t.format(**_SAMPLE)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise ValueError(f"message cannot be formatted ({e})") from e


class RulesConfig(BaseModel):
    """A file of rules: `rules: [...]`."""

    model_config = ConfigDict(extra="forbid")

    rules: list[RuleConfig] = Field(default_factory=list, description="The rules, evaluated in this order.")

    @field_validator("rules")
    @classmethod
    def _unique(cls, v: list[RuleConfig]) -> list[RuleConfig]:
        _check_unique(v, ValueError)
        return v


def _check_unique(rules: list[RuleConfig], exc: type[Exception]) -> None:
    seen: set[str] = set()
    for r in rules:
        if r.name in seen:
            raise exc(f"two rules are named {r.name!r}: names must be unique")
        seen.add(r.name)
