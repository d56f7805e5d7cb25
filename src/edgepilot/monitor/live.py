"""The live terminal view: the latest sample grouped by subsystem, and every source's status with its reason."""
from __future__ import annotations

from rich.cells import cell_len
from rich.console import Group
from rich.table import Table
from rich.text import Text

from edgepilot.monitor.readings import Reading, Sample


def human(value: float, unit: str) -> str:
    if unit in ("B", "B/s"):
        v, suffix = float(value), unit[1:]
        for prefix in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(v) < 1024 or prefix == "TiB":
                return f"{v:.0f} {prefix}{suffix}" if prefix == "B" else f"{v:.1f} {prefix}{suffix}"
            v /= 1024
    if unit == "bool":
        return "yes" if value else "no"
    if unit in ("count", "load", "bitmask"):
        return f"{value:g}" if unit != "load" else f"{value:.2f}"
    return f"{value:.1f} {unit}"


def _take(readings: list[Reading], metric: str) -> list[Reading]:
    got = [r for r in readings if r.metric == metric]
    for r in got:
        readings.remove(r)
    return got


def _rows(sample: Sample) -> list[tuple[str, str, str, str]]:
    left = list(sample.readings)
    rows: list[tuple[str, str, str, str]] = []

    def add(section: str, name: str, rs: list[Reading], text: str) -> None:
        if rs:
            rows.append((section, name, text, rs[0].source))

    total = [r for r in _take(left, "cpu_percent") if not r.labels]
    cores = [r for r in sample.readings if r.metric == "cpu_percent" and r.labels]
    add("CPU", "busy", total, human(total[0].value, "%") if total else "")
    add("CPU", "per core", cores, "  ".join(f"{r.value:.0f}%" for r in cores))
    freq = _take(left, "cpu_frequency_mhz")
    add("CPU", "frequency", freq, "  ".join(f"{r.value:.0f}" for r in freq) + " MHz")
    load = _take(left, "load_average")
    add("CPU", "load 1/5/15 min", load, " / ".join(f"{r.value:.2f}" for r in load))
    mem = {r.metric: r for r in left if r.metric.startswith(("memory_", "swap_"))}
    for r in mem.values():
        left.remove(r)
    if "memory_percent" in mem:
        add("Memory", "used", [mem["memory_percent"]], f"{human(mem['memory_used_bytes'].value, 'B')} of "
            f"{human(mem['memory_total_bytes'].value, 'B')} ({mem['memory_percent'].value:.1f} %)")
    if "swap_total_bytes" in mem:
        add("Memory", "swap", [mem["swap_total_bytes"]], "none configured" if "swap_used_bytes" not in mem else
            f"{human(mem['swap_used_bytes'].value, 'B')} of {human(mem['swap_total_bytes'].value, 'B')}")
    used, tot, pct = (_take(left, m) for m in ("disk_used_bytes", "disk_total_bytes", "disk_percent"))
    for u, t, p in zip(used, tot, pct):
        add("Disk", u.label_dict.get("mount", ""), [u], f"{human(u.value, 'B')} of {human(t.value, 'B')} "
            f"({p.value:.1f} %)")
    io = {m: _take(left, m) for m in ("disk_read_bytes_per_s", "disk_write_bytes_per_s", "disk_read_ops_per_s",
                                      "disk_write_ops_per_s")}
    if io["disk_read_bytes_per_s"]:
        add("Disk", "I/O", io["disk_read_bytes_per_s"], f"read {human(io['disk_read_bytes_per_s'][0].value, 'B/s')}, "
            f"write {human(io['disk_write_bytes_per_s'][0].value, 'B/s')}")
    rx, tx = _take(left, "net_recv_bytes_per_s"), _take(left, "net_sent_bytes_per_s")
    for a, b in zip(rx, tx):
        add("Network", a.label_dict.get("nic", ""), [a], f"rx {human(a.value, 'B/s')}, tx {human(b.value, 'B/s')}")
    for m in ("net_recv_packets_per_s", "net_sent_packets_per_s", "net_errors_total", "net_drops_total"):
        _take(left, m)  # in the store and /metrics; too much detail for one screen
    proc = {r.metric: r for r in left if r.metric.startswith("process_")}
    for r in proc.values():
        left.remove(r)
    if "process_rss_bytes" in proc:
        pid = proc["process_rss_bytes"].label_dict.get("pid", "")
        parts = [f"RSS {human(proc['process_rss_bytes'].value, 'B')}"]
        if "process_open_fds" in proc:
            parts.append(f"{proc['process_open_fds'].value:.0f} fds")
        if "process_threads" in proc:
            parts.append(f"{proc['process_threads'].value:.0f} threads")
        if "process_cpu_percent" in proc:
            parts.append(f"CPU {proc['process_cpu_percent'].value:.1f} %")
        add("Process", f"pid {pid}", [proc["process_rss_bytes"]], ", ".join(parts))
    served = _served_rows(left)  # taken out first: the generic Inference rows below would take them
    sections = (("GPU", ("gpu_",)), ("Temperature", ("temperature_",)),
                ("Power", ("power_", "energy_", "voltage_", "current_", "battery_")), ("Inference", ("inference_",)))
    for section, prefixes in sections:
        for r in [r for r in left if r.metric.startswith(prefixes)]:
            left.remove(r)
            label = ",".join(v for _, v in r.labels)
            add(section, f"{r.metric} {label}".strip(), [r], human(r.value, r.unit))
    rows += served
    for r in left:
        add("Other", r.key, [r], human(r.value, r.unit))
    return rows


def _ms(r: Reading | None, approx: bool = False) -> str:
    return "" if r is None else f"{'≈' if approx else ''}{r.value:.1f} ms"


def _served_rows(left: list[Reading]) -> list[tuple[str, str, str, str]]:
    """A remote server's per-model readings (monitor --url) as a few lines per model and version; takes them."""
    mine = [r for r in left if r.metric.startswith("inference_") and ("model" in r.label_dict
                                                                      or r.metric.startswith("inference_pipeline_"))]
    for r in mine:
        left.remove(r)
    by: dict[tuple, dict[str, Reading]] = {}
    for r in mine:
        d = r.label_dict
        group = (d["model"], d.get("version", "")) if "model" in d else ("", "")
        by.setdefault(group, {})[r.metric + ("/" + d["what"] if "what" in d else "")] = r
    rows = []
    for (model, version), m in sorted(by.items()):
        name = f"{model} v{version}" if version else model
        if not model:  # the pipeline's statistics (edgepilot run with server:)
            parts = [f"{m[k].value:.1f} fps" for k in ("inference_pipeline_fps",) if k in m]
            parts += [f"queue {m[k].value:g}" for k in ("inference_pipeline_queue_depth",) if k in m]
            for k in sorted(k for k in m if k.startswith("inference_pipeline_items_total/")):
                what = k.split("/", 1)[1]
                rate = m.get("inference_pipeline_items_per_s/" + what)
                parts.append(f"{what} {m[k].value:g}" + (f" ({rate.value:.1f}/s)" if rate else ""))
            first = next(iter(m.values()))
            rows.append(("Inference", "pipeline", ", ".join(parts), first.source))
            continue
        if "inference_requests_total" in m:
            rate = m.get("inference_requests_per_s")
            rows.append(("Inference", f"{name} requests", f"{m['inference_requests_total'].value:g} total"
                         + (f", {rate.value:.1f}/s" if rate else "")
                         + f", {m['inference_request_errors_total'].value:g} errors",
                         m["inference_requests_total"].source))
        for tail, label in (("", "latency"), ("_since_start", "latency since start")):
            mean = m.get("inference_latency_ms" + tail)
            if mean is None:
                continue
            p50, p95 = m.get("inference_latency_p50_ms" + tail), m.get("inference_latency_p95_ms" + tail)
            text = f"mean {_ms(mean)}" + "".join(f", {q} {_ms(r, approx=True)}" for q, r in (("p50", p50),
                                                                                            ("p95", p95)) if r)
            rows.append(("Inference", f"{name} {label}", text, (p95 or mean).source))
        tail = "" if "inference_compute_ms" in m else "_since_start"
        q, c, b = (m.get(k + tail) for k in ("inference_queue_ms", "inference_compute_ms", "inference_batch_size"))
        if c is not None:
            rows.append(("Inference", f"{name} queue / compute" + (" since start" if tail else ""),
                         f"{_ms(q) or '-'} / {_ms(c)}" + (f", batch {b.value:.1f}" if b else ""), c.source))
    return rows


def render(sample: Sample, *, title: str = "edgepilot monitor") -> Group:
    table = Table(title=title, title_justify="left", expand=False)
    for col, kw in (("", {"style": "bold"}), ("reading", {}), ("value", {"justify": "right"}),
                    ("source", {"style": "dim"})):
        table.add_column(col, **kw)
    last = None
    for section, name, value, source in _rows(sample):
        table.add_row(section if section != last else "", name, value, source)
        last = section
    sources = Table(title="sources", title_justify="left")
    for col in ("source", "status", "what it reads, or why not"):
        sources.add_column(col)
    for s in sample.sources:
        sources.add_row(s.name, "[green]available[/green]" if s.available else "[red]unavailable[/red]", s.detail)
    return Group(table, sources)


def _pad(text: str, width: int, right: bool = False) -> str:
    gap = max(0, width - cell_len(text))
    return " " * gap + text if right else text + " " * gap


def _clip(text: str, width: int) -> str:
    return text if cell_len(text) <= width else text[:max(0, width - 1)] + "…"


def render_frame(sample: Sample, *, title: str = "edgepilot monitor", width: int = 120) -> Text:
    """The same content as `render` as aligned plain text: a rich Table costs ~25 ms of CPU per frame on a small
    board, a frame of Text under 1 ms, and the live view redraws every interval (the budget is < 1 % of a core)."""
    rows = _rows(sample)
    w = [max([cell_len(r[i]) for r in rows] + [len(h)]) for i, h in enumerate(("", "reading", "value"))]
    out = Text()
    out.append(title + "\n", style="bold")
    out.append(f"{_pad('', w[0])}  {_pad('reading', w[1])}  {_pad('value', w[2], True)}  source\n", style="bold")
    last = None
    for section, name, value, source in rows:
        out.append(_pad(section if section != last else "", w[0]) + "  ", style="bold")
        out.append(f"{_pad(name, w[1])}  {_pad(value, w[2], True)}  ")
        out.append(_clip(source, max(10, width - sum(w) - 6)) + "\n", style="dim")
        last = section
    out.append("\nsources\n", style="bold")
    nw = max(len(s.name) for s in sample.sources) if sample.sources else 0
    for s in sample.sources:
        out.append(f"{s.name:<{nw}}  ")
        out.append("available  " if s.available else "unavailable", style="green" if s.available else "red")
        out.append("  " + _clip(s.detail, max(20, width - nw - 15)) + "\n")
    return out
