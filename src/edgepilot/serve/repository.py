"""The model repository: one folder per model, numbered version folders, an optional config.yaml; load, swap, unload.

    models/
      digits/
        config.yaml        engine, threads, instances, max_batch, max_delay_ms, warmup, versions ...
        1/model.onnx
        2/model.tflite     a new version beside the old: `load` swaps to it without failing requests in flight
"""
from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgepilot.config import load_yaml
from edgepilot.errors import ConfigError, EdgepilotError, ModelError, NotFoundError
from edgepilot.model import Model
from edgepilot.serve.served import ServedVersion

log = logging.getLogger(__name__)
CONFIG_FILE = "config.yaml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COMPANION = {".bin"}  # data files beside an OpenVINO .xml or an ncnn .param, never models themselves


class ServedModelConfig(BaseModel):
    """A model's config.yaml: every field optional."""

    model_config = ConfigDict(extra="forbid")
    engine: str | None = Field(None, description="default: the first available engine that runs the format")
    threads: int | None = Field(None, ge=1, description="threads per instance; default: the cores / instances")
    instances: int = Field(1, ge=1, le=64, description="sessions run in parallel, one worker thread each")
    max_batch: int = Field(8, ge=0, description="samples of concurrent requests batched into one inference; "
                                               "1: no dynamic batching; 0: the model has no batch dimension, "
                                               "each request runs whole (found at load when its outputs do "
                                               "not follow the inputs' first dimension)")
    # 0.5 ms, not the pipeline's 2: clients waiting on their answers send the next request only after it, so a
    # longer window mostly idles (bench/serve.py: batching x2.2 at 8 clients with 0.5 ms, x1.3 with 2 ms)
    max_delay_ms: float = Field(0.5, ge=0, description="how long a partial batch waits for more requests")
    max_queue: int = Field(256, ge=1, description="samples waiting for inference before requests wait too")
    warmup: int = Field(1, ge=0, description="inferences run on each instance at load")
    versions: Literal["latest", "all"] | list[int] = Field(
        "latest", description="which version folders to serve: the highest, all, or the listed numbers")
    reject_nonfinite: bool = Field(True, description="answer 400 to float inputs holding NaN or Inf")
    spin_wait: bool | Literal["auto"] = Field("auto", description="idle model threads spin (onnxruntime); auto: "
                                                                 "off for a model under 0.25 ms whose instances' "
                                                                 "threads take every core (the event loop's too)")
    inline: bool | Literal["auto"] = Field("auto", description="run one-sample requests on the event loop, not on "
                                                              "a worker thread (max_batch 1, one instance); auto: "
                                                              "fixed-size inputs and an inference under 1.5 ms "
                                                              "(0.25 ms if its idle threads sleep)")


@dataclass
class ModelState:
    name: str
    state: str  # READY | UNAVAILABLE | LOADING
    reason: str = ""
    versions: dict[int, ServedVersion] | None = None


class Repository:
    """The models of one folder, served by name and version. Thread-safe: loads run in worker threads."""

    def __init__(self, root: str | Path | None, metrics=None) -> None:
        """`root` None: no folder, no models (a pipeline's server that only streams)."""
        self.root = Path(root) if root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise ConfigError(f"{self.root}: not a folder", hint="give --models a folder with one folder per model")
        self.metrics = metrics
        self._models: dict[str, ModelState] = {}
        self._lock = threading.Lock()  # guards _models
        self._load_lock = threading.Lock()  # one load or unload at a time

    def names(self) -> list[str]:
        """Model folders on disk, and models still loaded whose folder went away."""
        found = {p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name)} if self.root else set()
        with self._lock:
            return sorted(found | set(self._models))

    def load_all(self) -> None:
        for name in self.names():
            self.load(name)

    def ready(self) -> bool:
        with self._lock:
            return all(m.state == "READY" for m in self._models.values())

    def index(self) -> list[dict]:
        with self._lock:
            states = dict(self._models)
        out = []
        for name in self.names():
            m = states.get(name)
            if m is None:
                out.append({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"})
            elif m.versions:
                out += [{"name": name, "version": str(v), "state": m.state, "reason": m.reason}
                        for v in sorted(m.versions)]
            else:
                out.append({"name": name, "state": m.state, "reason": m.reason})
        return out

    def get(self, name: str, version: str | None = None) -> ServedVersion:
        """The served version (the highest when none is named); NotFoundError says what exists."""
        with self._lock:
            return self._get(name, version)

    @contextmanager
    def use(self, name: str, version: str | None = None) -> Iterator[ServedVersion]:
        """The served version, held for one request: a swap or unload retires it only after the block ends."""
        with self._lock:  # taken under the lock that swaps versions, so a retired version is never handed out
            served = self._get(name, version)
            served.acquire()
        try:
            yield served
        finally:
            served.release()

    def _get(self, name: str, version: str | None) -> ServedVersion:
        m = self._models.get(name)
        if m is None or not m.versions:
            why = f" ({m.reason})" if m is not None and m.reason else ""
            served = sorted(n for n, m in self._models.items() if m.versions)
            raise NotFoundError(f"unknown model {name!r}{why}" if m is None else f"model {name!r} is not ready{why}",
                                hint=f"served: {', '.join(served) or 'none'}")
        if version in (None, ""):
            return m.versions[max(m.versions)]
        if not version.isdigit() or int(version) not in m.versions:
            raise NotFoundError(f"model {name!r} has no version {version!r}",
                                hint=f"served versions: {', '.join(map(str, sorted(m.versions)))}")
        return m.versions[int(version)]

    def versions(self, name: str) -> list[ServedVersion]:
        self.get(name)
        with self._lock:
            return [v for _, v in sorted(self._models[name].versions.items())]

    def served_names(self) -> list[str]:
        with self._lock:
            return sorted(n for n, m in self._models.items() if m.versions)

    def load(self, name: str) -> None:
        """(Re)load a model's versions beside those served, swap them in, then retire the old ones once their
        requests have finished. A failed load leaves what was served serving, and says why in the index."""
        if not _NAME.match(name):
            raise NotFoundError(f"unknown model {name!r}")
        with self._load_lock:
            folder = self.root / name if self.root else None
            if folder is None or not folder.is_dir():
                raise NotFoundError(f"no model folder {name!r} in {self.root}",
                                    hint=f"folders: {', '.join(self.names()) or 'none'}")
            with self._lock:
                old = self._models.get(name)
                self._models[name] = ModelState(name, "LOADING", versions=old.versions if old else None)
            try:
                new = self._open_versions(folder)
            except EdgepilotError as e:
                log.warning("model %s: %s", name, e)
                with self._lock:
                    keep = old.versions if old else None
                    self._models[name] = ModelState(name, "READY" if keep else "UNAVAILABLE", str(e), keep)
                raise
            self._install(name, new)
            log.info("model %s: serving version(s) %s", name, ", ".join(map(str, sorted(new))))

    def put(self, name: str, served: ServedVersion) -> None:
        """Serve a version loaded elsewhere (a running pipeline's model) as `name`'s only one, swapped in as `load`
        swaps: requests already holding the old version finish on it, then it is retired."""
        if not _NAME.match(name):
            raise ConfigError(f"cannot serve a model named {name!r}")
        with self._load_lock:
            self._install(name, {served.version: served})
        log.info("model %s: serving version %d", name, served.version)

    def _install(self, name: str, versions: dict[int, ServedVersion]) -> None:
        """The swap (under _load_lock): new requests get `versions` from here on; the replaced ones are retired
        once the requests that hold them have ended."""
        with self._lock:
            old = self._models.get(name)
            self._models[name] = ModelState(name, "READY", versions=versions)
        self._retire(old)

    def unload(self, name: str) -> None:
        with self._load_lock:
            with self._lock:
                old = self._models.pop(name, None)
            if old is None:
                raise NotFoundError(f"model {name!r} is not loaded")
            self._retire(old)
            log.info("model %s: unloaded", name)

    def close(self) -> None:
        for name in list(self._models):
            self.unload(name)

    def _retire(self, state: ModelState | None) -> None:
        for v in (state.versions or {}).values() if state else ():
            v.retire()

    def _open_versions(self, folder: Path) -> dict[int, ServedVersion]:
        cfg_path = folder / CONFIG_FILE
        cfg = load_yaml(cfg_path, ServedModelConfig) if cfg_path.exists() else ServedModelConfig()
        numbers = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
        if not numbers:
            raise ModelError(f"{folder}: no version folders", hint=f"put the model file in {folder}/1/")
        if cfg.versions == "latest":
            chosen = numbers[-1:]
        elif cfg.versions == "all":
            chosen = numbers
        else:
            missing = sorted(set(cfg.versions) - set(numbers))
            if missing:
                raise ConfigError(f"{cfg_path}: versions: no folder for version(s) {missing}",
                                  hint=f"version folders: {numbers}")
            chosen = sorted(cfg.versions)
        opened: dict[int, ServedVersion] = {}
        try:
            for number in chosen:
                model = Model.load(_model_file(folder / str(number)))
                opened[number] = ServedVersion(
                    folder.name, number, model, engine=cfg.engine, threads=cfg.threads, instances=cfg.instances,
                    max_batch=cfg.max_batch, max_delay_ms=cfg.max_delay_ms, max_queue=cfg.max_queue,
                    warmup=cfg.warmup, reject_nonfinite=cfg.reject_nonfinite, spin_wait=cfg.spin_wait,
                    inline=cfg.inline, metrics=self.metrics)
        except Exception as e:
            for v in opened.values():
                v.retire()
            if isinstance(e, EdgepilotError):
                raise
            raise ModelError(f"{folder}: cannot load ({type(e).__name__}: {e})") from e
        return opened


def _model_file(folder: Path) -> Path:
    """The one model in a version folder: a file (or a SavedModel folder), ignoring data files beside it."""
    candidates = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")
                  and (p.is_file() and p.suffix.lower() not in _COMPANION or (p / "saved_model.pb").exists())]
    if len(candidates) != 1:
        raise ModelError(f"{folder}: expected one model file, found {len(candidates)}"
                         + (f" ({', '.join(p.name for p in candidates)})" if candidates else ""))
    return candidates[0]
