"""Weights from the hub without network: a locally laid-out hub cache stands in for the hub."""

import json
import os
import subprocess
import sys

import huggingface_hub
import pytest
import torch
import yaml

from conftest import copy_tracked, make_hub_snapshot
from vhack import hub
from vhack.adapters import AdapterConfig, attach_adapter
from vhack.models import ModelSpec, load_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def cache(tmp_path, tiny_qwen3):
    """A hub cache holding the tiny model as `org/tiny` at COMMIT."""
    cache_dir = tmp_path / "hub"
    make_hub_snapshot(cache_dir, "org/tiny", tiny_qwen3, COMMIT)
    return cache_dir


@pytest.fixture
def no_downloads(monkeypatch):
    """Record snapshot_download calls; any that is allowed to download fails the test."""
    calls = []
    real = huggingface_hub.snapshot_download

    def guarded(*args, **kwargs):
        calls.append(kwargs)
        assert kwargs.get("local_files_only"), f"tried to download: {args} {kwargs}"
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", guarded)
    return calls


def config_with(models, cache_dir, offline=False):
    return {"models": models, "hub": {"offline": offline, "cache_dir": str(cache_dir)}}


def test_weight_sources_say_where_each_model_comes_from(cache, tmp_path, no_downloads):
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text("{}")
    config = config_with({
        "toy": {"path": "results/models/toy_student", "toy": True},
        "cached": {"path": "org/tiny", "revision": COMMIT, "adapter": str(lora)},
        "remote": {"path": "org/not-here", "revision": "main"},
    }, cache)
    described = [s.describe(str(cache)) for s in hub.weight_sources(config, tmp_path)]
    assert described[0] == "models.toy.path: results/models/toy_student, a toy model built by rule pretrain_toy_model"
    assert described[1].startswith(f"models.cached.path: hub org/tiny@{COMMIT}, in the hub cache at ")
    assert described[1].endswith(COMMIT)
    assert described[2] == f"models.cached.adapter: local directory {lora}"
    assert described[3] == f"models.remote.path: hub org/not-here@main, fetched into {cache} by rule fetch_weights on first use"
    assert hub.check_weights(config, tmp_path) == []
    assert hub.hub_models(config, tmp_path) == ["cached", "remote"]


def test_check_names_each_unloadable_model_and_the_knob(cache, tmp_path, no_downloads):
    (tmp_path / "empty_lora").mkdir()
    config = config_with({
        "gone": {"path": "org/not-here", "revision": "main"},
        "unpinned": {"path": "org/tiny"},
        "teacher": {"path": "org/tiny", "revision": COMMIT, "adapter": "empty_lora"},
        "missing": {"path": "models/deep/nowhere"},
    }, cache, offline=True)
    errors = "\n".join(hub.check_weights(config, tmp_path))
    assert "models.gone.path = 'org/not-here'@main: not in the hub cache" in errors
    assert "hub.offline is true" in errors
    assert "models.unpinned.path = 'org/tiny': no such local directory; as a hub id it needs models.unpinned.revision" in errors
    assert "models.teacher.adapter = 'empty_lora': no adapter_config.json there" in errors
    assert "models.missing.path = 'models/deep/nowhere': no config.json there" in errors
    assert len(errors.splitlines()) == 4


def test_offline_fetch_uses_the_cache_and_a_missing_id_names_the_switch(cache, tmp_path, no_downloads):
    out = tmp_path / "fetched" / "m.json"
    manifest = hub.fetch_model({"path": "org/tiny", "revision": "main"}, str(cache), offline=True, out_path=str(out))
    assert manifest["path"]["commit"] == COMMIT
    assert json.loads(out.read_text()) == manifest
    assert (hub.local_dir("org/tiny", "main", str(cache), offline=True)).endswith(COMMIT)
    with pytest.raises(OSError, match="hub.offline is true"):
        hub.fetch("org/other", "main", str(cache), offline=True)


def test_online_fetch_of_a_cached_commit_needs_no_network(cache, no_downloads):
    assert hub.fetch("org/tiny", COMMIT, str(cache), offline=False).name == COMMIT
    assert no_downloads and all(c["local_files_only"] for c in no_downloads)


def test_load_model_reads_base_and_lora_from_the_hub_cache(cache, tiny_qwen3, tmp_path, no_downloads):
    local, _ = load_model(ModelSpec(str(tiny_qwen3), dtype="float32", device="cpu"))
    adapter = attach_adapter(local, AdapterConfig(kind="lora", targets=("q_proj",)))
    torch.manual_seed(0)
    for view in adapter.flat_params().values():
        view.normal_(0, 0.05)
    adapter.save_peft(tmp_path / "lora")
    make_hub_snapshot(cache, "org/tiny-lora", tmp_path / "lora", "f" * 40)
    ids = torch.tensor([[5, 17, 42, 99]])
    with torch.no_grad():
        expected = local(ids).logits
    spec = ModelSpec("org/tiny", revision=COMMIT, adapter="org/tiny-lora", adapter_revision="main",
                     cache_dir=str(cache), dtype="float32", device="cpu")
    model, _ = load_model(spec)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected)


def test_fetch_weights_rule_fills_the_manifest_offline(cache, tmp_path):
    work = copy_tracked(tmp_path / "work")
    overlay = tmp_path / "hub.yaml"
    overlay.write_text(yaml.safe_dump({
        "models": {"hubbed": {"path": "org/tiny", "revision": COMMIT}},
        "hub": {"offline": True, "cache_dir": str(cache)},
    }))
    env = {**os.environ, "PYTHONPATH": str(work / "src"), "HF_HUB_OFFLINE": "1"}
    target = f"{cache}/fetched/hubbed.json"
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "config/config.yaml",
                           str(overlay), "--", target], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"models.hubbed.path: hub org/tiny@{COMMIT}, in the hub cache" in done.stderr
    assert json.loads((cache / "fetched" / "hubbed.json").read_text())["path"]["commit"] == COMMIT
