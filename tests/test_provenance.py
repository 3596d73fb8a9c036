"""provenance: the snakemake command line and a command rebuilding one run reach the job's run.json."""

from __future__ import annotations

import json
import shlex

from vhack.provenance import INVOCATION_ENV, export_invocation, invocation


def test_invocation_records_the_command_line_and_a_rebuild_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(INVOCATION_ENV, "")   # restored (removed) after the test
    monkeypatch.delenv(INVOCATION_ENV)
    argv = ["/venv/lib/python3.11/site-packages/snakemake/__main__.py", "--cores", "8", "--configfile",
            "config/config.yaml", "presets/fast.yaml", "--config", "seed_limit=2", "--", "results/q2_table.md"]
    export_invocation(argv, [tmp_path / "config/config.yaml", tmp_path / "presets/fast.yaml", "/etc/x.yaml"],
                      ["seed_limit=2", "train={'steps': 3}"])
    export_invocation(["snakemake", "--target-jobs", "train:run=x"], [], [])   # a cluster job's own snakemake
    out = invocation("rule train", ["results/runs/vanilla__s41/metrics.parquet"])
    assert out["command"] == shlex.join(["snakemake", *argv[1:]])
    assert out["configfiles"] == ["config/config.yaml", "presets/fast.yaml", "/etc/x.yaml"]
    assert shlex.split(out["rebuild"]) == [
        "snakemake", "--cores", "8", "--configfile", "config/config.yaml", "presets/fast.yaml", "/etc/x.yaml",
        "--config", "seed_limit=2", "train={'steps': 3}", "--force", "--", "results/runs/vanilla__s41/metrics.parquet"]
    assert json.loads(json.dumps(out)) == out   # run.json stores it as is


def test_invocation_outside_snakemake_is_the_argv(monkeypatch):
    monkeypatch.setenv(INVOCATION_ENV, "")   # restored (removed) after the test
    monkeypatch.delenv(INVOCATION_ENV)
    monkeypatch.setattr("sys.argv", ["python", "-m", "vhack.train", "--run", "x"])
    assert invocation(None, ["a"]) == {"argv": ["python", "-m", "vhack.train", "--run", "x"], "snakemake": None}
