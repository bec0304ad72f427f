"""Faults around a run: a second run on the folder, changed outputs, kill leftovers, full and
read-only disks. Real processes, real mounts (skipped where mounting is not allowed)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine

from pipeline.cli import main
from pipeline.maps.cog import write_cog
from pipeline.run.execute import run_workflow
from pipeline.run.lock import LOCK_NAME
from pipeline.workflow.load import load_workflow
from timesenclip.common.atomic import atomic_path, write_text_atomic
from timesenclip.common.files import file_sha256

REPO = Path(__file__).resolve().parents[1]
MAPS = ("land_cover.tif", "custom.tif", "land_cover_confidence.tif", "valid_months.tif")


@pytest.fixture
def mount_tmpfs(tmp_path):
    """Factory: a fresh tmpfs of the given size (and options) under tmp_path, unmounted after."""
    mounted: list[Path] = []

    def mount(size: int, *options: str) -> Path:
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        opts = ",".join([f"size={size}", *options])
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True
        )
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def assert_same_maps(got: Path, want: Path) -> None:
    for name in MAPS:
        with rasterio.open(got / name) as a, rasterio.open(want / name) as b:
            np.testing.assert_array_equal(a.read(1), b.read(1))
            assert a.transform == b.transform


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name or ".scratch-" in p.name]


# --- the atomic writers on real full and read-only disks -------------------------------------


def test_a_full_disk_is_named_and_leaves_no_temporary(mount_tmpfs):
    disk = mount_tmpfs(256 * 1024)
    (disk / "a.json").write_text("old")
    with pytest.raises(OSError) as info:
        write_text_atomic(disk / "a.json", "x" * 1_000_000)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(disk / "a.json")
    with pytest.raises(OSError) as info:  # GDAL's own write error, put down to the full disk
        write_cog(
            disk / "m.tif",
            np.random.default_rng(0).integers(0, 255, (1024, 1024), dtype=np.uint8),
            transform=Affine(10, 0, 500000, 0, -10, 4800000),
            crs="EPSG:32631",
            nodata=0,
        )
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(disk / "m.tif")
    with pytest.raises(ValueError, match="a bug"), atomic_path(disk / "b.json"):
        raise ValueError("a bug")  # not put down to the disk, however full
    assert sorted(p.name for p in disk.iterdir()) == ["a.json"]
    assert (disk / "a.json").read_text() == "old"


def test_a_read_only_disk_is_named(mount_tmpfs):
    disk = mount_tmpfs(1024 * 1024, "ro")
    with pytest.raises(OSError) as info:
        write_text_atomic(disk / "a.json", "{}")
    assert info.value.errno == errno.EROFS and info.value.filename == str(disk / "a.json")


# --- runs ------------------------------------------------------------------------------------


def workflow_file(folder: Path, workflow: dict, out: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        **workflow,
        "outputs": {**workflow["outputs"], "dir": str(out)},
        "dask": {"n_workers": 1, "threads_per_worker": 1},
    }
    path = folder / "workflow.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli_run(path: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(path), "--quiet"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.fixture(scope="module")
def finished(demo_inputs):
    """A run in one process, and a second on the same folder started while the first works."""
    root, workflow, _ = demo_inputs
    out = root / "first" / "maps"
    path = workflow_file(root / "first", workflow, out)
    first = cli_run(path)
    deadline = time.monotonic() + 120
    while not (out / LOCK_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before the second started"
    second = cli_run(path)
    second_err = second.communicate(timeout=300)[1]
    first_err = first.communicate(timeout=600)[1]
    assert first.returncode == 0, first_err
    return out / "synthetic", path, first.pid, (second.returncode, second_err)


def test_a_second_run_on_the_folder_fails_at_once_naming_the_first(finished):
    region, _, first_pid, (code, err) = finished
    assert code == 2 and "Traceback" not in err
    assert f"is being written by the run with pid {first_pid} on host" in err
    assert (region / "provenance.json").exists()  # the first run was not disturbed
    assert not (region.parent / LOCK_NAME).exists() and not temporaries(region.parent)


def test_provenance_records_size_and_sha256_of_every_output(finished):
    region = finished[0]
    outputs = json.loads((region / "provenance.json").read_text())["outputs"]
    names = {*MAPS, "custom_confidence.tif", "land_cover.qml", "land_cover.json", "custom.json"}
    assert names <= set(outputs)
    assert any(name.startswith("embeddings.zarr/") for name in outputs)
    on_disk = {
        p.relative_to(region).as_posix()
        for p in region.rglob("*")
        if p.is_file() and p.name != "provenance.json"
    }
    assert set(outputs) == on_disk
    for name, entry in outputs.items():
        assert entry["size"] == (region / name).stat().st_size
        assert entry["sha256"] == file_sha256(region / name)


def copy_of(finished, tmp_path) -> tuple[Path, Path]:
    """The finished outputs copied (times kept) and a workflow writing to the copy."""
    region, path, _, _ = finished
    out = tmp_path / "maps"
    shutil.copytree(region.parent, out)
    return out / region.name, workflow_file(tmp_path, yaml.safe_load(path.read_text()), out)


def test_a_rerun_redoes_a_region_whose_files_changed(finished, tmp_path):
    region, path = copy_of(finished, tmp_path)
    os.utime(region / "custom.tif")  # touched, same content: still complete
    assert run_workflow(load_workflow(path), progress=False).tiles == 0
    with open(region / "land_cover.tif", "r+b") as f:
        f.truncate(1000)
    (region / "custom.qml").unlink()
    summary = run_workflow(load_workflow(path), progress=False)
    assert summary.tiles == 4  # redone, not "already done"
    assert_same_maps(region, finished[0])
    assert (region / "custom.qml").read_bytes() == (finished[0] / "custom.qml").read_bytes()
    # same content, rewritten at another time: taken as complete once its hash matches
    (region / "custom.qml").write_bytes((region / "custom.qml").read_bytes())
    assert run_workflow(load_workflow(path), progress=False).tiles == 0


def test_leftovers_of_a_kill_during_the_clean_up_are_removed(finished, tmp_path):
    region, path = copy_of(finished, tmp_path)
    pieces = region / ".tiles" / "0123456789abcdef" / "tile"
    pieces.mkdir(parents=True)
    (pieces / "land_cover.tif").write_bytes(b"piece")
    (region / ".land_cover.tif.tmp-0123456789ab").write_bytes(b"half")
    summary = run_workflow(load_workflow(path), progress=False)
    assert summary.tiles == 0 and summary.tiles_skipped == 4
    assert not (region / ".tiles").exists() and not temporaries(region)


def test_a_full_disk_ends_with_one_paragraph_and_the_rerun_resumes(
    demo_inputs, finished, mount_tmpfs, tmp_path, capsys
):
    _, workflow, _ = demo_inputs
    need = sum(p.stat().st_size for p in finished[0].rglob("*") if p.is_file())
    disk = mount_tmpfs(need // 3)
    path = workflow_file(tmp_path, workflow, disk / "maps")
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error: No space left on device: " + str(disk / "maps") in err, err
    assert "free space on that disk" in err and "Traceback" not in err
    assert not (disk / "maps" / "synthetic" / "provenance.json").exists()
    assert not temporaries(disk) and not (disk / "maps" / LOCK_NAME).exists()
    remount(disk, f"size={need * 8}")
    assert main(["run", str(path), "--quiet"]) == 0
    assert_same_maps(disk / "maps" / "synthetic", finished[0])


def test_read_only_and_missing_folders_end_with_one_paragraph(
    demo_inputs, mount_tmpfs, tmp_path, capsys
):
    _, workflow, _ = demo_inputs
    disk = mount_tmpfs(1024 * 1024, "ro")
    assert main(["run", str(workflow_file(tmp_path / "a", workflow, disk / "maps"))]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Read-only file system: {disk / 'maps'}. To fix it, choose")
    assert "Traceback" not in err
    assert main(["run", str(workflow_file(tmp_path / "c", workflow, disk))]) == 2  # it exists
    assert capsys.readouterr().err.startswith(f"error: Read-only file system: {disk}. To fix")
    (tmp_path / "file").write_text("not a folder")
    bad = workflow_file(tmp_path / "b", workflow, tmp_path / "file" / "maps")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Not a directory" in err and "a part of it is a file" in err
