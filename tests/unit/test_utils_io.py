from pathlib import Path

import pandas as pd
import pytest

from birdclef.utils.io import atomic_path, write_csv_atomic, write_json_atomic


def test_atomic_write_replaces_whole_file(tmp_path: Path):
    path = tmp_path / "out" / "sub.csv"
    write_csv_atomic(pd.DataFrame({"a": [1, 2]}), path)
    assert pd.read_csv(path)["a"].tolist() == [1, 2]
    assert [p.name for p in path.parent.iterdir()] == ["sub.csv"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path):
    path = tmp_path / "x.json"
    write_json_atomic({"v": 1}, path)
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text().strip().endswith("}") and '"v": 1' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_atomic_files_get_umask_permissions(tmp_path: Path):
    import os
    import stat

    path = write_json_atomic({"v": 1}, tmp_path / "p.json")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
