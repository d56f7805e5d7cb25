"""Bundles: a good one verifies and extracts byte for byte; every tampered one is refused with a reason and
leaves nothing behind (no staging folder, no file outside it)."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from deploy_helpers import keys, make_bundle

pytest.importorskip("cryptography")
pytest.importorskip("onnxruntime")

from edgepilot.deploy import bundle, signing  # noqa: E402
from edgepilot.deploy.bundle import MANIFEST, SIGNATURE, Limits  # noqa: E402
from edgepilot.errors import BundleError  # noqa: E402


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle")
    priv, pub = keys(tmp)
    other_priv, other_pub = keys(tmp, "other")
    path = make_bundle(tmp, priv, version=3)
    with tarfile.open(path, "r:gz") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    return {"path": path, "priv": signing.load_private(priv), "pub": signing.load_public(pub),
            "other": signing.load_private(other_priv), "other_pub": signing.load_public(other_pub),
            "members": members}


def _reg(name: str, data: bytes, size: int | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data) if size is None else size
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, b""


def _archive(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return gzip.compress(buf.getvalue())


def _manifest(g) -> dict:
    return json.loads(dict(g["members"])[MANIFEST])


def _signed(g, manifest: dict, files: list[tuple[tarfile.TarInfo, bytes]] | None = None, key=None) -> bytes:
    """A bundle with this manifest, signed by the good key (or `key`), then these members (default: the files)."""
    data = json.dumps(manifest).encode()
    sig = (key or g["priv"]).sign(data)
    body = files if files is not None else [_reg(n, d) for n, d in g["members"][2:]]
    return _archive([_reg(MANIFEST, data), _reg(SIGNATURE, sig), *body])


def _files(g) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [_reg(n, d) for n, d in g["members"][2:]]


def _head(g, manifest_bytes: bytes | None = None, sig: bytes | None = None):
    m = dict(g["members"])
    return [_reg(MANIFEST, manifest_bytes or m[MANIFEST]), _reg(SIGNATURE, m[SIGNATURE] if sig is None else sig)]


def _model(g) -> tuple[str, bytes]:
    return next((n, d) for n, d in g["members"] if n.startswith("model/"))


def _resign_with(g, **changes) -> bytes:
    return _signed(g, {**_manifest(g), **changes})


def _with_files(g, extra_entries: dict, members) -> bytes:
    m = _manifest(g)
    m["files"] = {**m["files"], **extra_entries}
    return _signed(g, m, members)


def _entry(data: bytes) -> dict:
    import hashlib

    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _cases():
    """(id, builder(g) -> archive bytes, extract keywords)."""
    later = datetime.now(timezone.utc) + timedelta(days=91)
    past = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
    evil = b"evil"

    def sig(g) -> bytes:
        return dict(g["members"])[SIGNATURE]

    def manifest_bytes(g) -> bytes:
        return dict(g["members"])[MANIFEST]

    def flip(b: bytes, i: int = 0) -> bytes:
        return b[:i] + bytes([b[i] ^ 1]) + b[i + 1:]

    def swap_model(g, data: bytes, size: int | None = None):
        name, _ = _model(g)
        return _archive(_head(g) + [_reg(n, data, size) if n == name else _reg(n, d) for n, d in g["members"][2:]])

    def traversal(name):
        return lambda g: _with_files(g, {name: _entry(evil)}, _files(g) + [_reg(name, evil)])

    def raw_member(name):  # a member the manifest does not list, by an unsafe name
        return lambda g: _archive(_head(g) + _files(g) + [_reg(name, evil)])

    def special(kind, linkname=""):  # the model's own name, as something other than a regular file
        return lambda g: _archive(_head(g) + [_special(n, kind, linkname) if n.startswith("model/") else _reg(n, d)
                                              for n, d in g["members"][2:]])

    return [
        ("signature-bit-flipped", lambda g: _archive(_head(g, sig=flip(sig(g))) + _files(g)), {}),
        ("signature-truncated", lambda g: _archive(_head(g, sig=sig(g)[:63]) + _files(g)), {}),
        ("signature-empty", lambda g: _archive(_head(g, sig=b"") + _files(g)), {}),
        ("signature-oversized", lambda g: _archive(_head(g, sig=b"\0" * 65) + _files(g)), {}),
        ("wrong-key", lambda g: _signed(g, _manifest(g), key=g["other"]), {}),
        ("manifest-edited-version", lambda g: _archive(
            _head(g, json.dumps({**_manifest(g), "version": 99}).encode()) + _files(g)), {}),
        ("manifest-edited-hash", lambda g: _archive(_head(
            g, manifest_bytes(g).replace(b'"sha256": "', b'"sha256": "0', 1)) + _files(g)), {}),
        ("manifest-whitespace-added", lambda g: _archive(_head(g, manifest_bytes(g) + b" ") + _files(g)), {}),
        ("no-signature", lambda g: _archive([_reg(MANIFEST, dict(g["members"])[MANIFEST])] + _files(g)), {}),
        ("no-manifest", lambda g: _archive(_files(g)), {}),
        ("signature-first", lambda g: _archive(list(reversed(_head(g))) + _files(g)), {}),
        ("manifest-oversized", lambda g: _archive(_head(g, dict(g["members"])[MANIFEST] + b" " * (1 << 20))
                                                  + _files(g)), {}),
        ("model-modified", lambda g: swap_model(g, flip(_model(g)[1], 20)), {}),
        ("model-replaced-same-size", lambda g: swap_model(g, b"\x08" * len(_model(g)[1])), {}),
        ("golden-modified", lambda g: _archive(_head(g) + [_reg(n, flip(d, 40) if n == "golden.npz" else d)
                                                           for n, d in g["members"][2:]]), {}),
        ("model-shorter-than-declared", lambda g: swap_model(g, _model(g)[1][:-10]), {}),
        ("model-longer-than-declared", lambda g: swap_model(g, _model(g)[1] + b"\0" * 10), {}),
        ("extra-file", lambda g: _archive(_head(g) + _files(g) + [_reg("extra.txt", evil)]), {}),
        ("extra-file-in-model-dir", lambda g: _archive(_head(g) + _files(g) + [_reg("model/x.onnx", evil)]), {}),
        ("missing-model", lambda g: _archive(_head(g) + [_reg(n, d) for n, d in g["members"][2:]
                                                         if not n.startswith("model/")]), {}),
        ("missing-golden", lambda g: _archive(_head(g) + [_reg(n, d) for n, d in g["members"][2:]
                                                          if n != "golden.npz"]), {}),
        ("duplicate-member", lambda g: _archive(_head(g) + _files(g) + [_reg(*_model(g))]), {}),
        ("manifest-twice", lambda g: _archive(_head(g) + _files(g) + [_reg(MANIFEST, b"{}")]), {}),
        ("traversal-dotdot", raw_member("../evil"), {}),
        ("traversal-nested", raw_member("model/../../evil"), {}),
        ("absolute-path", raw_member("/tmp/evil"), {}),
        ("dot-segment", raw_member("./model/evil"), {}),
        ("backslash", raw_member("..\\evil"), {}),
        ("empty-segment", raw_member("model//evil"), {}),
        ("too-deep", raw_member("a/b/c/d/evil"), {}),
        ("signed-traversal", traversal("../evil"), {}),
        ("signed-absolute", traversal("/tmp/evil"), {}),
        ("signed-dotdot-nested", traversal("model/../../../evil"), {}),
        ("symlink-absolute", special(tarfile.SYMTYPE, "/etc/passwd"), {}),
        ("symlink-relative", special(tarfile.SYMTYPE, "../../evil"), {}),
        ("hard-link", special(tarfile.LNKTYPE, "/etc/passwd"), {}),
        ("hard-link-inside", special(tarfile.LNKTYPE, "golden.npz"), {}),
        ("char-device", special(tarfile.CHRTYPE), {}),
        ("block-device", special(tarfile.BLKTYPE), {}),
        ("fifo", special(tarfile.FIFOTYPE), {}),
        ("directory", special(tarfile.DIRTYPE), {}),
        ("oversized-member", lambda g: g["path"].read_bytes(), {"limits": Limits(max_file_bytes=1000)}),
        ("over-total-size", lambda g: g["path"].read_bytes(), {"limits": Limits(max_total_bytes=1000)}),
        ("too-many-files", lambda g: g["path"].read_bytes(), {"limits": Limits(max_files=1)}),
        ("expired", lambda g: _resign_with(g, expires=past), {}),
        ("expired-by-clock", lambda g: g["path"].read_bytes(), {"now": later}),
        ("downgrade", lambda g: g["path"].read_bytes(), {"newer_than": 5}),
        ("replay-same-version", lambda g: g["path"].read_bytes(), {"newer_than": 3}),
        ("signed-size-lie", lambda g: _resign_with(g, files={**_manifest(g)["files"], _model(g)[0]: {
            **_manifest(g)["files"][_model(g)[0]], "size": len(_model(g)[1]) + 1}}), {}),
        ("signed-model-not-listed", lambda g: _resign_with(g, model="model/other.onnx"), {}),
        ("signed-bad-format", lambda g: _resign_with(g, format="edgepilot-bundle/0"), {}),
        ("signed-unknown-field", lambda g: _resign_with(g, run="rm -rf /"), {}),
        ("signed-not-json", lambda g: _archive(
            [_reg(MANIFEST, b"not json"), _reg(SIGNATURE, g["priv"].sign(b"not json"))] + _files(g)), {}),
        ("truncated-half", lambda g: g["path"].read_bytes()[: len(g["path"].read_bytes()) // 2], {}),
        ("truncated-tail", lambda g: g["path"].read_bytes()[:-30], {}),
        ("truncated-header", lambda g: g["path"].read_bytes()[:10], {}),
        ("empty-file", lambda g: b"", {}),
        ("not-gzip", lambda g: b"PK\x03\x04" + b"\0" * 100, {}),
        ("gzip-not-tar", lambda g: gzip.compress(b"hello " * 200), {}),
    ]


CASES = _cases()


def test_enough_tampering_cases():
    assert len(CASES) >= 40


def test_good_bundle_extracts_byte_for_byte(good, tmp_path):
    v = bundle.extract(good["path"], tmp_path / "staging", [good["pub"]])
    assert v.manifest.version == 3 and v.signer == signing.key_id(good["pub"])
    for name, data in good["members"][2:]:
        assert (tmp_path / "staging" / name).read_bytes() == data
    assert sorted(p.relative_to(v.root).as_posix() for p in v.root.rglob("*") if p.is_file()) == \
        sorted(n for n, _ in good["members"][2:])


def test_any_trusted_key_verifies(good, tmp_path):
    v = bundle.extract(good["path"], tmp_path / "s", [good["other_pub"], good["pub"]])
    assert v.signer == signing.key_id(good["pub"])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_tampered_bundle_is_refused(good, tmp_path, case):
    _, make, kw = case
    src = tmp_path / "in" / "bad.edgebundle"
    src.parent.mkdir()
    src.write_bytes(make(good))
    box = tmp_path / "device"
    box.mkdir()
    with pytest.raises(BundleError) as e:
        bundle.extract(src, box / "staging", [good["pub"]], **kw)
    assert len(str(e.value)) > 10  # a reason, not an empty refusal
    assert list(box.iterdir()) == []  # staging removed again
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert written == ["device", "in", "in/bad.edgebundle"]
    assert not Path("/tmp/evil").exists()


def test_reasons_name_the_problem(good, tmp_path):
    def reason(name):
        make, kw = next((m, k) for n, m, k in CASES if n == name)
        (tmp_path / name).write_bytes(make(good))
        with pytest.raises(BundleError) as e:
            bundle.extract(tmp_path / name, tmp_path / f"s-{name}", [good["pub"]], **kw)
        return str(e.value)

    assert "signature" in reason("wrong-key")
    assert "sha256" in reason("model-modified")
    assert "not in the signed manifest" in reason("extra-file")
    assert "lacks" in reason("missing-model")
    assert "unsafe member name" in reason("traversal-dotdot")
    assert "symbolic link" in reason("symlink-absolute")
    assert "hard link" in reason("hard-link")
    assert "device file" in reason("char-device")
    assert "expired" in reason("expired")
    assert "downgrade" in reason("downgrade")
    assert "truncated" in reason("truncated-half")
    assert "at most 1000" in reason("oversized-member")


def test_existing_staging_is_never_reused(good, tmp_path):
    (tmp_path / "staging").mkdir()
    with pytest.raises(FileExistsError):
        bundle.extract(good["path"], tmp_path / "staging", [good["pub"]])
