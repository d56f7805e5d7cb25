"""Update bundles: a signed manifest (sha256 per file) + model, pipeline, golden samples; written and safely extracted.

An .edgebundle is a gzip'd tar whose first two members are manifest.json and manifest.sig (Ed25519 over the
manifest's exact bytes). Extraction reads the archive once, as a stream: the signature is checked before any file
is written, then each member is checked (a regular file, a safe name the manifest lists, the declared size, within
the limits) and hashed while it is written into staging, so the bytes verified are the bytes installed.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgepilot.deploy import signing
from edgepilot.errors import BundleError

FORMAT = "edgepilot-bundle/1"
MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What a device accepts from one bundle."""

    max_file_bytes: int = 1 << 30
    max_total_bytes: int = 2 << 30
    max_files: int = 64
    max_manifest_bytes: int = 1 << 20


def check_name(name: str) -> str:
    """A member name is relative, normalised, at most 4 levels deep, of plain characters; else BundleError."""
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or len(parts) > 4
            or any(p in ("", ".", "..") or not _PART.match(p) for p in parts)):
        raise BundleError(f"unsafe member name {name[:80]!r}",
                          hint="bundle members are relative paths of plain names (no '..', no absolute paths)")
    if name in (MANIFEST, SIGNATURE):
        raise BundleError(f"{name} appears twice in the bundle")
    return name


class Gates(BaseModel):
    """What the device re-checks before it commits the model; None: not gated."""

    model_config = ConfigDict(extra="forbid")
    max_p95_ms: float | None = Field(None, gt=0, description="latency of one inference, p95, on the device")
    min_agreement: float | None = Field(None, ge=0, le=1, description="task metric of the golden outputs")
    max_memory_mb: float | None = Field(None, gt=0, description="resident memory of the process with the model")


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["edgepilot-bundle/1"] = FORMAT
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: int = Field(ge=1, description="monotonically increasing: a device refuses anything not newer")
    created: datetime
    expires: datetime
    target: str
    engine: str | None = None  # the runtime the variant was measured on; None: the device's first that runs it
    task: str
    model: str  # the model file among `files`
    pipeline: str | None = None
    golden: str
    samples: int = Field(ge=1)
    gates: Gates
    lineage: dict = {}
    key_id: str
    files: dict[str, FileEntry]

    @field_validator("files")
    @classmethod
    def _safe_names(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name in files:
            check_name(name)
        return files

    @model_validator(mode="after")
    def _roles_are_files(self) -> Manifest:
        for role in (self.model, self.pipeline, self.golden):
            if role is not None and role not in self.files:
                raise ValueError(f"{role!r} is not among the manifest's files")
        return self


@dataclass
class Verified:
    """A bundle whose signature, names, sizes and hashes all checked, extracted into `root`."""

    manifest: Manifest
    root: Path
    signer: str  # the key id that signed it

    def path(self, member: str) -> Path:
        return self.root / member


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_bundle(out: Path, fields: dict, files: dict[str, Path], private_key) -> Manifest:
    """The manifest of `fields` + a sha256 per file, signed; the archive is written atomically."""
    manifest = Manifest(**fields, key_id=signing.key_id(private_key.public_key()),
                        files={name: FileEntry(sha256=sha256_file(p), size=p.stat().st_size)
                               for name, p in files.items()})
    data = manifest.model_dump_json(indent=2).encode()
    tmp = out.with_name(out.name + ".part")
    mtime = int(manifest.created.timestamp())
    with tarfile.open(tmp, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, blob in ((MANIFEST, data), (SIGNATURE, signing.sign(private_key, data))):
            tar.addfile(_info(name, len(blob), mtime), io.BytesIO(blob))
        for name, path in files.items():
            with path.open("rb") as f:
                tar.addfile(_info(name, path.stat().st_size, mtime), f)
    os.replace(tmp, out)
    return manifest


def _info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    return info


def extract(bundle: Path, staging: Path, public_keys: list, *, now: datetime | None = None,
            newer_than: int | None = None, limits: Limits = Limits()) -> Verified:
    """Verify `bundle` while extracting it into `staging` (created here; removed again on any refusal)."""
    staging = Path(staging)
    staging.mkdir(mode=0o700)  # must not exist: nothing of an earlier attempt is trusted
    try:
        with open(bundle, "rb") as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
            return _extract(tar, staging, public_keys, now or datetime.now(timezone.utc), newer_than, limits)
    except BundleError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise BundleError(f"{bundle}: a corrupt or truncated archive ({type(e).__name__}: {e})") from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _extract(tar: tarfile.TarFile, staging: Path, keys: list, now: datetime, newer_than: int | None,
             limits: Limits) -> Verified:
    members = iter(tar)
    data = _read_small(tar, next(members, None), MANIFEST, limits.max_manifest_bytes)
    sig = _read_small(tar, next(members, None), SIGNATURE, signing.SIGNATURE_BYTES)
    signer = signing.verify(keys, data, sig)
    manifest = _parse(data)
    if manifest.expires <= now:
        raise BundleError(f"bundle {manifest.name} v{manifest.version} expired on {manifest.expires.isoformat()}",
                          hint="build and sign a fresh bundle")
    if newer_than is not None and manifest.version <= newer_than:
        raise BundleError(f"bundle {manifest.name} v{manifest.version} is not newer than the installed "
                          f"v{newer_than}: downgrades and replays are refused",
                          hint="bundle the update with a higher --version")
    if len(manifest.files) > limits.max_files:
        raise BundleError(f"the manifest lists {len(manifest.files)} files (at most {limits.max_files})")
    if sum(e.size for e in manifest.files.values()) > limits.max_total_bytes:
        raise BundleError(f"the bundle holds more than {limits.max_total_bytes} bytes")
    seen: set[str] = set()
    for member in members:
        name = member.name
        if not member.isreg():
            raise BundleError(f"member {name[:80]!r} is not a regular file ({_kind(member)})",
                              hint="bundles hold regular files only")
        entry = manifest.files.get(check_name(name))
        if entry is None:
            raise BundleError(f"member {name!r} is not in the signed manifest")
        if name in seen:
            raise BundleError(f"member {name!r} appears twice")
        if member.size > limits.max_file_bytes:
            raise BundleError(f"member {name!r} is {member.size} bytes (at most {limits.max_file_bytes})")
        if member.size != entry.size:
            raise BundleError(f"member {name!r} is {member.size} bytes where the manifest says {entry.size}")
        seen.add(name)
        _write_checked(tar, member, staging, entry)
    missing = sorted(set(manifest.files) - seen)
    if missing:
        raise BundleError(f"the bundle lacks {len(missing)} file(s) the manifest lists: {', '.join(missing[:3])}")
    _fsync_dir(staging)
    return Verified(manifest, staging, signer)


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo | None, want: str, limit: int) -> bytes:
    if member is None or member.name != want:
        raise BundleError(f"the bundle does not start with {want}", hint="not an edgepilot bundle, or reordered")
    if not member.isreg() or member.size > limit:
        raise BundleError(f"{want} is not a regular file of at most {limit} bytes")
    f = tar.extractfile(member)
    blob = f.read(member.size + 1) if f else b""
    if len(blob) != member.size:
        raise BundleError(f"{want} is truncated")
    return blob


def _parse(data: bytes) -> Manifest:
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise BundleError(f"invalid manifest: {'.'.join(map(str, err['loc'])) or '(top)'}: {err['msg']}") from None


def _kind(m: tarfile.TarInfo) -> str:
    return ("a symbolic link" if m.issym() else "a hard link" if m.islnk() else "a directory" if m.isdir()
            else "a device file" if m.ischr() or m.isblk() else "a FIFO" if m.isfifo() else "not a file")


def _write_checked(tar: tarfile.TarFile, member: tarfile.TarInfo, staging: Path, entry: FileEntry) -> None:
    """Stream the member into staging, hashing as it goes; the file is written by us, never by tarfile."""
    *dirs, leaf = member.name.split("/")
    parent = staging
    for d in dirs:  # only folders made here: no link can stand in the way
        parent = parent / d
        parent.mkdir(mode=0o755, exist_ok=True)
    src = tar.extractfile(member)
    h, written = hashlib.sha256(), 0
    fd = os.open(parent / leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as dst:
        while chunk := src.read(min(_CHUNK, entry.size - written + 1)):
            written += len(chunk)
            if written > entry.size:
                raise BundleError(f"member {member.name!r} holds more bytes than declared")
            h.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    if written != entry.size:
        raise BundleError(f"member {member.name!r} is truncated ({written} of {entry.size} bytes)")
    if h.hexdigest() != entry.sha256:
        raise BundleError(f"member {member.name!r} does not match its sha256 in the manifest",
                          hint="the file was modified after signing")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
