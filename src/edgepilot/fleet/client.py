"""The agent's side of the update repository: fetch a bundle for this device's class through `tuf.ngclient`."""
from __future__ import annotations

import logging
from pathlib import Path

from edgepilot.errors import BundleError
from edgepilot.optional import require

log = logging.getLogger(__name__)


class RepoClient:
    """Trusted metadata cached under `cache`; the first trust is `root` (the repository's 1.root.json)."""

    def __init__(self, cache: Path, base_url: str, root: bytes, device_class: str) -> None:
        require("tuf", "deploy")
        self.cache = Path(cache)
        self.base_url = base_url.rstrip("/")
        self.first_root = root
        self.device_class = device_class
        (self.cache / "metadata").mkdir(parents=True, exist_ok=True)
        (self.cache / "targets").mkdir(parents=True, exist_ok=True)

    def _updater(self):
        from tuf.ngclient import Updater

        local = self.cache / "metadata" / "root.json"
        # the newest root this device already trusts, so a rotation is taken once and never walked back
        bootstrap = local.read_bytes() if local.is_file() else self.first_root
        return Updater(str(self.cache / "metadata"), f"{self.base_url}/metadata/",
                       str(self.cache / "targets"), f"{self.base_url}/targets/", bootstrap=bootstrap)

    def refresh(self) -> None:
        """Update the top-level metadata (root rotations, timestamp, snapshot, targets); BundleError if refused."""
        self._call(lambda u: u.refresh())

    def fetch(self, target: str) -> Path:
        """Download `target` (e.g. rpi5/app-v3.edgebundle) after the metadata checks; its length and sha256 are
        verified against the signed metadata before the file is kept."""
        if not target.startswith(f"{self.device_class}/") or ".." in target:
            raise BundleError(f"target {target!r} is not for this device's class {self.device_class!r}")

        def get(u):
            info = u.get_targetinfo(target)
            if info is None:
                raise BundleError(f"the repository does not list {target!r} for class {self.device_class!r}",
                                  hint="publish it with `edgepilot fleet rollout` (it adds the bundle)")
            return Path(u.find_cached_target(info) or u.download_target(info))

        return self._call(get)

    def _call(self, fn):
        from tuf.api import exceptions as tx

        try:
            return fn(self._updater())
        except (tx.RepositoryError, tx.DownloadError) as e:
            raise BundleError(f"the update repository was refused: {type(e).__name__}: {e}",
                              hint="the metadata is stale, replayed, tampered with or signed by a retired key") from e
        except (OSError, ValueError) as e:
            raise BundleError(f"the update repository cannot be read: {type(e).__name__}: {e}") from e
