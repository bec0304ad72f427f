"""Atomic writes: readers see the old complete file or the new complete file, never a part."""

import pytest

from timesenclip.common.atomic import atomic_path, scratch_path, set_aside, write_text_atomic


def test_success_renames_the_temporary_file(tmp_path):
    target = tmp_path / "sub" / "map.tif"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".map.tif.tmp-")
        tmp.write_bytes(b"complete")
        assert not target.exists()  # nothing visible until the block succeeds
    assert target.read_bytes() == b"complete"
    assert [p.name for p in target.parent.iterdir()] == ["map.tif"]


def test_failure_keeps_the_existing_file_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "map.tif"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="crash"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        tmp.with_name(tmp.name + ".aux.xml").write_text("<x/>")  # a GDAL side file
        raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["map.tif"]


def test_failure_without_existing_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "x.json") as tmp:
        tmp.write_text("{")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_two_writers_get_different_temporary_names(tmp_path):
    with atomic_path(tmp_path / "a") as first, atomic_path(tmp_path / "a") as second:
        assert first != second
        first.write_text("1")
        second.write_text("2")
    assert (tmp_path / "a").read_text() == "1"  # the outer block finishes last and wins
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_scratch_path_is_always_removed(tmp_path):
    with scratch_path(tmp_path / "m.tif", ".tif") as scratch:
        assert scratch.suffix == ".tif" and scratch.parent == tmp_path
        scratch.write_bytes(b"work")
    assert list(tmp_path.iterdir()) == []


def test_a_scratch_folder_is_removed_with_what_it_holds(tmp_path):
    with pytest.raises(ValueError), scratch_path(tmp_path / "blocks") as scratch:
        (scratch / "part").mkdir(parents=True)
        (scratch / "part" / "fine.npy").write_bytes(b"work")
        raise ValueError("a failed block")
    assert list(tmp_path.iterdir()) == []


def test_write_text_atomic(tmp_path):
    path = write_text_atomic(tmp_path / "a.txt", "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"


def test_remove_stale_temporaries_keeps_real_files(tmp_path):
    from timesenclip.common.atomic import _sibling, remove_stale_temporaries

    keep = [tmp_path / "map.tif", tmp_path / ".hidden", tmp_path / "sub" / "x.tif.tmp-notours"]
    for path in keep:
        path.parent.mkdir(exist_ok=True)
        path.write_text("keep")
    stale = [
        _sibling(tmp_path / "map.tif", "tmp"),
        _sibling(tmp_path / "sub" / "map.tif.aux.xml", "tmp"),
        _sibling(tmp_path / "big.tif", "scratch", ".tif"),
    ]
    for path in stale:
        path.write_text("half")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_set_aside_frees_the_name_and_keeps_the_contents(tmp_path):
    folder = tmp_path / "block-00"
    folder.mkdir()
    (folder / "fine.npy").write_text("tokens")
    away = set_aside(folder)
    assert not folder.exists() and away.parent == tmp_path
    assert away.name.startswith(".block-00.scratch-")
    assert (away / "fine.npy").read_text() == "tokens"
    folder.mkdir()  # the name is free for a new one
    assert set_aside(folder) != away
    with pytest.raises(FileNotFoundError):
        set_aside(tmp_path / "missing")
