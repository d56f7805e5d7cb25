"""`edgepilot fleet ...`: the update repository, the inventory, rollouts and light-mode agents."""
from __future__ import annotations

import json
import re
import signal
import threading
from pathlib import Path

import typer

fleet = typer.Typer(no_args_is_help=True, help="Fleets over MQTT: inventory, TUF update repository, canary rollouts.")
broker_opt = typer.Option("127.0.0.1:1883", "--broker", help="MQTT broker HOST:PORT.")
db_opt = typer.Option(Path("fleet.db"), "--db", help="The controller's rollouts database (SQLite).")
repo_opt = typer.Option(Path("fleet-repo"), "--repo", help="The update repository folder (`fleet repo-init`).")


def _duration(text: str) -> float:
    from edgepilot.errors import ConfigError

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", text)
    if not m:
        raise ConfigError(f"{text!r} is not a duration", hint="e.g. 60s, 2m, 500ms")
    return float(m.group(1)) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def _selector(items: list[str]) -> dict[str, str]:
    from edgepilot.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--selector {item!r} is not KEY=VALUE", hint="e.g. --selector target=rpi5")
        out[key.strip()] = value.strip()
    return out


def _existing(db: Path):
    from edgepilot.errors import ConfigError
    from edgepilot.fleet.rollout import Store

    if not db.is_file():
        raise ConfigError(f"--db {db}: no rollouts database there", hint="give the --db that `fleet rollout` used")
    return Store(db)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _print_rollout(summary: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    typer.echo(f"rollout {summary['id']}: {summary['name']} v{summary['version']} for {summary['class']} — "
               f"{summary['state']}" + (f" ({summary['reason']})" if summary["reason"] else ""))
    for st in summary["stages"]:
        d = st["decision"] or {}
        nums = ""
        if d:
            c, k = d.get("canary", {}), d.get("control", {})
            nums = (f" canary p95 {c.get('p95_ms')} ms conf {c.get('confidence')} err {c.get('error_rate')}"
                    f" | {d.get('basis')} p95 {k.get('p95_ms')} ms conf {k.get('confidence')}"
                    f" err {k.get('error_rate')}")
        typer.echo(f"  stage {st['idx']}: {len(st['devices'])} device(s), {st['state']}{nums}"
                   + (f" — {'; '.join(d['reasons'])}" if d.get("reasons") else ""))


def register(app: typer.Typer) -> None:
    app.add_typer(fleet, name="fleet")


@fleet.command("repo-init")
def repo_init(repo: Path = repo_opt) -> None:
    """Create the update repository: TUF keys and metadata (give agents metadata/1.root.json)."""
    from edgepilot.fleet.repository import Repository

    r = Repository.init(repo)
    typer.echo(f"{repo}: TUF repository created; ship {r.metadata / '1.root.json'} to the agents; keep "
               f"{r.keys} secret")


@fleet.command("repo-refresh")
def repo_refresh(repo: Path = repo_opt) -> None:
    """Re-sign the timestamp and snapshot (and targets roles near expiry); run it daily: agents refuse an
    expired timestamp."""
    from edgepilot.fleet.repository import Repository

    renewed = Repository(repo).refresh()
    typer.echo(f"{repo}: new snapshot and timestamp" + (f"; re-signed {', '.join(renewed)}" if renewed else ""))


@fleet.command("config")
def config(base: Path = typer.Argument(..., exists=True, dir_okay=False, help="The bundle the devices run."),
           pipeline: Path = typer.Option(..., exists=True, help="The new pipeline YAML (parameters, thresholds, "
                                                                "rules)."),
           key: Path = typer.Option(..., exists=True, help="The private key that signed BASE."),
           version: int = typer.Option(..., min=1, help="The new version (above BASE's)."),
           out: Path = typer.Option(..., help="Bundle to write."),
           expires_days: float = typer.Option(90.0, min=0.001, help="Days until devices refuse it.")) -> None:
    """Remote configuration: BASE's model and golden samples with a new pipeline config, as a signed bundle to
    roll out like any other."""
    from edgepilot.fleet.config import reconfigure

    m = reconfigure(base, pipeline, key, version, out, expires_days)
    typer.echo(f"{out}: {m.name} v{m.version} for {m.target} — {m.model} as in {base.name}, new pipeline.yaml")


@fleet.command("serve-repo")
def serve_repo(repo: Path = repo_opt, host: str = typer.Option("0.0.0.0", help="Address to listen on."),
               port: int = typer.Option(8700, help="Port.")) -> None:
    """Serve the repository's metadata/ and targets/ over HTTP (never keys/)."""
    from edgepilot.fleet.repository import Repository, http_server

    Repository(repo)
    server = http_server(repo, host, port)
    typer.echo(f"serving {repo} on http://{host}:{server.server_address[1]}/")
    try:
        server.serve_forever()
    finally:
        server.server_close()


@fleet.command("status")
def status(broker: str = broker_opt, as_json: bool = typer.Option(False, "--json", help="Print JSON."),
           db: Path = typer.Option(None, "--db", help="Also list the rollouts in this database."),
           settle: float = typer.Option(1.0, min=0.1, help="Seconds without a new message before printing.")) -> None:
    """The fleet as its agents last reported it: model version, slots, last update and health per device."""
    from edgepilot.fleet.inventory import COLUMNS, collect, row
    from edgepilot.fleet.protocol import broker as parse

    rows = [row(d) for _, d in sorted(collect(parse(broker), settle).items())]
    rollouts = []
    if db is not None and db.exists():
        from edgepilot.fleet.rollout import Store

        store = Store(db)
        rollouts = [{k: v for k, v in store.summary(r).items() if k != "events"} for r in store.all()]
    if as_json:
        typer.echo(json.dumps({"devices": rows, "rollouts": rollouts}, indent=2, default=str))
        return
    from rich.table import Table

    from edgepilot.cli import wide_console

    table = Table(*COLUMNS, title=f"{len(rows)} device(s), {sum(1 for r in rows if r['online'])} online")
    for r in rows:
        table.add_row(*("" if r[c] is None else str(r[c]) for c in COLUMNS))
    wide_console(160).print(table)
    for r in rollouts:
        _print_rollout(r, False)


@fleet.command("rollout")
def rollout(bundle: Path = typer.Argument(..., exists=True, dir_okay=False, help="The signed .edgebundle."),
            canary: str = typer.Option("10%", help="Share of the selected devices in the canary wave."),
            waves: str = typer.Option("10,50,100", help="Cumulative percentages after the canary."),
            observe: str = typer.Option("60s", help="Observation window per wave (e.g. 60s, 5m)."),
            selector: list[str] = typer.Option([], help="KEY=VALUE over the devices' published fields (repeatable)."),
            install_timeout: str = typer.Option("300s", help="How long a wave may take to install."),
            max_latency_ratio: float = typer.Option(1.5, min=1.0, help="Roll back when canary p95 exceeds control "
                                                                       "p95 by this factor."),
            max_confidence_shift: float = typer.Option(0.1, min=0, help="Roll back on a larger shift of the mean "
                                                                        "top-1 confidence."),
            repo: Path = repo_opt, db: Path = db_opt, broker: str = broker_opt,
            as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON.")) -> None:
    """Roll BUNDLE out in a canary wave then in waves, comparing canary and control health; exits 1 unless
    promoted. Run again after a controller restart: the unfinished rollout of the same bundle resumes."""
    from edgepilot.fleet.controller import Controller, submit
    from edgepilot.fleet.inventory import Inventory
    from edgepilot.fleet.protocol import broker as parse
    from edgepilot.fleet.repository import Repository, read_manifest
    from edgepilot.fleet.rollout import Criteria, Store, percent

    store, repository = Store(db), Repository(repo)
    inv = Inventory(parse(broker), "controller", classes=[read_manifest(bundle).target]).start()
    try:
        stop = _stop_on_signals()
        devices = inv.settled()
        rid, resumed = submit(store, repository, devices, bundle, selector=_selector(selector),
                              canary_pct=percent(canary), waves=[percent(w) for w in waves.split(",")],
                              observe_s=_duration(observe), install_timeout_s=_duration(install_timeout),
                              criteria=Criteria(max_latency_ratio=max(max_latency_ratio, 1.0001),
                                                max_confidence_shift=max_confidence_shift))
        if resumed:
            store.event(rid, "resumed by a new controller")
        typer.echo(f"rollout {rid} {'resumed' if resumed else 'started'}", err=True)
        Controller(store, inv).run([rid], stop=stop)
        summary = store.summary(rid)
    finally:
        inv.stop()
    _print_rollout(summary, as_json)
    if summary["state"] != "promoted":
        raise typer.Exit(1)


@fleet.command("controller")
def controller(db: Path = db_opt, broker: str = broker_opt) -> None:
    """Resume every unfinished rollout in the database and drive them to the end."""
    from edgepilot.fleet.controller import Controller
    from edgepilot.fleet.inventory import Inventory
    from edgepilot.fleet.protocol import broker as parse

    store = _existing(db)
    rids = store.unfinished()
    classes = sorted({store.spec(r).device_class for r in rids})
    inv = Inventory(parse(broker), "controller", classes=classes or None).start()
    try:
        inv.settled()
        Controller(store, inv).run(rids, stop=_stop_on_signals())
    finally:
        inv.stop()
    for rid in rids:
        _print_rollout(store.summary(rid), False)


def _request(action: str):
    def command(rollout_id: int = typer.Argument(..., help="The rollout id (see `fleet rollouts`)."),
                db: Path = db_opt) -> None:
        typer.echo(f"rollout {rollout_id}: {_existing(db).request(rollout_id, action)}")

    command.__doc__ = {"pause": "Hold a rollout where it is (a resumed one observes a fresh window).",
                       "resume": "Continue a paused rollout.",
                       "abort": "Stop a rollout and roll back the devices it updated."}[action]
    return command


for _action in ("pause", "resume", "abort"):
    fleet.command(_action)(_request(_action))


@fleet.command("rollouts")
def rollouts(rollout_id: int = typer.Argument(None, help="One rollout (default: all)."), db: Path = db_opt,
             as_json: bool = typer.Option(False, "--json", help="Print JSON (with the events).")) -> None:
    """Rollouts, their stages, each decision and its numbers."""
    store = _existing(db)
    for rid in [rollout_id] if rollout_id else store.all():
        _print_rollout(store.summary(rid), as_json)


@fleet.command("agents")
def agents(count: int = typer.Option(1, min=1, help="Devices hosted by this process."),
           prefix: str = typer.Option("dev", help="Device ids are PREFIX-NNNN."),
           first: int = typer.Option(0, min=0, help="Number of the first device."),
           device_class: str = typer.Option(..., "--class", help="The devices' target class (e.g. rpi5)."),
           state: Path = typer.Option(..., help="Folder of the devices' state folders."),
           repo_url: str = typer.Option(..., help="Base URL of the served update repository."),
           root: Path = typer.Option(..., exists=True, help="The repository's 1.root.json (first trust)."),
           key: list[Path] = typer.Option([], help="Trusted bundle public key (repeatable)."),
           initial: Path = typer.Option(None, exists=True, help="Bundle installed where no model is committed."),
           interval: float = typer.Option(1.0, min=0.05, help="Seconds between health reports."),
           runs: int = typer.Option(4, min=1, help="Inferences per device per interval."),
           health_dir: Path = typer.Option(None, "--health-dir", file_okay=False,
                                           help="Publish the running runtime's health from DIR/runtime.json (its "
                                                "EDGEPILOT_HEALTH_DIR) instead of running the model here; one "
                                                "device (--count 1)."),
           health_max_age: float = typer.Option(None, "--health-max-age", min=0.1,
                                                help="Seconds after which a runtime report is stale (default: 3 "
                                                     "intervals, at least 15)."),
           broker: str = broker_opt) -> None:
    """Host COUNT devices in this process, each with its own slots, MQTT client and TUF client. Light mode (the
    default) runs each committed model here for its health; --health-dir publishes a real device's runtime's."""
    from edgepilot.cli.deploy import _keys
    from edgepilot.fleet.agents import Host, HostConfig
    from edgepilot.fleet.protocol import broker as parse

    cfg = HostConfig(broker=parse(broker), repo_url=repo_url, root=root.read_bytes(), keys=_keys(key), state=state,
                     device_class=device_class, ids=[f"{prefix}-{first + i:04d}" for i in range(count)],
                     initial=initial, interval_s=interval, runs=runs, health_dir=health_dir,
                     health_max_age_s=health_max_age)
    Host(cfg).run(_stop_on_signals())
