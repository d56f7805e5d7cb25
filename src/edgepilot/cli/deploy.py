"""`edgepilot keygen | bundle | verify | preflight | deploy-script | agent ...`: signed updates and the device side."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer


def _keys(paths: list[Path]) -> list:
    from edgepilot.deploy.signing import load_public
    from edgepilot.errors import ConfigError

    if not paths:
        raise ConfigError("no trusted public key given", hint="pass --key KEY.pub (repeatable)")
    return [load_public(p) for p in paths]


def _print(data: dict) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def register(app: typer.Typer) -> None:
    @app.command()
    def keygen(out: Path = typer.Argument(..., help="Private key file to write (its public key: OUT.pub).")) -> None:
        """Make an Ed25519 signing key pair: keep OUT secret, copy OUT.pub to the devices."""
        from edgepilot.deploy.signing import keygen as make

        private, public = make(out)
        typer.echo(f"private key {private} (keep it secret), public key {public} (put it on the devices)")

    @app.command()
    def bundle(model: Path = typer.Argument(..., exists=True, help="A variant folder (optimize's variants/<id>/) "
                                                                   "or a model file."),
               key: Path = typer.Option(..., exists=True, help="Private key from `edgepilot keygen`."),
               out: Path = typer.Option(..., help="Bundle to write, e.g. app.edgebundle."),
               version: int = typer.Option(..., min=1, help="Bundle version; devices refuse any not above theirs."),
               target: str = typer.Option(..., help="Target board (see `edgepilot targets`)."),
               pipeline: Path = typer.Option(None, exists=True, help="Pipeline YAML to ship with the model."),
               name: str = typer.Option(None, help="Application name (default: the variant id or file stem)."),
               engine: str = typer.Option(None, help="Runtime on the device (default: the variant's, else the "
                                                     "first available one)."),
               task: str = typer.Option(None, help="classification, detection, segmentation or tensors "
                                                   "(default: inferred)."),
               max_p95_ms: float = typer.Option(None, min=0, help="Gate: latency p95 on the device, ms."),
               min_agreement: float = typer.Option(0.99, min=0, max=1, help="Gate: task metric of the golden "
                                                                            "outputs on the device."),
               max_memory_mb: float = typer.Option(None, min=0, help="Gate: resident memory on the device, MB."),
               reference: Path = typer.Option(None, exists=True, help="Model the golden outputs come from (e.g. "
                                                                      "the fp32 source); default: MODEL itself."),
               golden_inputs: Path = typer.Option(None, exists=True, help=".npz of real inputs named by input "
                                                                          "(default: seeded synthetic inputs)."),
               samples: int = typer.Option(8, min=1, max=256, help="Golden samples to keep."),
               expires_days: float = typer.Option(90.0, min=0.001, help="Days until devices refuse the bundle."),
               ) -> None:
        """Bundle MODEL with its pipeline, gates and golden samples in a signed .edgebundle."""
        from edgepilot.deploy.build import build
        from edgepilot.deploy.bundle import Gates

        m = build(model, out, key, version=version, target=target, pipeline=pipeline, name=name, engine=engine,
                  task=task, reference=reference, golden_inputs=golden_inputs, samples=samples,
                  expires_days=expires_days, gates=Gates(max_p95_ms=max_p95_ms, min_agreement=min_agreement,
                                                         max_memory_mb=max_memory_mb))
        typer.echo(f"{out}: {m.name} v{m.version} for {m.target}, {len(m.files)} files, {m.samples} golden "
                   f"samples, expires {m.expires.date()}, signed by {m.key_id}")

    @app.command()
    def verify(path: Path = typer.Argument(..., exists=True, help="The .edgebundle to check."),
               key: list[Path] = typer.Option([], help="Trusted public key (repeatable)."),
               as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON.")) -> None:
        """Check the signature, every file's sha256 and the archive's safety, as a device does."""
        from edgepilot.deploy.bundle import extract

        with tempfile.TemporaryDirectory() as tmp:
            v = extract(path, Path(tmp) / "staging", _keys(key))
        m = v.manifest
        if as_json:
            typer.echo(m.model_dump_json(indent=2))
        else:
            typer.echo(f"{path}: valid — {m.name} v{m.version} for {m.target}, signed by {v.signer}, "
                       f"{len(m.files)} files verified, expires {m.expires.isoformat()}")

    @app.command()
    def preflight(path: Path = typer.Argument(..., exists=True, help="The .edgebundle to check."),
                  target: str = typer.Option(..., help="The board it goes to (see `edgepilot targets`)."),
                  key: list[Path] = typer.Option([], help="Trusted public key (repeatable)."),
                  state: Path = typer.Option(None, help="The device agent's state folder (the rollback slot)."),
                  as_json: bool = typer.Option(False, "--json", help="Print the items as JSON.")) -> None:
        """Run the deployment checklist on a bundle; exits 1 unless every item passes."""
        from edgepilot.deploy.preflight import preflight as check

        items = check(path, target, _keys(key), state)
        if as_json:
            _print({"ok": all(i.ok for i in items), "items": [i.__dict__ for i in items]})
        else:
            for i in items:
                typer.echo(f"{'PASS' if i.ok else 'FAIL'}  {i.name}: {i.detail}")
        if not all(i.ok for i in items):
            raise typer.Exit(1)

    agent = typer.Typer(no_args_is_help=True, help="The device agent: A/B slots, gates re-checked here, rollback.")
    app.add_typer(agent, name="agent")
    state_opt = typer.Option(..., "--state", help="The agent's state folder (slots, current, state.json).")
    key_opt = typer.Option([], "--key", help="Trusted public key (repeatable).")
    engine_opt = typer.Option(None, help="Runtime to load models with (default: the bundle's).")

    def _agent(state: Path, key: list[Path], engine: str | None = None):
        from edgepilot.deploy.agent import Agent

        return Agent(state, _keys(key), engine=engine)

    @agent.command("install")
    def agent_install(bundle_path: Path = typer.Argument(..., exists=True, help="The .edgebundle to install."),
                      state: Path = state_opt, key: list[Path] = key_opt, engine: str = engine_opt) -> None:
        """Verify, stage, trial and commit (or roll back) one bundle; exits 1 unless it committed."""
        outcome = _agent(state, key, engine).install(bundle_path)
        _print(outcome.to_dict())
        if outcome.state != "COMMITTED":
            raise typer.Exit(1)

    @agent.command("status")
    def agent_status(state: Path = state_opt) -> None:
        """Recover the state folder if an update was interrupted, then print it."""
        from edgepilot.deploy.agent import Agent

        a = Agent(state, [])
        _print({**a.state().model_dump(exclude={"history"}), "model": str(a.committed_model() or "")})

    @agent.command("rollback")
    def agent_rollback(state: Path = state_opt,
                       reason: str = typer.Option("rolled back by hand", help="Recorded in the history.")) -> None:
        """Switch back to the previous model in the other slot."""
        from edgepilot.deploy.agent import Agent

        _print(Agent(state, []).rollback(reason).to_dict())

    probation_opt = typer.Option(600.0, "--probation-s", min=1, help="Seconds a committed model stays on "
                                 "probation (health watched, rolled back on a breach).")

    @agent.command("probation")
    def agent_probation(state: Path = state_opt) -> None:
        """Judge the committed model's probation once (roll back on a breach) and print it."""
        from edgepilot.deploy import probation
        from edgepilot.deploy.agent import Agent

        a = Agent(state, [])
        out = a.check_probation()
        p = probation.load(a.dir.root)
        _print({"probation": p.model_dump() if p else None, "outcome": out.to_dict() if out else None,
                "health": probation.read_health(a.dir.health)})

    @agent.command("watch")
    def agent_watch(inbox: Path = typer.Option(..., help="Folder to install dropped .edgebundle files from."),
                    state: Path = state_opt, key: list[Path] = key_opt, engine: str = engine_opt,
                    interval: float = typer.Option(5.0, min=0.1, help="Seconds between looks at the inbox."),
                    probation_s: float = probation_opt) -> None:
        """Run as a service: install bundles as they arrive and judge the committed model's probation, feeding the
        systemd watchdog (sd_notify)."""
        from edgepilot.deploy.agent import Agent, watch
        from edgepilot.deploy.notify import notify
        from edgepilot.deploy.probation import Thresholds

        agent_ = Agent(state, _keys(key), engine=engine, thresholds=Thresholds(window_s=probation_s))
        watch(agent_, inbox, interval, notify=notify)

    @app.command("deploy-script")
    def deploy_script(platform: str = typer.Option(..., help="raspberry-pi, jetson or generic."),
                      out: Path = typer.Option(..., help="Folder to write the artifacts into."),
                      prefix: str = typer.Option("/opt/edgepilot", help="Where the venv goes on the device."),
                      state: str = typer.Option("/var/lib/edgepilot", help="Agent state, inbox and runtime work."),
                      image: str = typer.Option("edgepilot-runtime:latest", help="Image the DaemonSet runs.")) -> None:
        """Write install.sh, systemd units (Restart=, WatchdogSec= fed by sd_notify), a Dockerfile and a k3s
        DaemonSet for PLATFORM."""
        from edgepilot.deploy.artifacts import write_artifacts

        for f in write_artifacts(platform, out, prefix=prefix, state=state, image=image):
            typer.echo(str(f))
