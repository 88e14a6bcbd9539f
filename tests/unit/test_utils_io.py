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


def test_check_output_file_and_folder_kinds(tmp_path: Path):
    from birdclef.errors import BirdclefError
    from birdclef.utils.io import check_output

    (tmp_path / "f.csv").write_text("old")
    assert check_output(tmp_path / "f.csv", "file") == tmp_path / "f.csv"  # an existing file is replaced later
    assert check_output(tmp_path / "new" / "deeper" / "x.csv", "file")  # parents are created later
    assert check_output(tmp_path, "folder") and check_output(tmp_path / "new_dir", "folder")
    with pytest.raises(BirdclefError, match="is a folder, not a file"):
        check_output(tmp_path, "file")
    with pytest.raises(BirdclefError, match="is an existing file"):
        check_output(tmp_path / "f.csv", "folder")
    with pytest.raises(BirdclefError, match="f.csv is a file, so nothing can be created under it"):
        check_output(tmp_path / "f.csv" / "x" / "y.csv", "file")
    with pytest.raises(BirdclefError, match=r"cannot write in /proc"):
        check_output("/proc/birdclef/x.csv", "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.csv"]  # the probe leaves nothing behind


def test_exclusive_lock_refuses_a_second_holder_and_is_freed(tmp_path: Path):
    from birdclef.errors import BirdclefError
    from birdclef.utils.io import exclusive_lock, lock_path

    out = tmp_path / "sub.csv"
    with exclusive_lock(out, "job") as lock:
        assert lock == lock_path(out) == tmp_path / ".sub.csv.lock" and lock.exists()
        with pytest.raises(BirdclefError, match=r"sub.csv: another job is writing it"):
            with exclusive_lock(out, "job"):
                pass
    assert not lock_path(out).exists()
    with exclusive_lock(out, "job"):
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path):
    import subprocess
    import sys

    out = tmp_path / "sub.csv"
    code = ("import os, sys; from birdclef.utils.io import exclusive_lock\n"
            "with exclusive_lock(sys.argv[1]):\n    os._exit(9)  # dies holding it, no clean-up\n")
    assert subprocess.run([sys.executable, "-c", code, str(out)]).returncode == 9
    from birdclef.utils.io import exclusive_lock, lock_path

    assert lock_path(out).exists()  # left behind, but not held
    with exclusive_lock(out):
        pass
