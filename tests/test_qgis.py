"""What QGIS shows for the maps a run writes: with their styles, with GDAL's sidecar only, alone.

The maps are written by the code a run uses (``write_cog`` with ``map_style``, then
``describe_map``) and opened in a real QGIS through ``scripts/render_outputs.py``, which runs under
whichever Python has QGIS's bindings (Debian's ``python3-qgis`` installs them for the system
``python3``, not for a virtual environment). Skipped where no QGIS is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pystac
import pytest
from affine import Affine

from encoder.classes import ClassSpec
from pipeline.maps.classify import TaskPlan
from pipeline.maps.cog import write_cog
from pipeline.maps.outputs import CLASS_NODATA, CONFIDENCE_NODATA
from pipeline.maps.sidecars import describe_map, map_style
from pipeline.maps.style import CONFIDENCE_RAMP, VALID_MONTHS_RAMP, class_colors

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "render_outputs.py"
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4800000.0)
SHAPE = (40, 60)
NODATA_COLUMNS = 10  # the left sixth of every layer is nodata
CLASSES = (
    ClassSpec("forest", color="#1b5e20"),
    ClassSpec("Water"),  # takes the conventional land-cover blue
    ClassSpec('built-up & "roads"'),
    ClassSpec("crops"),
)


def _task() -> TaskPlan:
    return TaskPlan(
        name="land",
        classes=CLASSES,
        colors=tuple(class_colors(CLASSES)),
        prompts=tuple((c.name,) for c in CLASSES),
        weights=np.zeros((len(CLASSES), 8), np.float32),
    )


def write_outputs(folder: Path) -> dict[str, np.ndarray]:
    """A class map, its confidence and valid months, as a run writes them; returns the arrays."""
    rng = np.random.default_rng(0)
    classes = rng.integers(1, len(CLASSES) + 1, SHAPE).astype(np.uint8)
    confidence = rng.integers(0, 101, SHAPE).astype(np.uint8)
    months = rng.integers(0, 13, SHAPE).astype(np.uint8)
    classes[:, :NODATA_COLUMNS] = CLASS_NODATA
    confidence[:, :NODATA_COLUMNS] = CONFIDENCE_NODATA
    months[:, :NODATA_COLUMNS] = 255
    grid = {"transform": TRANSFORM, "crs": 32631}
    task = _task()
    write_cog(folder / "land.tif", classes, nodata=CLASS_NODATA, **grid, **map_style(task))
    write_cog(folder / "land_confidence.tif", confidence, nodata=CONFIDENCE_NODATA, **grid)
    write_cog(folder / "valid_months.tif", months, nodata=255, **grid)
    describe_map(
        folder / "land.tif",
        task,
        year=2023,
        confidence_path=folder / "land_confidence.tif",
        valid_months_path=folder / "valid_months.tif",
    )
    return {"land": classes}


def test_item_lists_every_file_written(tmp_path):
    write_outputs(tmp_path)
    item = pystac.Item.from_file(str(tmp_path / "land.json"))
    hrefs = {Path(a.href).name for a in item.assets.values()}
    assert hrefs == {p.name for p in tmp_path.iterdir()} - {"land.json"}
    assert {key: a.href for key, a in item.assets.items()} == {
        "data": "./land.tif",
        "style": "./land.qml",
        "aux_xml": "./land.tif.aux.xml",
        "confidence": "./land_confidence.tif",
        "confidence_style": "./land_confidence.qml",
        "valid_months": "./valid_months.tif",
        "valid_months_style": "./valid_months.qml",
    }


def _qgis_python() -> tuple[str | None, list[str]]:
    """A Python that imports qgis.core, and the candidates tried."""
    candidates = [os.environ.get("TIMESENCLIP_QGIS_PYTHON"), sys.executable, "/usr/bin/python3"]
    tried = [c for c in dict.fromkeys(candidates) if c]
    for exe in tried:
        if shutil.which(exe) is None:
            continue
        done = subprocess.run(
            [exe, "-c", "import qgis.core"], capture_output=True, env=_qgis_env(), timeout=60
        )
        if done.returncode == 0:
            return exe, tried
    return None, tried


def _qgis_env(home: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    if home is not None:  # QGIS writes its profile and Qt its runtime files here, not in ~
        env["QGIS_CUSTOM_CONFIG_PATH"] = str(home)
        env["XDG_RUNTIME_DIR"] = str(home)
    return env


@pytest.fixture(scope="module")
def shown(tmp_path_factory):
    """What QGIS shows for the outputs (full/), the map with its .aux.xml (aux/) and alone."""
    python, tried = _qgis_python()
    if python is None:
        pytest.skip(
            f"QGIS is not installed: none of {', '.join(tried)} imports qgis.core "
            "(Debian/Ubuntu: apt-get install qgis python3-qgis; or set TIMESENCLIP_QGIS_PYTHON)"
        )
    root = tmp_path_factory.mktemp("qgis")
    arrays = write_outputs(root / "full")
    (root / "aux").mkdir()
    (root / "alone").mkdir()
    for name in ("land.tif", "land.tif.aux.xml"):
        shutil.copy(root / "full" / name, root / "aux" / name)
    shutil.copy(root / "full" / "land.tif", root / "alone" / "land.tif")
    report = root / "shown.json"
    home = tmp_path_factory.mktemp("qgis-home")
    done = subprocess.run(
        [python, str(SCRIPT), str(root), "--json", str(report), "--png", str(root / "png")],
        capture_output=True,
        text=True,
        env=_qgis_env(home),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (root / "png").iterdir()) == [
        "alone__land.png",
        "aux__land.png",
        "full__land.png",
        "full__land_confidence.png",
        "full__valid_months.png",
    ]
    return json.loads(report.read_text()), arrays["land"]


def _class_colors() -> list[str]:
    return list(class_colors(CLASSES))


def _check_pixels(layer: dict, labels: np.ndarray | None = None) -> None:
    """Nodata renders transparent; with ``labels``, each class in its own colour and amount."""
    assert layer["transparent_fraction"] == pytest.approx(NODATA_COLUMNS / SHAPE[1], abs=0.01)
    if labels is not None:
        counts = {c: int((labels == v).sum()) for v, c in enumerate(_class_colors(), start=1)}
        got = layer["opaque_colors"]
        assert set(got) == set(counts)
        for color, count in counts.items():
            assert got[color] == pytest.approx(count, rel=0.05)


def test_with_styles_the_legend_is_the_named_classes(shown):
    report, labels = shown
    land = report["full/land.tif"]
    assert land["renderer"] == "paletted"
    names = [c.name for c in CLASSES]
    assert land["legend"] == [[n, c, 255] for n, c in zip(names, _class_colors(), strict=True)]
    _check_pixels(land, labels)


def test_with_the_aux_xml_only_the_legend_is_no_data_and_the_classes(shown):
    report, labels = shown
    land = report["aux/land.tif"]
    assert land["renderer"] == "paletted"
    # GDAL reads the trimmed colour table and names of the sidecar: no 247 unused entries.
    assert [label for label, _, _ in land["legend"]] == ["no data", *(c.name for c in CLASSES)]
    assert land["legend"][0][2] == 0  # "no data" is transparent
    assert [color for _, color, _ in land["legend"][1:]] == _class_colors()
    _check_pixels(land, labels)


def test_alone_the_map_keeps_its_colours_and_transparent_nodata(shown):
    report, labels = shown
    land = report["alone/land.tif"]
    assert land["renderer"] == "paletted" and land["nodata"] == 0
    # A GeoTIFF colour table has 256 entries, labelled by value: names need a sidecar (README).
    assert len(land["legend"]) == 256 and land["legend"][1][0] == "1"
    assert [color for _, color, _ in land["legend"][1:5]] == _class_colors()
    assert land["legend"][0][2] == 0
    _check_pixels(land, labels)


@pytest.mark.parametrize(
    ("name", "ramp"),
    [("full/land_confidence.tif", CONFIDENCE_RAMP), ("full/valid_months.tif", VALID_MONTHS_RAMP)],
)
def test_quality_layers_have_a_ramp_in_their_units(shown, name, ramp):
    report, _ = shown
    layer = report[name]
    assert layer["renderer"] == "singlebandpseudocolor"
    assert layer["legend"] == [[label, color, 255] for _, color, label in ramp.stops]
    unit = "%" if ramp is CONFIDENCE_RAMP else "month"
    assert all(unit in label for label, _, _ in layer["legend"])
    _check_pixels(layer)
