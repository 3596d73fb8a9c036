"""Atomic writes leave files with the usual mode of a new file, not mkstemp's private 0600."""

import os
import stat

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from vhack.io import atomic_path, write_json, write_parquet, write_text


@pytest.fixture
def umask():
    def set_mask(mask):
        os.umask(mask)
    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_outputs_get_the_umask_mode(tmp_path, umask, mask, expected):
    umask(mask)
    write_text(tmp_path / "a.md", "x")
    write_json(tmp_path / "run.json", {"a": 1})
    write_parquet(tmp_path / "m.parquet", pd.DataFrame({"a": [1]}))
    with atomic_path(tmp_path / "t.safetensors") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))
    for name in ("a.md", "run.json", "m.parquet", "t.safetensors"):
        assert mode(tmp_path / name) == expected, name


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
