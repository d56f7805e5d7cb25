"""The fleet's update repository: TUF metadata (root, targets, snapshot, timestamp + one delegated role per device
class) over the bundles, written by the controller and read by agents through `tuf.ngclient`.

    REPO/
      keys/        one Ed25519 key per role (PEM, 0600): root, targets, snapshot, timestamp, class-<class>
      metadata/    N.root.json, N.targets.json, N.snapshot.json, N.class-<class>.json, timestamp.json
      targets/     <class>/<sha256>.<name>-v<version>.edgebundle   (consistent snapshots)

A device class's bundles are listed only by its own delegated role (paths `<class>/*`), signed by its own key, so a
class's targets file served in place of another's is refused; timestamp and snapshot versions only go up, so a
replayed old one is refused; every target's length and hash are in signed metadata, so an oversized or swapped
bundle is refused before it is installed — all by the TUF protocol, on top of the bundle's own signature.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from edgepilot.errors import BundleError, ConfigError
from edgepilot.optional import require

TOP = ("root", "targets", "snapshot", "timestamp")
_SPEC = "1.0.31"


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid, in days (timestamp is re-signed on every publish)."""

    root: float = 365
    targets: float = 90
    snapshot: float = 30
    timestamp: float = 7


def _tuf():
    require("tuf", "deploy")
    from securesystemslib.signer import CryptoSigner
    from tuf.api import metadata as md
    from tuf.api.serialization.json import JSONSerializer

    return md, CryptoSigner, JSONSerializer


def _in(days: float) -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=days)


def class_role(device_class: str) -> str:
    return f"class-{device_class}"


class Repository:
    """Write side of the repository folder (the controller's)."""

    def __init__(self, root: Path, expiry: Expiry = Expiry(), *, _new: bool = False) -> None:
        self.root = Path(root)
        self.keys, self.metadata, self.targets = self.root / "keys", self.root / "metadata", self.root / "targets"
        self.expiry = expiry
        if not _new and not (self.metadata / "timestamp.json").is_file():
            raise ConfigError(f"{self.root}: not an update repository (no metadata/timestamp.json)",
                              hint="make one with `edgepilot fleet repo-init`")

    # -- creation -------------------------------------------------------------------------------------------
    @classmethod
    def init(cls, root: Path, expiry: Expiry = Expiry(), root_expires: datetime | None = None) -> Repository:
        """A new repository with fresh keys and empty targets; refuses a folder that already holds one."""
        md, _, _ = _tuf()
        root = Path(root)
        if (root / "metadata").exists():
            raise ConfigError(f"{root}/metadata already exists", hint="a repository is never re-initialised")
        for d in ("keys", "metadata", "targets"):
            (root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(root / "keys", 0o700)
        signers = {role: _new_key(root / "keys", role) for role in TOP}
        r = md.Root(expires=root_expires or _in(expiry.root), consistent_snapshot=True, spec_version=_SPEC)
        for role in TOP:
            r.add_key(signers[role].public_key, role)
        _write(root / "metadata" / "1.root.json", md.Metadata(r), [signers["root"]])
        t = md.Targets(expires=_in(expiry.targets), spec_version=_SPEC)
        t.delegations = md.Delegations(keys={}, roles={})
        _write(root / "metadata" / "1.targets.json", md.Metadata(t), [signers["targets"]])
        repo = cls(root, expiry, _new=True)
        repo._publish(snapshot_meta={"targets.json": 1})
        return repo

    # -- reading --------------------------------------------------------------------------------------------
    def _load(self, name: str):
        md, _, _ = _tuf()
        return md.Metadata.from_file(str(self.metadata / name))

    def root_version(self) -> int:
        return max(int(p.name.split(".")[0]) for p in self.metadata.glob("*.root.json"))

    def root_bytes(self, version: int | None = None) -> bytes:
        """The signed root metadata agents are shipped with (their first trust)."""
        return (self.metadata / f"{version or self.root_version()}.root.json").read_bytes()

    def snapshot(self):
        ts = self._load("timestamp.json").signed
        return self._load(f"{ts.snapshot_meta.version}.snapshot.json")

    def role(self, name: str):
        version = self.snapshot().signed.meta[f"{name}.json"].version
        return self._load(f"{version}.{name}.json")

    def listing(self) -> dict[str, dict]:
        """Every target path → its length, sha256 and the role that lists it."""
        out: dict[str, dict] = {}
        top = self.role("targets").signed
        for name in (top.delegations.roles if top.delegations else {}):
            for path, tf in self.role(name).signed.targets.items():
                out[path] = {"length": tf.length, "sha256": tf.hashes["sha256"], "role": name}
        return out

    def _signer(self, role: str):
        _, CryptoSigner, _ = _tuf()
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        path = self.keys / f"{role}.pem"
        if not path.is_file():
            raise ConfigError(f"{path}: the repository's {role} key is missing",
                              hint="restore keys/ from the repository's backup")
        return CryptoSigner(load_pem_private_key(path.read_bytes(), None))

    # -- writing --------------------------------------------------------------------------------------------
    def add_bundle(self, bundle: Path, device_class: str) -> str:
        """List `bundle` for `device_class` (its delegated role is created on first use); returns the target path
        agents ask for."""
        md, _, _ = _tuf()
        name = _bundle_name(bundle)
        path = f"{device_class}/{name}"
        info = md.TargetFile.from_file(path, str(bundle), ["sha256"])
        dest = self.targets / device_class / f"{info.hashes['sha256']}.{name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            tmp = dest.with_name(dest.name + ".part")
            shutil.copyfile(bundle, tmp)
            os.replace(tmp, dest)
        role = class_role(device_class)
        meta = self.snapshot().signed.meta
        top = self.role("targets")
        changed = {}
        if role not in top.signed.delegations.roles:
            signer = _new_key(self.keys, role)
            top.signed.delegations.roles[role] = md.DelegatedRole(role, [], 1, True, paths=[f"{device_class}/*"])
            top.signed.add_key(signer.public_key, role)
            top.signed.version += 1
            top.signed.expires = _in(self.expiry.targets)
            _write(self.metadata / f"{top.signed.version}.targets.json", top, [self._signer("targets")])
            changed["targets.json"] = top.signed.version
            delegated = md.Metadata(md.Targets(expires=_in(self.expiry.targets), spec_version=_SPEC))
        else:
            delegated = self.role(role)
            delegated.signed.version += 1
            delegated.signed.expires = _in(self.expiry.targets)
        delegated.signed.targets[path] = info
        _write(self.metadata / f"{delegated.signed.version}.{role}.json", delegated, [self._signer(role)])
        changed[f"{role}.json"] = delegated.signed.version
        self._publish(snapshot_meta={**{k: v.version for k, v in meta.items()}, **changed})
        return path

    def refresh(self, margin: float = 0.5) -> list[str]:
        """Re-sign what expires within `margin` of its validity (targets and class roles), then publish a new
        snapshot and timestamp: run it well inside the timestamp's validity (a cron job, or every rollout),
        since agents refuse an expired timestamp (a frozen repository). Returns the roles re-signed."""
        meta = {k: v.version for k, v in self.snapshot().signed.meta.items()}
        soon = datetime.now(timezone.utc) + timedelta(days=self.expiry.targets * margin)
        renewed = []
        for file in meta:
            role = file.removesuffix(".json")
            md_ = self.role(role)
            if md_.signed.expires <= soon:
                md_.signed.version += 1
                md_.signed.expires = _in(self.expiry.targets)
                _write(self.metadata / f"{md_.signed.version}.{role}.json", md_, [self._signer(role)])
                meta[file] = md_.signed.version
                renewed.append(role)
        self._publish(snapshot_meta=meta)
        return renewed

    def rotate_root(self, role: str = "root", root_expires: datetime | None = None) -> int:
        """Replace `role`'s key with a new one in a new root version, signed by the old and the new root keys;
        returns the new root version."""
        md, _, _ = _tuf()
        current = self._load(f"{self.root_version()}.root.json")
        old_root = self._signer("root")
        old = current.signed.roles[role].keyids[0]
        (self.keys / f"{role}.pem").rename(self.keys / f"{role}.pem.retired-{current.signed.version}")
        new = _new_key(self.keys, role)
        current.signed.revoke_key(old, role)
        current.signed.add_key(new.public_key, role)
        current.signed.version += 1
        current.signed.expires = root_expires or _in(self.expiry.root)
        signers = [old_root, new] if role == "root" else [old_root]
        _write(self.metadata / f"{current.signed.version}.root.json", current, signers)
        if role in ("snapshot", "timestamp"):
            self._publish(snapshot_meta={k: v.version for k, v in self.snapshot().signed.meta.items()})
        return current.signed.version

    def _publish(self, snapshot_meta: dict[str, int]) -> None:
        """A new snapshot over `snapshot_meta`, then a new timestamp: the moment agents see the change."""
        md, _, _ = _tuf()
        ts_path = self.metadata / "timestamp.json"
        old_ts = md.Metadata.from_file(str(ts_path)).signed if ts_path.exists() else None
        version = old_ts.snapshot_meta.version + 1 if old_ts else 1
        snap = md.Snapshot(version=version, expires=_in(self.expiry.snapshot), spec_version=_SPEC,
                           meta={k: md.MetaFile(version=v) for k, v in snapshot_meta.items()})
        _write(self.metadata / f"{version}.snapshot.json", md.Metadata(snap), [self._signer("snapshot")])
        ts = md.Timestamp(version=(old_ts.version + 1) if old_ts else 1, expires=_in(self.expiry.timestamp),
                          spec_version=_SPEC, snapshot_meta=md.MetaFile(version=version))
        _write(ts_path, md.Metadata(ts), [self._signer("timestamp")])


def _bundle_name(bundle: Path) -> str:
    m = read_manifest(bundle)
    return f"{m.name}-v{m.version}.edgebundle"


def read_manifest(bundle: Path):
    """The bundle's manifest, read to name and route it (not trusted: the device verifies the bundle)."""
    import tarfile

    from edgepilot.deploy.bundle import MANIFEST, Manifest

    try:
        with tarfile.open(bundle, "r|gz") as tar:
            first = next(iter(tar), None)
            if first is None or first.name != MANIFEST:
                raise BundleError(f"{bundle}: not an edgepilot bundle")
            m = Manifest.model_validate_json(tar.extractfile(first).read())
    except (tarfile.TarError, OSError, ValueError) as e:
        raise BundleError(f"{bundle}: unreadable bundle ({e})") from e
    return m


def _new_key(folder: Path, role: str):
    _, CryptoSigner, _ = _tuf()
    signer = CryptoSigner.generate_ed25519()
    fd = os.open(folder / f"{role}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(signer.private_bytes)
    return signer


def _write(path: Path, metadata, signers) -> None:
    _, _, JSONSerializer = _tuf()
    metadata.signatures.clear()
    for s in signers:
        metadata.sign(s, append=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(metadata.to_bytes(JSONSerializer(compact=False)))
    os.replace(tmp, path)


def http_server(root: Path, host: str = "127.0.0.1", port: int = 0):
    """A threading HTTP server over the repository's metadata/ and targets/ (never keys/); call serve_forever()."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    root = Path(root)

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            if not self.path.startswith(("/metadata/", "/targets/")):
                self.send_error(404)
                return
            super().do_GET()

        def log_message(self, *args):  # access logs would drown the fleet's own
            pass

    server = ThreadingHTTPServer((host, port), functools.partial(Handler, directory=str(root)))
    server.daemon_threads = True
    return server
