"""Workflow schema: parsing, defaults, path resolution and the wording of every error."""

import copy
import json
from pathlib import Path

import pytest
import yaml

from pipeline.workflow.load import WorkflowError, load_workflow, parse_workflow
from timesenclip.common.errors import TimeSenCLIPError

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"

EXAMPLE = """\
name: montpellier-2023
year: 2023
regions:
  - {name: montpellier, bbox: [3.80, 43.55, 3.95, 43.65]}   # lon/lat; or geojson: path/to/file
stac: {url: https://earth-search.aws.element84.com/v1, collection: sentinel-2-l2a, max_cloud_cover: 60}
# or stac: {file: items.json}
cube: {resolution: 10, tile_size: 4096, chunk_size: 512, cloud_mask: [0, 1, 3, 8, 9, 10]}
model:
  checkpoint: hf-hub:pallavijainpj/TimeSenCLIP/TimeSenCLIP_1x1.ckpt   # or a local path
  clip: {model: ViT-B-32, pretrained: openai}                         # any open_clip name / file / local-dir:
  device: auto                                                       # auto | cpu | cuda
  batch_size: 65536
tasks:
  - {name: land_cover, classes: land_cover}                          # a built-in class set
  - {name: habitat, classes: eunis_habitat, templates: class_names}
  - name: custom
    classes: [{name: vineyard, color: "#7b2d8b"}, {name: olive grove}, {name: pine forest}]
outputs: {dir: out, confidence: true, embeddings: false}
dask: {cluster: local, n_workers: null}                            # local, slurm, pbs or tcp://host:8786
"""  # noqa: E501

MINIMAL = {
    "name": "mini",
    "year": 2023,
    "regions": [{"name": "montpellier", "bbox": [3.80, 43.55, 3.95, 43.65]}],
    "stac": {"url": "https://earth-search.aws.element84.com/v1"},
    "model": {"checkpoint": "hf-hub:pallavijainpj/TimeSenCLIP/TimeSenCLIP_1x1.ckpt"},
    "tasks": [{"name": "land_cover", "classes": "land_cover"}],
    "outputs": {"dir": "out"},
}

POLYGON = [[[3.80, 43.55], [3.90, 43.55], [3.90, 43.62], [3.80, 43.55]]]
MULTIPOLYGON = [[[[3.91, 43.60], [3.95, 43.60], [3.95, 43.65], [3.91, 43.60]]]]


def _write(folder: Path, content: str | dict, name: str = "workflow.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(
        content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    )
    return path


def _feature_collection(*geometries: dict) -> dict:
    return {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "properties": {}, "geometry": g} for g in geometries],
    }


def _error(folder: Path, content: str | dict) -> str:
    with pytest.raises(WorkflowError) as info:
        load_workflow(_write(folder, content))
    return str(info.value)


def test_the_readme_example_parses(tmp_path):
    wf = load_workflow(_write(tmp_path, EXAMPLE))
    assert (wf.name, wf.year) == ("montpellier-2023", 2023)
    (region,) = wf.regions
    assert region.name == "montpellier" and region.bbox == (3.80, 43.55, 3.95, 43.65)
    assert region.geometry is None and region.area == region.bbox
    assert wf.stac.url == "https://earth-search.aws.element84.com/v1" and wf.stac.file is None
    assert (wf.stac.collection, wf.stac.max_cloud_cover) == ("sentinel-2-l2a", 60)
    assert (wf.cube.resolution, wf.cube.tile_size, wf.cube.chunk_size) == (10, 4096, 512)
    assert wf.cube.cloud_mask == [0, 1, 3, 8, 9, 10]
    assert wf.model.checkpoint == "hf-hub:pallavijainpj/TimeSenCLIP/TimeSenCLIP_1x1.ckpt"
    assert (wf.model.clip.model, wf.model.clip.pretrained) == ("ViT-B-32", "openai")
    assert (wf.model.device, wf.model.batch_size) == ("auto", 65536)
    assert [t.name for t in wf.tasks] == ["land_cover", "habitat", "custom"]
    assert [len(t.class_specs()) for t in wf.tasks] == [8, 44, 3]
    custom = wf.tasks[2].class_specs()
    assert [c.name for c in custom] == ["vineyard", "olive grove", "pine forest"]
    assert [c.color for c in custom] == ["#7b2d8b", None, None]
    assert wf.outputs.dir == tmp_path / "out"
    assert (wf.outputs.confidence, wf.outputs.embeddings) == (True, False)
    assert (wf.dask.cluster, wf.dask.n_workers) == ("local", None)
    assert wf.source == tmp_path / "workflow.yaml"
    assert "montpellier: [3.8, 43.55, 3.95, 43.65], 4 tile(s) in EPSG:32631" in wf.summary()
    assert wf.tiles(region)[0].id == "32631_x0013_y0118"


def test_defaults(tmp_path):
    wf = load_workflow(_write(tmp_path, MINIMAL))
    assert wf.cube.model_dump() == {
        "resolution": 10.0,
        "tile_size": 4096,
        "chunk_size": 512,
        "cloud_mask": [0, 1, 3, 8, 9, 10],
        "mask_mode": "default",
        "resampling": "nearest",
        "read_concurrency": 16,
        "read_retries": 4,
        "read_backoff": 1.0,
        "gdal": {},
        "temporal": "monthly",
    }
    assert wf.stac.model_dump(exclude={"url"}) == {
        "file": None,
        "collection": "sentinel-2-l2a",
        "max_cloud_cover": None,
        "provider": "auto",
        "retries": 2,
        "on_bad_asset": "raise",
        "concurrency": 8,
        "allowed_paths": None,
    }
    assert (wf.model.clip.model, wf.model.clip.pretrained) == ("ViT-B-32", "openai")
    assert (wf.model.device, wf.model.batch_size) == ("auto", 65536)
    assert (wf.model.band_order, wf.model.single_token_position) == (None, None)
    assert wf.tasks[0].templates == "class_names"
    assert wf.outputs.model_dump(exclude={"dir"}) == {
        "confidence": True,
        "embeddings": False,
        "overview_resampling": "mode",
        "blocksize": 512,
        "mosaic_max_pixels": 1_000_000_000,
    }
    assert wf.dask.model_dump(exclude={"jobs"}) == {
        "cluster": "local",
        "n_workers": None,
        "threads_per_worker": None,
        "min_jobs": 1,
        "max_jobs": 4,
        "lifetime": None,
        "lifetime_stagger": None,
        "tls": None,
        "shared_temp_directory": None,
        "dashboard": None,
        "stall_timeout": 3600.0,
        "no_worker_timeout": None,
    }
    assert set(wf.dask.jobs.model_dump().values()) == {None}  # all from jobqueue.yaml
    assert (wf.dask.kind, wf.dask.tls_mode, wf.dask.no_worker_seconds) == ("local", None, 120)


def test_relative_paths_are_read_from_the_workflow_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    for rel in ("data/items.json", "models/encoder.ckpt", "clip/weights.safetensors"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text("{}")
    (folder / "regions").mkdir()
    (folder / "regions/park.geojson").write_text(
        json.dumps(_feature_collection({"type": "Polygon", "coordinates": POLYGON}))
    )
    (folder / "clipdir").mkdir()
    data = copy.deepcopy(MINIMAL)
    data["regions"] = [{"name": "park", "geojson": "regions/park.geojson"}]
    data["stac"] = {"file": "data/items.json"}
    data["model"] = {
        "checkpoint": "models/encoder.ckpt",
        "clip": {"model": "ViT-B-32", "pretrained": "clip/weights.safetensors"},
    }
    data["outputs"] = {"dir": "../maps"}
    path = _write(folder, data)
    monkeypatch.chdir(tmp_path)  # resolution must not depend on the working directory
    wf = load_workflow(Path("project/workflow.yaml"))
    project = folder.resolve()
    assert wf.regions[0].geojson == project / "regions/park.geojson"
    assert wf.stac.file == project / "data/items.json"
    assert wf.model.checkpoint == str(project / "models/encoder.ckpt")
    assert wf.model.clip.pretrained == str(project / "clip/weights.safetensors")
    assert wf.outputs.dir == tmp_path.resolve() / "maps"
    data["model"]["clip"] = {"model": "local-dir:clipdir"}
    path.write_text(yaml.safe_dump(data))
    assert load_workflow(path).model.clip.model == f"local-dir:{project / 'clipdir'}"


def test_geojson_regions_keep_their_geometry(tmp_path):
    fc = _feature_collection(
        {"type": "Polygon", "coordinates": POLYGON},
        {"type": "MultiPolygon", "coordinates": MULTIPOLYGON},
    )
    fc["features"].append({"type": "Feature", "properties": {"note": "no shape"}, "geometry": None})
    (tmp_path / "area.geojson").write_text(json.dumps(fc))
    data = copy.deepcopy(MINIMAL)
    data["regions"] = [{"name": "area", "geojson": "area.geojson"}]
    wf = load_workflow(_write(tmp_path, data))
    region = wf.regions[0]
    assert region.geometry == {"type": "MultiPolygon", "coordinates": [POLYGON, *MULTIPOLYGON]}
    assert region.area is region.geometry
    assert region.bbox == (3.80, 43.55, 3.95, 43.65)
    tiles = wf.tiles(region)
    assert tiles and {t.epsg for t in tiles} == {32631} and {t.region for t in tiles} == {"area"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (_feature_collection({"type": "Point", "coordinates": [3.8, 43.6]}), "Point geometry"),
        (
            {
                "type": "Polygon",
                "coordinates": [[[5e5, 4.8e6], [6e5, 4.8e6], [6e5, 4.9e6], [5e5, 4.8e6]]],
            },
            "EPSG:4326",
        ),
        (
            {
                "type": "FeatureCollection",
                "crs": {"properties": {"name": "EPSG:2154"}},
                "features": [],
            },
            "declares the CRS EPSG:2154",
        ),
        (_feature_collection(), "no Polygon or MultiPolygon"),
        (_feature_collection({"type": "Polygon", "coordinates": None}), "no usable coordinates"),
        (_feature_collection({"type": "Polygon", "coordinates": [[1, 2]]}), "at least 4"),
        ("{not json", "cannot read"),
    ],
)
def test_bad_geojson_files(tmp_path, content, expected):
    text = content if isinstance(content, str) else json.dumps(content)
    (tmp_path / "bad.geojson").write_text(text)
    data = copy.deepcopy(MINIMAL)
    data["regions"] = [{"name": "bad", "geojson": "bad.geojson"}]
    message = _error(tmp_path, data)
    assert "regions[0].geojson" in message and "'bad.geojson'" in message and expected in message


def _set(path: str, value):
    """A change to MINIMAL: ``path`` like "tasks.0.classes" set to ``value``."""

    def apply(data: dict) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for p in parents:
            data = data[p]
        data[last] = value

    return apply


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            _set("tasks.0.classes", "land_cuver"),
            [
                "tasks[0].classes",
                "got 'land_cuver'",
                "allowed: land_cover, land_use",
                "'land_cover'?",
            ],
        ),
        (
            _set("regions.0.bbox", [3.8, 43.55, 200, 43.65]),
            ["regions[0].bbox", "got [3.8, 43.55, 200, 43.65]", "longitudes", "-180..180"],
        ),
        (_set("regions.0.bbox", [3.8, 85, 3.9, 86]), ["regions[0].bbox", "latitudes", "-80..84"]),
        (
            _set("regions.0.bbox", [3.95, 43.55, 3.80, 43.65]),
            ["regions[0].bbox", "[3.95, 43.55, 3.8, 43.65]", "west must be less than east"],
        ),
        (_set("regions.0.bbox", [3.8, 43.55, 3.9]), ["regions[0].bbox", "[3.8, 43.55, 3.9]"]),
        (_set("regions.0", {"name": "x"}), ["regions[0]", "exactly one of bbox", "neither"]),
        (
            _set("regions.0.geojson", "area.geojson"),
            ["regions[0]", "'geojson': 'area.geojson'", "exactly one of bbox", "(both given)"],
        ),
        (
            _set("regions.1", {"name": "Montpellier", "bbox": [4.0, 43.0, 4.1, 43.1]}),
            [
                "regions (line",
                "'montpellier' at regions[0] and 'Montpellier' at regions[1]",
                "unique",
            ],
        ),
        (
            _set("tasks.1", {"name": "land_cover", "classes": "land_use"}),
            ["tasks (line", "'land_cover' at tasks[0] and 'land_cover' at tasks[1]"],
        ),
        (_set("regions.0.name", "a/b"), ["regions[0].name", "got 'a/b'", "letters, digits"]),
        (
            _set("cube", {"chunk_sise": 512}),
            [
                "cube.chunk_sise",
                "got 512",
                "unknown key",
                "did you mean 'chunk_size'?",
                "allowed keys",
            ],
        ),
        (_set("task", []), ["task (line", "unknown key (did you mean 'tasks'?)"]),
        (
            _set("tasks.0.classes", [{"name": "vineyard", "color": "#7b2d8"}]),
            ["tasks[0].classes[0].color", "got '#7b2d8'", "'#rrggbb'"],
        ),
        (
            _set("tasks.0.classes", [{"name": "vineyard", "colour": "#7b2d8b"}]),
            ["tasks[0].classes[0].colour", "did you mean 'color'?"],
        ),
        (_set("tasks.0.classes", ["a", "b", "A"]), ["tasks[0].classes", "'A' appears twice"]),
        (
            _set("tasks.0.classes", 5),
            ["tasks[0].classes", "got 5", "class set name", "or a list of classes"],
        ),
        (_set("tasks.0.classes", []), ["tasks[0].classes", "got []", "at least 1"]),
        (
            _set("tasks.0.templates", "Genric"),
            ["tasks[0].templates", "got 'Genric'", "LC_Generic", "did you mean 'Generic'?"],
        ),
        (_set("tasks.0.templates", ["a photo"]), ["tasks[0].templates", "exactly one '{}'"]),
        (
            _set("cube", {"tile_size": 4096, "chunk_size": 500}),
            ["cube.chunk_size", "got 500", "divide tile_size 4096", "512"],
        ),
        (_set("cube", {"tile_size": 100}), ["cube.tile_size", "got 100", "256"]),
        (_set("cube", {"cloud_mask": [3, 12]}), ["cube.cloud_mask[1]", "got 12", "11"]),
        (_set("cube", {"resampling": "lanczos"}), ["cube.resampling", "'nearest', 'bilinear'"]),
        (
            _set("stac", {"file": "missing.json"}),
            ["stac.file", "got 'missing.json'", "no such STAC"],
        ),
        (
            _set("stac", {"url": "https://x/v1", "file": "area.geojson"}),
            ["stac", "exactly one of url"],
        ),
        (_set("stac", {}), ["stac", "exactly one of url"]),
        (_set("stac.url", "earth-search"), ["stac.url", "got 'earth-search'", "http(s)://"]),
        (_set("stac.max_cloud_cover", 120), ["stac.max_cloud_cover", "got 120", "100"]),
        (
            _set("stac.provider", "aws"),
            ["stac.provider", "got 'aws'", "'auto', 'earth-search' or 'planetary-computer'"],
        ),
        (_set("stac.retries", -1), ["stac.retries", "got -1"]),
        (_set("model.device", "gpu"), ["model.device", "got 'gpu'", "auto, cpu, cuda"]),
        (_set("model.batch_size", 0), ["model.batch_size", "got 0"]),
        (_set("model.checkpoint", "enc.ckpt"), ["model.checkpoint", "no such checkpoint file"]),
        (_set("model.checkpoint", "hf-hub:owner"), ["model.checkpoint", "hf-hub:OWNER/REPO/FILE"]),
        (
            _set("model.clip", {"model": "local-dir:nope"}),
            ["model.clip.model", "no such model folder"],
        ),
        (_set("outputs.confidence", "maybe"), ["outputs.confidence", "got 'maybe'"]),
        (_set("outputs.overview_resampling", "average"), ["outputs.overview_resampling", "'mode'"]),
        (_set("dask", {"cluster": "host:8786"}), ["dask.cluster", "slurm, pbs", "tcp://host:8786"]),
        (_set("dask", {"n_workers": 0}), ["dask.n_workers", "got 0"]),
        (
            _set("dask", {"cluster": "tcp://scheduler:8786", "n_workers": 4}),
            [
                "dask (line",
                "got n_workers with cluster 'tcp://scheduler:8786'",
                "n_workers is for a local cluster only: drop them or change cluster",
            ],
        ),
        (
            _set("dask", {"cluster": "slurm", "threads_per_worker": 2, "dashboard": ":8787"}),
            ["dask (line", "got threads_per_worker with cluster 'slurm'", "drop them"],
        ),
        (
            _set("dask", {"jobs": {"cores": 4}}),
            ["dask (line", "got jobs with cluster 'local'", "jobs is for slurm and pbs only"],
        ),
        (
            _set("dask", {"cluster": "slurm", "jobs": {"walltime": "2h"}}),
            ["dask.jobs.walltime (line", "got '2h'", "HH:MM:SS", "D-HH[:MM[:SS]]"],
        ),
        (
            _set("dask", {"cluster": "slurm", "jobs": {"walltime": 3600}}),
            ["dask.jobs.walltime (line", "got 3600", 'in quotes, e.g. walltime: "02:00:00"'],
        ),
        (
            _set("dask", {"cluster": "pbs", "jobs": {"walltime": "1-00:00:00"}}),
            ["dask (line", "got jobs.walltime '1-00:00:00'", "a PBS walltime is HH:MM:SS"],
        ),
        (
            _set("dask", {"cluster": "slurm", "jobs": {"memory": "32"}}),
            ["dask.jobs.memory (line", "got '32'", "needs its unit, e.g. 32GiB"],
        ),
        (
            _set("dask", {"cluster": "pbs", "jobs": {"cores": 2, "processes": 4}}),
            ["dask.jobs (line", "got processes 4 and cores 2", "lower processes"],
        ),
        (
            _set("dask", {"cluster": "slurm", "min_jobs": 5, "max_jobs": 2}),
            ["dask (line", "got min_jobs 5 above max_jobs 2"],
        ),
        (
            _set("dask", {"cluster": "slurm", "jobs": {"walltime": "01:00:00"}, "lifetime": "1h"}),
            ["dask (line", "got lifetime '1h'", "up to 1h03m", "walltime 1h00m", "kill them"],
        ),
        (
            _set("dask", {"cluster": "slurm", "lifetime": "50"}),
            ["dask.lifetime (line", "got '50'", "a number with a unit"],
        ),
        (
            _set("dask", {"cluster": "tcp://h:8786", "tls": "temporary"}),
            ["dask (line", "got tls 'temporary'", "give its files as tls: {ca_file, cert, key}"],
        ),
        (_set("dask", {"tls": "yes"}), ["dask.tls (line", "got 'yes'", "temporary, false (plain"]),
        (
            _set("dask", {"tls": {"ca_file": "ca.pem", "cert": "c.pem", "key": "k.pem"}}),
            ["dask.tls.ca_file (line", "no such certificate file"],
        ),
        (_set("dask", {"dashboard": "8787"}), ["dask.dashboard", "got '8787'", "HOST:PORT"]),
        (_set("year", 2010), ["year", "got 2010", "2015"]),
        (_set("tasks", []), ["tasks", "got []", "at least 1"]),
        (_set("name", ""), ["name", "got ''"]),
    ],
)
def test_each_error_names_the_field_and_the_value(tmp_path, change, expected):
    (tmp_path / "area.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": POLYGON}))
    data = copy.deepcopy(MINIMAL)
    data["regions"].append({"name": "other", "bbox": [4.0, 43.0, 4.1, 43.1]})
    data["tasks"].append({"name": "uses", "classes": "land_use"})
    change(data)
    message = _error(tmp_path, data)
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"
    assert "workflow.yaml" in message and "timesenclip validate" in message


def test_missing_keys_and_several_problems_are_reported_together(tmp_path):
    data = copy.deepcopy(MINIMAL)
    del data["model"]
    data["year"] = 1999
    message = _error(tmp_path, data)
    assert "has 2 problem(s)" in message
    assert "model: missing; this field is required" in message
    assert "year (line 2): got 1999" in message


def test_errors_give_the_yaml_line(tmp_path):
    text = EXAMPLE.replace("classes: eunis_habitat", "classes: eunis_habitats")
    message = _error(tmp_path, text)
    assert "tasks[1].classes (line 15): got 'eunis_habitats'" in message
    assert "did you mean 'eunis_habitat'?" in message


def test_malformed_yaml_names_file_line_and_column(tmp_path):
    text = EXAMPLE.replace(
        "{name: land_cover, classes: land_cover}", "{name: land_cover, classes: [a}"
    )
    message = _error(tmp_path, text)
    assert "workflow.yaml is not valid YAML at line 14, column 35" in message


def test_duplicate_yaml_keys_are_refused(tmp_path):
    message = _error(tmp_path, EXAMPLE + "year: 2022\n")
    assert "duplicate key 'year' (first given at line 2)" in message and "line 20" in message


@pytest.mark.parametrize(("text", "expected"), [("", "the file is empty"), ("- a\n", "got a list")])
def test_workflow_must_be_a_mapping(tmp_path, text, expected):
    message = _error(tmp_path, text)
    assert "must be a mapping of keys" in message and expected in message


def test_missing_workflow_file(tmp_path):
    with pytest.raises(WorkflowError, match=r"workflow file .*nope\.yaml not found"):
        load_workflow(tmp_path / "nope.yaml")


def test_workflow_errors_are_user_errors():
    assert issubclass(WorkflowError, TimeSenCLIPError)


def test_parse_workflow_takes_a_mapping(tmp_path):
    wf = parse_workflow(MINIMAL, base_dir=tmp_path)
    assert wf.outputs.dir == tmp_path.resolve() / "out" and wf.source is None
    with pytest.raises(WorkflowError, match="<workflow> has 1 problem"):
        parse_workflow({**MINIMAL, "year": "soon"})


def test_every_example_workflow_validates():
    paths = sorted(WORKFLOWS.glob("*.yaml"))
    assert {p.name for p in paths} >= {
        "montpellier-2023.yaml",
        "crop-types-beauce.yaml",
        "habitats-national-park.yaml",
        "cluster-europe.yaml",
    }
    for path in paths:
        wf = load_workflow(path)
        assert path.read_text().startswith("# "), f"{path.name} needs a comment header"
        assert all(wf.tiles(r) for r in wf.regions)
    main = yaml.safe_load((WORKFLOWS / "montpellier-2023.yaml").read_text())
    assert main == yaml.safe_load(EXAMPLE), "the README's main job is the documented example"
    cluster = load_workflow(WORKFLOWS / "cluster-europe.yaml")
    assert cluster.dask.cluster == "slurm" and cluster.outputs.embeddings
    assert len(cluster.regions) > 1


@pytest.mark.parametrize("name", ["valid_months", "Provenance", "embeddings", "land_confidence"])
def test_task_names_of_built_in_outputs_are_reserved(tmp_path, name):
    data = copy.deepcopy(MINIMAL)
    data["tasks"].append({"name": name, "classes": "land_use"})
    message = _error(tmp_path, data)
    assert f"tasks[1].name (line 17): got {name!r}; this name is reserved" in message
    assert "reserved: valid_months, provenance, embeddings and any name ending in _confidence" in (
        message
    )


def test_a_huge_value_is_shown_short_and_problems_are_capped(tmp_path):
    data = copy.deepcopy(MINIMAL)
    data["name"] = "x" * 500_000
    data["cube"] = {"cloud_mask": list(range(100, 160))}
    message = _error(tmp_path, data)
    assert "has 61 problem(s)" in message and "... and 41 more" in message
    assert len(message) < 5000
    assert "name (line 1): got 'xxx" in message
