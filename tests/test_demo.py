"""``timesenclip demo``: where it works, and when a rerun reuses or redoes it (and says why)."""

from __future__ import annotations

import json

import pytest

from fixtures.demo import demo_folder, demo_stamp, earlier_demo, run_demo
from timesenclip.common.errors import TimeSenCLIPError


def test_default_folder_is_in_the_cache_not_the_working_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TIMESENCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert demo_folder() == tmp_path / "cache" / "timesenclip-demo"
    assert demo_folder(tmp_path / "mine") == tmp_path / "mine"


def _demo(root, stamp=None, finished=False):
    root.mkdir(parents=True, exist_ok=True)
    (root / "demo.json").write_text(json.dumps(stamp or demo_stamp()))
    if finished:
        (root / "out" / "synthetic").mkdir(parents=True)
        (root / "out" / "synthetic" / "provenance.json").write_text("{}")
    return root


def test_what_an_earlier_demo_means(tmp_path):
    assert earlier_demo(tmp_path / "new") == (
        False,
        f"no earlier demo in {tmp_path / 'new'}: running it",
    )
    reuse, why = earlier_demo(_demo(tmp_path / "done", finished=True))
    assert reuse and "complete and made by this version: reusing it" in why
    reuse, why = earlier_demo(_demo(tmp_path / "stopped"))
    assert not reuse and "did not finish: redoing it" in why
    old = {**demo_stamp(), "version": "0.0.1"}
    reuse, why = earlier_demo(_demo(tmp_path / "old", stamp=old, finished=True))
    assert not reuse and "made by timesenclip 0.0.1" in why and "redoing it" in why


def test_a_folder_of_other_files_is_never_used(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(TimeSenCLIPError, match="not empty and holds no earlier demo"):
        run_demo(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_demo_runs_then_a_rerun_reuses_it(tmp_path, capsys):
    root = tmp_path / "demo"
    maps = run_demo(root, progress=False)
    out = capsys.readouterr().out
    assert out.startswith(f"No earlier demo in {root}: running it.")
    assert f"Outputs are in {maps}" in out and maps == root / "out"
    land_cover = maps / "synthetic" / "land_cover.tif"
    written = land_cover.stat().st_mtime_ns
    assert sorted(p.name for p in root.iterdir()) == ["data", "demo.json", "out", "workflow.yaml"]

    assert run_demo(root, progress=False) == maps
    out = capsys.readouterr().out
    assert out.startswith(f"The demo in {root} is complete and made by this version: reusing it")
    assert "--fresh redoes it" in out and "mapped" not in out
    assert land_cover.stat().st_mtime_ns == written
