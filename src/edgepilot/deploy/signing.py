"""Ed25519 keys for bundles: generate a pair, sign a manifest, verify it against trusted public keys."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from edgepilot.errors import BundleError, ConfigError
from edgepilot.optional import require

SIGNATURE_BYTES = 64


def _crypto():
    require("cryptography", "deploy")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


def keygen(private_path: Path, public_path: Path | None = None) -> tuple[Path, Path]:
    """Write a new private key (PEM, mode 0600, never overwritten) and its public key beside it (KEY.pub)."""
    serialization, ed25519 = _crypto()
    public_path = public_path or private_path.with_name(private_path.name + ".pub")
    for p in (private_path, public_path):
        if p.exists():
            raise ConfigError(f"{p} already exists", hint="keys are never overwritten: choose another path")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private(path: Path):
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{path}: not a readable private key ({e})", hint="make one with `edgepilot keygen`") from e
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key", hint="make one with `edgepilot keygen`")
    return key


def load_public(path: Path):
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{path}: not a readable public key ({e})", hint="give the KEY.pub that keygen wrote") from e
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 public key", hint="give the KEY.pub that keygen wrote")
    return key


def key_id(public_key) -> str:
    """A short fingerprint of a public key, recorded in manifests so a refusal can say which key signed."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(private_key, data: bytes) -> bytes:
    return private_key.sign(data)


def verify(public_keys: list, data: bytes, signature: bytes) -> str:
    """The key id of the trusted key that signed `data`; BundleError when none did."""
    from cryptography.exceptions import InvalidSignature

    if len(signature) != SIGNATURE_BYTES:
        raise BundleError(f"the signature is {len(signature)} bytes, not {SIGNATURE_BYTES}")
    for key in public_keys:
        try:
            key.verify(signature, data)
            return key_id(key)
        except InvalidSignature:
            continue
    raise BundleError("the manifest's signature does not verify with any trusted key",
                      hint="the bundle was modified or signed with another key")
