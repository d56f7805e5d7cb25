"""The TUF update repository: what agents accept, and the attacks the protocol refuses."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from deploy_helpers import keys
from edgepilot.errors import BundleError, ConfigError
from edgepilot.fleet.client import RepoClient
from edgepilot.fleet.repository import Repository
from fleet_helpers import Served, fleet_bundle


@pytest.fixture
def repo(tmp_path):
    key, _ = keys(tmp_path)
    repo = Repository.init(tmp_path / "repo")
    served = Served(tmp_path / "repo")
    yield repo, served, key, tmp_path
    served.close()


def client(repo, served, tmp_path, name="dev", device_class="rpi4"):
    return RepoClient(tmp_path / name, served.url, repo.root_bytes(1), device_class)


def test_listed_bundle_is_fetched_byte_for_byte(repo):
    repo, served, key, tmp = repo
    bundle = fleet_bundle(tmp, key, 1)
    path = repo.add_bundle(bundle, "rpi4")
    assert path == "rpi4/app-v1.edgebundle"
    assert repo.listing()[path]["role"] == "class-rpi4"
    got = client(repo, served, tmp).fetch(path)
    assert got.read_bytes() == bundle.read_bytes()
    with pytest.raises(ConfigError, match="never re-initialised"):
        Repository.init(tmp / "repo")


def test_unlisted_and_other_class_targets_refused(repo):
    repo, served, key, tmp = repo
    repo.add_bundle(fleet_bundle(tmp, key, 1), "rpi4")
    jetson = repo.add_bundle(fleet_bundle(tmp, key, 1, target="jetson-orin-nano"), "jetson-orin-nano")
    c = client(repo, served, tmp)
    with pytest.raises(BundleError, match="does not list"):
        c.fetch("rpi4/app-v9.edgebundle")
    with pytest.raises(BundleError, match="not for this device's class"):
        c.fetch(jetson)


def test_replayed_old_timestamp_refused(repo):
    repo, served, key, tmp = repo
    repo.add_bundle(fleet_bundle(tmp, key, 1), "rpi4")
    old = (repo.metadata / "timestamp.json").read_bytes()
    repo.add_bundle(fleet_bundle(tmp, key, 2), "rpi4")
    c = client(repo, served, tmp)
    c.refresh()  # the device has seen the newest timestamp
    (repo.metadata / "timestamp.json").write_bytes(old)  # a mirror or a man in the middle replays the old one
    with pytest.raises(BundleError, match="BadVersionNumberError"):
        client(repo, served, tmp).fetch("rpi4/app-v2.edgebundle")


def test_replayed_old_snapshot_refused(repo):
    repo, served, key, tmp = repo
    repo.add_bundle(fleet_bundle(tmp, key, 1), "rpi4")
    repo.add_bundle(fleet_bundle(tmp, key, 2), "rpi4")
    newest = repo.snapshot().signed.version
    (repo.metadata / f"{newest}.snapshot.json").write_bytes(
        (repo.metadata / f"{newest - 1}.snapshot.json").read_bytes())  # freeze: the old listing, new name
    with pytest.raises(BundleError, match="BadVersionNumberError"):
        client(repo, served, tmp).fetch("rpi4/app-v2.edgebundle")


def test_targets_of_another_class_swapped_in_refused(repo):
    repo, served, key, tmp = repo
    repo.add_bundle(fleet_bundle(tmp, key, 1), "rpi4")
    repo.add_bundle(fleet_bundle(tmp, key, 1, target="jetson-orin-nano"), "jetson-orin-nano")
    meta = repo.snapshot().signed.meta
    mine = repo.metadata / f"{meta['class-rpi4.json'].version}.class-rpi4.json"
    theirs = repo.metadata / f"{meta['class-jetson-orin-nano.json'].version}.class-jetson-orin-nano.json"
    mine.write_bytes(theirs.read_bytes())  # mix-and-match: jetson's signed listing served as rpi4's
    with pytest.raises(BundleError, match="UnsignedMetadataError|BadVersionNumberError"):
        client(repo, served, tmp).fetch("rpi4/app-v1.edgebundle")


def test_oversized_or_swapped_target_refused(repo):
    repo, served, key, tmp = repo
    path = repo.add_bundle(fleet_bundle(tmp, key, 1), "rpi4")
    stored = next((repo.targets / "rpi4").glob("*.app-v1.edgebundle"))
    original = stored.read_bytes()
    stored.write_bytes(original + b"\0" * (1 << 20))  # endless data: more bytes than the signed length
    with pytest.raises(BundleError, match="DownloadLengthMismatchError"):
        client(repo, served, tmp, "a").fetch(path)
    stored.write_bytes(bytes(reversed(original)))  # same length, other bytes
    with pytest.raises(BundleError, match="LengthOrHashMismatchError"):
        client(repo, served, tmp, "b").fetch(path)
    assert not list((tmp / "a" / "targets").iterdir()) and not list((tmp / "b" / "targets").iterdir())


def test_expired_root_refused(tmp_path):
    key, _ = keys(tmp_path)
    repo = Repository.init(tmp_path / "repo", root_expires=datetime.now(timezone.utc) - timedelta(days=1))
    repo.add_bundle(fleet_bundle(tmp_path, key, 1), "rpi4")
    served = Served(tmp_path / "repo")
    try:
        with pytest.raises(BundleError, match="ExpiredMetadataError"):
            client(repo, served, tmp_path).fetch("rpi4/app-v1.edgebundle")
    finally:
        served.close()


def test_root_key_rotation_followed_and_the_retired_key_refused(repo):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner

    repo, served, key, tmp = repo
    path = repo.add_bundle(fleet_bundle(tmp, key, 1), "rpi4")
    c = client(repo, served, tmp)
    c.fetch(path)
    assert repo.rotate_root("root") == 2
    assert repo.rotate_root("timestamp") == 3  # the timestamp key too: re-signed with the new one
    c.fetch(path)  # the device walks 1 → 2 → 3 with the root it was shipped with
    import json

    trusted = json.loads((tmp / "dev" / "metadata" / "root.json").read_bytes())
    assert trusted["signed"]["version"] == 3
    # whoever kept the retired root key signs a root of their own: the device, trusting v3, refuses it
    retired = CryptoSigner(load_pem_private_key((repo.keys / "root.pem.retired-1").read_bytes(), None))
    forged = repo._load("3.root.json")
    forged.signed.version = 4
    forged.sign(retired, append=False)
    forged.to_file(str(repo.metadata / "4.root.json"))
    with pytest.raises(BundleError, match="UnsignedMetadataError"):
        client(repo, served, tmp).fetch(path)


def test_expired_timestamp_refused_until_the_repository_is_refreshed(tmp_path):
    from edgepilot.fleet.repository import Expiry

    key, _ = keys(tmp_path)
    stale = Repository.init(tmp_path / "repo", expiry=Expiry(timestamp=-1))  # every publish already expired
    path = stale.add_bundle(fleet_bundle(tmp_path, key, 1), "rpi4")
    served = Served(tmp_path / "repo")
    try:
        with pytest.raises(BundleError, match="ExpiredMetadataError"):  # a frozen repository
            client(stale, served, tmp_path).fetch(path)
        fresh = Repository(tmp_path / "repo", Expiry(targets=1000))
        assert sorted(fresh.refresh()) == ["class-rpi4", "targets"]  # within half of 1,000 days of expiring
        assert client(fresh, served, tmp_path).fetch(path).is_file()
    finally:
        served.close()
