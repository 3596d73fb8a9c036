"""Where weights come from: toy models the pipeline builds, local directories, or the Hugging Face hub.

A hub id (`org/name`) is pinned by a revision (`models.<name>.revision`, `adapter_revision`) and fetched
once into the pipeline's hub cache (`hub.cache_dir`) by the `fetch_weights` rule; jobs then load it from
that cache without network. With `hub.offline: true` nothing is downloaded: every hub id must already be
in the cache. `check_weights` runs with the config check, before any job.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

HUB_DEFAULTS = {"offline": False, "cache_dir": "data/hub"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
log = logging.getLogger(__name__)
WEIGHT_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*"]  # no .bin/.gguf copies
MARKER = {"path": "config.json", "adapter": "adapter_config.json"}  # a usable local directory holds this


def hub_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    return {**HUB_DEFAULTS, **config.get("hub", {})}


def is_hub_id(ref: str, base_dir: str | Path = ".") -> bool:
    """`org/name` that is not a local path (a local directory of that name wins)."""
    return bool(HUB_ID.match(ref)) and not (Path(base_dir) / ref).exists()


def cached_snapshot(repo_id: str, revision: str, cache_dir: str | Path | None) -> Path | None:
    """The snapshot directory of `repo_id` at `revision` in the cache, or None; never uses the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except LocalEntryNotFoundError:
        return None


def fetch(repo_id: str, revision: str, cache_dir: str | Path | None, offline: bool) -> Path:
    """The local snapshot of `repo_id` at `revision`, downloaded into `cache_dir` unless cached or offline.

    A commit revision already in the cache is used as is (it cannot move); a branch or tag is
    re-resolved on the hub unless offline.
    """
    from huggingface_hub import snapshot_download

    cached = cached_snapshot(repo_id, revision, cache_dir)
    if cached is not None and (offline or COMMIT.match(revision)):
        return cached
    if offline:
        raise OSError(f"{repo_id}@{revision} is not in the hub cache {cache_dir} and hub.offline is true: "
                      f"set hub.offline: false to fetch it, or copy it there first "
                      f"(huggingface-cli download {repo_id} --revision {revision} --cache-dir {cache_dir})")
    return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=WEIGHT_FILES))


@dataclass(frozen=True)
class WeightSource:
    key: str  # config key, e.g. models.qwen3_4b_hacker.adapter
    ref: str  # path or hub id as configured
    kind: str  # toy | local | hub
    revision: str | None = None
    cached: Path | None = None  # hub: the snapshot already in the cache

    def describe(self, cache_dir: str) -> str:
        if self.kind == "toy":
            return f"{self.key}: {self.ref}, a toy model built by rule pretrain_toy_model"
        if self.kind == "local":
            return f"{self.key}: local directory {self.ref}"
        where = f"in the hub cache at {self.cached}" if self.cached else \
            f"fetched into {cache_dir} by rule fetch_weights on first use"
        return f"{self.key}: hub {self.ref}@{self.revision}, {where}"


def model_sources(name: str, model: Mapping[str, Any], config: Mapping[str, Any],
                  base_dir: str | Path) -> list[WeightSource]:
    """The base weights and (if any) the adapter of `models.<name>`."""
    cache_dir = str(Path(base_dir) / hub_settings(config)["cache_dir"])
    sources = []
    for part, rev_key in (("path", "revision"), ("adapter", "adapter_revision")):
        ref = model.get(part)
        key = f"models.{name}.{part}"
        if not ref:
            continue
        if part == "path" and model.get("toy"):
            sources.append(WeightSource(key, ref, "toy"))
        elif is_hub_id(ref, base_dir) and model.get(rev_key):
            rev = model[rev_key]
            sources.append(WeightSource(key, ref, "hub", rev, cached_snapshot(ref, rev, cache_dir)))
        elif is_hub_id(ref, base_dir):
            sources.append(WeightSource(key, ref, "hub"))
        else:
            sources.append(WeightSource(key, ref, "local"))
    return sources


def weight_sources(config: Mapping[str, Any], base_dir: str | Path = ".") -> list[WeightSource]:
    return [s for name, m in config["models"].items() for s in model_sources(name, m, config, base_dir)]


def check_weights(config: Mapping[str, Any], base_dir: str | Path = ".") -> list[str]:
    """Config errors for every model or adapter that no job could load (empty: all good)."""
    offline = hub_settings(config)["offline"]
    cache_dir = hub_settings(config)["cache_dir"]
    errors = []
    for s in weight_sources(config, base_dir):
        part = s.key.rsplit(".", 1)[1]
        if s.kind == "local":
            marker = Path(base_dir) / s.ref / MARKER[part]
            if not marker.exists():
                errors.append(f"  {s.key} = {s.ref!r}: no {MARKER[part]} there; give a local directory that has "
                              f"one, or a hub id org/name with "
                              f"{'revision' if part == 'path' else 'adapter_revision'}")
        elif s.kind == "hub" and s.revision is None:
            rev_key = "revision" if part == "path" else "adapter_revision"
            errors.append(f"  {s.key} = {s.ref!r}: no such local directory; as a hub id it needs "
                          f"models.{s.key.split('.')[1]}.{rev_key} (a commit from the hub page's history, "
                          f"or 'main' to follow the branch)")
        elif s.kind == "hub" and s.cached is None and offline:
            errors.append(f"  {s.key} = {s.ref!r}@{s.revision}: not in the hub cache {cache_dir} and "
                          f"hub.offline is true; set hub.offline: false to fetch it, or copy it into the cache "
                          f"(huggingface-cli download {s.ref} --revision {s.revision} --cache-dir {cache_dir})")
    return errors


def hub_models(config: Mapping[str, Any], base_dir: str | Path = ".") -> list[str]:
    """Names of models with a hub part (base or adapter): each has a fetch_weights job."""
    return sorted({s.key.split(".")[1] for s in weight_sources(config, base_dir) if s.kind == "hub"})


def fetch_model(model: Mapping[str, Any], cache_dir: str, offline: bool, out_path: str) -> dict[str, Any]:
    """Fetch a model's hub parts into `cache_dir`; write a manifest (ref, revision, commit, dir) to `out_path`."""
    from .io import write_json

    fetched = {}
    for part, rev_key in (("path", "revision"), ("adapter", "adapter_revision")):
        ref = model.get(part)
        if ref and is_hub_id(ref):
            snapshot = fetch(ref, model[rev_key], cache_dir, offline)
            fetched[part] = {"ref": ref, "revision": model[rev_key], "commit": snapshot.name, "dir": str(snapshot)}
            log.info("%s: %s@%s is commit %s in %s", part, ref, model[rev_key], snapshot.name, snapshot)
    write_json(out_path, fetched)
    return fetched


def local_dir(ref: str, revision: str | None, cache_dir: str | None, offline: bool) -> str:
    """A directory to load `ref` from: itself when local, else its hub snapshot (see `fetch`)."""
    if not is_hub_id(ref):
        return ref
    return str(fetch(ref, revision or "main", cache_dir, offline))
