"""Live curves in the trackers researchers already use, and an export of finished runs to MLflow.

During training every step's metrics go to a TensorBoard event file per run
(results/runs/{run}/tensorboard/, written by the light `tensorboardX`; `tensorboard --logdir
results/runs` shows every run side by side) and, when configured, to Weights & Biases. After
training, `export_to_mlflow` writes every finished run (params, per-step metrics, artifacts) into
a local MLflow file store. The `tracking:` config section switches them; it changes no result,
so it is not part of any rule's params.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
MLFLOW_EXPERIMENT = "vhack"
ARTIFACT_SKIP = {"checkpoint", TENSORBOARD_DIR, WANDB_DIR}


@dataclass(frozen=True)
class TrackingConfig:
    tensorboard: bool = True
    wandb: Mapping[str, Any] = field(default_factory=dict)   # enabled, project, entity, mode, tags

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> TrackingConfig:
        cfg = cfg or {}
        return cls(tensorboard=cfg.get("tensorboard", True), wandb=dict(cfg.get("wandb") or {}))


class Tracker:
    """Per-step metrics to every configured writer; numbers only (NaNs and strings are skipped)."""

    def __init__(self, writers: Sequence[Any]):
        self.writers = list(writers)

    def log_step(self, step: int, metrics: Mapping[str, Any]) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if k != "step" and _is_number(v)}
        for writer in self.writers:
            writer.log(step, scalars)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


class TensorBoardWriter:
    def __init__(self, logdir: Path, run: str, params: Mapping[str, Any]):
        from tensorboardX import SummaryWriter
        shutil.rmtree(logdir, ignore_errors=True)   # a rerun starts a fresh curve, not a second one on top
        self.writer = SummaryWriter(logdir=str(logdir), flush_secs=10)
        self.writer.add_text("run", f"`{run}`\n\n```json\n{json.dumps(params, indent=1, default=str)}\n```", 0)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbWriter:
    def __init__(self, out_dir: Path, run: str, group: str, params: Mapping[str, Any], cfg: Mapping[str, Any]):
        try:
            import wandb
        except ImportError:
            raise ImportError("tracking.wandb.enabled is true but wandb is not installed: "
                              "pip install -e '.[trackers]' (or set tracking.wandb.enabled: false)") from None
        self.run = wandb.init(project=cfg.get("project", "vhack"), entity=cfg.get("entity"), name=run, group=group,
                              tags=list(cfg.get("tags", [])), config=dict(params), dir=str(out_dir),
                              mode=os.environ.get("WANDB_MODE") or cfg.get("mode", "online"),  # env wins
                              reinit="create_new")

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        self.run.finish()


def open_tracker(cfg: TrackingConfig, out_dir: str | os.PathLike, run: str, group: str,
                 params: Mapping[str, Any]) -> Tracker:
    """The writers `cfg` asks for, opened on run directory `out_dir`."""
    out_dir = Path(out_dir)
    writers: list[Any] = []
    if cfg.tensorboard:
        writers.append(TensorBoardWriter(out_dir / TENSORBOARD_DIR, run, params))
    if cfg.wandb.get("enabled"):
        writers.append(WandbWriter(out_dir, run, group, params, cfg.wandb))
    return Tracker(writers)


# ---------------------------------------------------------------- reading TensorBoard events back

def read_scalars(logdir: str | os.PathLike) -> pd.DataFrame:
    """Every scalar in the event files under `logdir`: columns tag, step, value (TFRecord framing, no TF)."""
    from tensorboardX.proto.event_pb2 import Event
    rows = []
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        for record in _tfrecords(path.read_bytes()):
            event = Event.FromString(record)
            rows += [(v.tag, event.step, v.simple_value) for v in event.summary.value if v.HasField("simple_value")]
    return pd.DataFrame(rows, columns=["tag", "step", "value"])


def _tfrecords(data: bytes):
    """Records of a TFRecord file: [uint64 length][uint32 crc][data][uint32 crc], little endian."""
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        yield data[pos + 12:pos + 12 + length]
        pos += 12 + length + 4


# ---------------------------------------------------------------- MLflow export

def export_to_mlflow(run_dirs: Sequence[str | os.PathLike], store_dir: str | os.PathLike,
                     experiment: str = MLFLOW_EXPERIMENT) -> dict[str, str]:
    """Write every run into a fresh MLflow file store at `store_dir`; returns run name -> MLflow run id.

    The store is rebuilt from scratch, so a re-export never duplicates runs. Params are the resolved
    settings (plus arm and seed), metrics every step of metrics.parquet, artifacts every file of the
    run directory except checkpoints and tracker logs.
    """
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")   # MLflow 3 keeps file stores behind this switch
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # a local export sends nothing anywhere
    try:
        from mlflow.store.tracking.file_store import FileStore
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ImportError("the MLflow export needs mlflow: pip install -e '.[trackers]'") from None
    store = Path(store_dir).absolute()
    shutil.rmtree(store, ignore_errors=True)
    FileStore(str(store))   # lays out a fresh store (MLflow caches its store object per URI across calls)
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment_id = client.create_experiment(experiment)
    return {Path(d).name: _export_run(client, experiment_id, Path(d)) for d in sorted(run_dirs)}


def _export_run(client, experiment_id: str, run_dir: Path) -> str:
    from mlflow.entities import Metric, Param, RunTag
    meta = json.loads((run_dir / "run.json").read_text())
    start, end = (_millis(meta.get(k)) for k in ("started_at", "finished_at"))
    tags = {"vhack.run": meta["run"], "vhack.arm": meta["arm"], "vhack.tags": ",".join(meta.get("tags") or []),
            "mlflow.source.git.commit": (meta.get("git") or {}).get("commit") or "",
            "vhack.rebuild": (meta.get("invocation") or {}).get("rebuild") or ""}
    run = client.create_run(experiment_id, start_time=start, tags=tags, run_name=meta["run"])
    run_id = run.info.run_id
    params = [Param(k, _param_value(v)) for k, v in sorted({**meta["settings"], "arm": meta["arm"],
                                                            "seed": meta["seed"]}.items())]
    steps = pd.read_parquet(run_dir / "metrics.parquet")
    metrics = [Metric(key, float(value), start or 0, int(row["step"])) for row in steps.to_dict("records")
               for key, value in row.items() if key != "step" and _is_number(value)]
    client.log_batch(run_id, params=params[:100], tags=[RunTag("vhack.null_cin", str(meta.get("null_cin")))])
    for i in range(100, len(params), 100):   # MLflow's log_batch takes 100 params and 1000 metrics at a time
        client.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    for path in sorted(run_dir.iterdir()):
        if path.name not in ARTIFACT_SKIP and not path.name.startswith("."):
            if path.is_dir():
                client.log_artifacts(run_id, str(path), path.name)
            else:
                client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED", end_time=end)
    return run_id


def _millis(stamp: str | None) -> int | None:
    return int(pd.Timestamp(stamp).timestamp() * 1000) if stamp else None


def _param_value(value: Any) -> str:
    return (json.dumps(value, sort_keys=True) if isinstance(value, (list, dict, tuple)) else str(value))[:6000]


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and not math.isnan(value)
