"""tracking: TensorBoard events and W&B offline runs during training, the MLflow export of finished runs."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from fixtures.synthetic_runs import write_seed_runs
from vhack.tracking import TrackingConfig, export_to_mlflow, open_tracker, read_scalars

STEPS = [{"step": s, "hack_s": 0.1 * s, "gt_s": 0.5, "cin": math.nan, "note": "text"} for s in range(3)]


def test_tensorboard_events_read_back(tmp_path):
    tracker = open_tracker(TrackingConfig(), tmp_path, "vanilla__s41", "vanilla", {"lr": 0.005})
    for metrics in STEPS:
        tracker.log_step(metrics["step"], metrics)
    tracker.close()
    scalars = read_scalars(tmp_path / "tensorboard")
    assert set(scalars["tag"]) == {"hack_s", "gt_s"}   # NaN and non-numbers are not logged
    hack = scalars[scalars.tag == "hack_s"].sort_values("step")
    assert hack["step"].tolist() == [0, 1, 2] and hack["value"].tolist() == pytest.approx([0.0, 0.1, 0.2])


def test_wandb_offline_run_directory_written(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")   # no network: the run is written for a later `wandb sync`
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = TrackingConfig(tensorboard=False, wandb={"enabled": True, "project": "vhack-test", "mode": "offline"})
    tracker = open_tracker(cfg, tmp_path, "vanilla__s41", "vanilla", {"lr": 0.005, "settings": {"mix": 0.5}})
    for metrics in STEPS:
        tracker.log_step(metrics["step"], metrics)
    tracker.close()
    wandb.teardown()   # what process exit does: the service flushes the record log (finish alone may not yet have)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    log = list(runs[0].glob("run-*.wandb"))   # the record log `wandb sync` uploads (protobuf records)
    assert len(log) == 1
    data = log[0].read_bytes()
    assert data.startswith(b":W&B") and b"vanilla__s41" in data and b"vhack-test" in data
    assert b"hack_s" in data and b"gt_s" in data and b"note" not in data and b"0.005" in data


def test_mlflow_export_reads_back_through_the_client(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    dirs = write_seed_runs(tmp_path / "runs")[0][:3]
    store = tmp_path / "mlflow"
    ids = export_to_mlflow(dirs, store)
    ids = export_to_mlflow(dirs, store)   # a re-export rebuilds the store: no duplicates
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("vhack")
    found = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in found) == sorted(d.name for d in dirs) == sorted(ids)
    run_dir = dirs[0]
    run = client.get_run(ids[run_dir.name])
    meta = json.loads((run_dir / "run.json").read_text())
    assert run.data.params["mix"] == str(meta["settings"]["mix"]) and run.data.params["seed"] == str(meta["seed"])
    assert json.loads(run.data.params["train_modes"]) == meta["settings"]["train_modes"]
    assert run.data.tags["vhack.arm"] == meta["arm"] and run.info.status == "FINISHED"
    assert run.data.tags["vhack.rebuild"] == meta["invocation"]["rebuild"]
    steps = pd.read_parquet(run_dir / "metrics.parquet")
    history = sorted(client.get_metric_history(run.info.run_id, "hack_s"), key=lambda m: m.step)
    assert [m.step for m in history] == steps["step"].tolist()
    assert [m.value for m in history] == pytest.approx(steps["hack_s"].tolist())
    assert len(client.get_metric_history(run.info.run_id, "basis_overlap")) == steps["basis_overlap"].notna().sum()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"run.json", "metrics.parquet", "eval.parquet", "samples.parquet"} <= artifacts
