"""The workflow schema: regions, STAC source, cube, model, tasks, outputs and cluster of a run.

Relative paths (GeoJSON regions, a STAC file, a local checkpoint, the output folder) are resolved
against the folder of the workflow file (the ``base_dir`` of the validation context). Files are
read and errors rendered by ``pipeline.workflow.load``.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from encoder.classes import (
    class_set,
    class_set_names,
    resolve_classes,
    template_set,
    template_set_names,
)
from pipeline.geo.tiles import Tile, check_bbox, geometry_bounds, tiles_for_region
from pipeline.maps.outputs import CONFIDENCE_SUFFIX, RESERVED_NAMES, VALID_MONTHS, confidence_layer
from pipeline.maps.similarity import unique_slugs
from pipeline.maps.style import StyleError, normalize_color
from pipeline.search.sentinel2 import DEFAULT_CLOUD_MASK
from pipeline.workflow.geojson import read_geojson
from pipeline.workflow.jobs import (
    BATCH_SYSTEMS,
    HPC_EXTRA,
    check_cluster,
    check_memory,
    check_walltime,
    cluster_kind,
    duration_seconds,
    missing_hpc_packages,
    walltime_seconds,
    worker_lifetime,
)
from timesenclip.common.config_errors import did_you_mean
from timesenclip.common.errors import TimeSenCLIPError

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
_HF_HUB_RE = re.compile(r"hf-hub:[^/\s]+/[^/\s]+/\S+")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")


def _safe_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(
            "use 1-100 letters, digits, '-' or '_', starting with a letter or digit "
            "(the name becomes part of output file names)"
        )
    return value


def _color(value: str) -> str:
    try:
        return normalize_color(value)
    except StyleError:
        raise ValueError("a colour is a '#rrggbb' hex string, e.g. '#7b2d8b'") from None


SafeName = Annotated[str, AfterValidator(_safe_name)]


def _not_reserved(value: str) -> str:
    name = value.casefold()  # some file systems ignore case
    if name in RESERVED_NAMES or name.endswith(CONFIDENCE_SUFFIX):
        raise ValueError(
            "this name is reserved for an output every region folder holds (reserved: "
            f"{', '.join(RESERVED_NAMES)} and any name ending in {CONFIDENCE_SUFFIX}, "
            "each map's confidence layer): choose another name"
        )
    return value


def _resolve(value: str | Path, info: ValidationInfo) -> Path:
    """An absolute path: relative ones are read from the workflow file's folder."""
    path = Path(value).expanduser()
    base = Path((info.context or {}).get("base_dir", "."))
    return (base / path).resolve()


ResolvedPath = Annotated[Path, AfterValidator(_resolve)]


def _existing(path: Path, what: str, info: ValidationInfo, *, folder: bool = False) -> Path:
    if not (path.is_dir() if folder else path.is_file()):
        base = Path((info.context or {}).get("base_dir", ".")).resolve()
        raise ValueError(
            f"no such {what} {path} "
            f"(relative paths are read from the workflow file's folder, {base})"
        )
    return path


def _unique(names: list[str], field: str) -> None:
    """Names must differ even in case: they name files, and some file systems ignore case."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        j = seen.setdefault(name.casefold(), i)
        if j != i:
            raise ValueError(
                f"got the name {names[j]!r} at {field}[{j}] and {name!r} at {field}[{i}]; "
                "names must be unique, ignoring case (they name output files)"
            )


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Region(_Model):
    """A named area: a lon/lat bbox, or the Polygon/MultiPolygon geometries of a GeoJSON file."""

    name: SafeName
    bbox: tuple[float, float, float, float] | None = None
    geojson: Path | None = None
    _geometry: dict[str, Any] | None = PrivateAttr(None)

    @field_validator("bbox", mode="before")
    @classmethod
    def _check_bbox(cls, value: Any) -> Any:
        return None if value is None else check_bbox(value)

    @field_validator("geojson")
    @classmethod
    def _check_geojson(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        path = _existing(_resolve(value, info), "GeoJSON file", info)
        read_geojson(path)  # fail here, where the error names the field
        return path

    @model_validator(mode="after")
    def _one_area(self) -> Region:
        if (self.bbox is None) == (self.geojson is None):
            given = "both" if self.bbox is not None else "neither"
            raise ValueError(
                "give exactly one of bbox: [west, south, east, north] or geojson: FILE "
                f"({given} given)"
            )
        if self.geojson is not None:
            self._geometry = read_geojson(self.geojson)
            self.bbox = geometry_bounds(self._geometry)
        return self

    @property
    def geometry(self) -> dict[str, Any] | None:
        """The GeoJSON MultiPolygon (lon/lat) of a geojson region; None for a bbox region."""
        return self._geometry

    @property
    def area(self) -> tuple[float, float, float, float] | dict[str, Any]:
        """What ``pipeline.geo.tiles`` takes: the geometry when there is one, else the bbox."""
        return self._geometry if self._geometry is not None else self.bbox


class StacConfig(_Model):
    """Where the Sentinel-2 L2A items come from: a STAC API ``url`` or a local ``file``."""

    url: str | None = None
    file: Path | None = None
    collection: str = "sentinel-2-l2a"
    max_cloud_cover: float | None = Field(None, ge=0, le=100)
    provider: Literal["auto", "earth-search", "planetary-computer"] = "auto"
    # Few by default, so an unreachable API fails within seconds; raise it for long runs.
    retries: int = Field(2, ge=0)
    on_bad_asset: Literal["raise", "skip"] = "raise"
    # API searches in flight at once while planning (one per tile, through one session).
    concurrency: int = Field(8, ge=1, le=64)
    # Local folders item hrefs may point into (besides http(s), s3 and gs URLs). None: the
    # items file's folder for a file source, none for an API (see reading_folders).
    allowed_paths: list[Path] | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"https?://[^/\s]+", value):
            raise ValueError("expected an http(s):// STAC API address")
        return value

    @field_validator("file")
    @classmethod
    def _check_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _existing(_resolve(value, info), "STAC file", info)

    @field_validator("allowed_paths")
    @classmethod
    def _resolve_allowed(cls, value: list[Path] | None, info: ValidationInfo) -> list[Path] | None:
        if value is None:
            return None
        return [_existing(_resolve(v, info), "allowed folder", info, folder=True) for v in value]

    def reading_folders(self) -> list[Path]:
        """The local folders item hrefs may point into."""
        if self.allowed_paths is not None:
            return list(self.allowed_paths)
        return [self.file.parent] if self.file is not None else []

    @model_validator(mode="after")
    def _one_source(self) -> StacConfig:
        if (self.url is None) == (self.file is None):
            raise ValueError("give exactly one of url: STAC_API_URL or file: ITEMS.json")
        return self


class CubeConfig(_Model):
    """Monthly composite cube settings."""

    resolution: float = Field(10.0, gt=0)
    tile_size: int = Field(4096, ge=256, le=16384)
    chunk_size: int = Field(512, ge=64, le=4096)
    cloud_mask: list[Annotated[int, Field(ge=0, le=11)]] = Field(
        default_factory=lambda: list(DEFAULT_CLOUD_MASK)
    )
    mask_mode: Literal["default", "reference"] = "default"
    resampling: Literal["nearest", "bilinear", "cubic", "average"] = "nearest"
    # Asset reads in flight at once per chunk task: hides each request's latency behind others.
    read_concurrency: int = Field(16, ge=1, le=256)
    # Transient read failures (HTTP 429/5xx, resets, cut bodies, timeouts) are read again this
    # many times, after read_backoff seconds, doubled each time (pipeline.cube.read_retry).
    read_retries: int = Field(4, ge=0, le=20)
    read_backoff: float = Field(1.0, ge=0, le=60)
    # GDAL configuration options for reads, on top of pipeline.cube.reader.GDAL_OPTIONS.
    gdal: dict[str, str] = Field(default_factory=dict)
    # Tokens per pixel: 12 months, 4 seasons or 1 annual median (pipeline.cube.temporal).
    temporal: Literal["monthly", "seasonal", "annual"] = "monthly"

    @field_validator("chunk_size")
    @classmethod
    def _divides_tile(cls, value: int, info: ValidationInfo) -> int:
        tile_size = info.data.get("tile_size")  # absent when tile_size itself was invalid
        if tile_size and tile_size % value:
            fits = [c for c in (256, 512, 1024, 2048) if tile_size % c == 0]
            raise ValueError(
                f"chunk_size must divide tile_size {tile_size} evenly"
                + (f", e.g. {' or '.join(map(str, fits))}" if fits else "")
            )
        return value


class ClipConfig(_Model):
    """The open_clip text tower: a model name (or local-dir:FOLDER) and a pretrained tag or file."""

    model: str = "ViT-B-32"
    pretrained: str | None = "openai"

    @field_validator("model")
    @classmethod
    def _resolve_dir(cls, value: str, info: ValidationInfo) -> str:
        if value.startswith("local-dir:"):
            folder = _resolve(value.removeprefix("local-dir:"), info)
            return "local-dir:" + str(_existing(folder, "model folder", info, folder=True))
        return value

    @field_validator("pretrained")
    @classmethod
    def _resolve_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value.lower().endswith(_WEIGHT_SUFFIXES):
            return str(_existing(_resolve(value, info), "weights file", info))
        return value


class ModelConfig(_Model):
    """The TimeSenCLIP encoder checkpoint, the CLIP text tower, and where to run them."""

    checkpoint: str
    clip: ClipConfig = Field(default_factory=ClipConfig)
    device: str = "auto"
    batch_size: int = Field(65536, ge=1)
    # How the encoder runs (encoder.runtime): auto takes the fastest float32 runtime measured
    # (ONNX Runtime on a CPU, torch on a GPU); bf16 only when asked, as it rounds. Whether a
    # runtime is installed is checked when the run starts.
    runtime: Literal["auto", "torch", "onnx"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    # Input conventions over the checkpoint's own (encoder.conventions); None keeps them.
    band_order: list[str] | None = None
    constants_order: list[str] | None = None
    single_token_position: Literal["mean", "january"] | None = None

    @field_validator("band_order", "constants_order")
    @classmethod
    def _check_bands(cls, value: list[str] | None) -> list[str] | None:
        from encoder.conventions import band_order

        return None if value is None else list(band_order(value))

    @field_validator("checkpoint")
    @classmethod
    def _check_checkpoint(cls, value: str, info: ValidationInfo) -> str:
        if value.startswith("hf-hub:"):
            if not _HF_HUB_RE.fullmatch(value):
                raise ValueError("a hub checkpoint is written hf-hub:OWNER/REPO/FILE")
            return value
        return str(_existing(_resolve(value, info), "checkpoint file", info))

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE_RE.fullmatch(value):
            raise ValueError("allowed: auto, cpu, cuda, cuda:N")
        return value


class ClassEntry(_Model):
    """A user-defined class: a name, an optional map colour, optional prompts (else the name)."""

    name: str = Field(min_length=1)
    color: Annotated[str, AfterValidator(_color)] | None = None
    prompts: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


def _check_class_set(name: str) -> str:
    try:
        class_set(name)
    except TimeSenCLIPError:
        names = class_set_names()
        raise ValueError(
            f"allowed: {', '.join(names)}, or a list of classes{did_you_mean(name, names)}"
        ) from None
    return name


def _check_class_list(entries: list[ClassEntry]) -> list[ClassEntry]:
    resolve_classes([e.model_dump(exclude_none=True) for e in entries])  # e.g. duplicate names
    return entries


ClassesSpec = Annotated[
    Annotated[str, AfterValidator(_check_class_set), Tag("set")]
    | Annotated[
        list[ClassEntry], Field(min_length=1), AfterValidator(_check_class_list), Tag("list")
    ],
    Discriminator(
        lambda v: "set" if isinstance(v, str) else "list" if isinstance(v, list) else None,
        custom_error_type="classes_type",
        custom_error_message="expected a class set name (e.g. land_cover) or a list of classes",
    ),
]


class TaskConfig(_Model):
    """One map to make: classes (a built-in set name or a list) and prompt templates; or, with
    ``mode: similarity``, one similarity map per text of ``texts``."""

    name: Annotated[SafeName, AfterValidator(_not_reserved)]
    mode: Literal["classes", "similarity"] = "classes"
    classes: ClassesSpec | None = None
    texts: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1)
    templates: str | list[str] = "class_names"

    @model_validator(mode="after")
    def _mode_fields(self) -> TaskConfig:
        if self.mode == "classes" and (self.classes is None or self.texts is not None):
            raise ValueError(
                "a classes task needs classes: SET_NAME or a list, and no texts "
                "(for similarity maps write mode: similarity)"
            )
        if self.mode == "similarity":
            if self.texts is None or self.classes is not None:
                raise ValueError("a similarity task needs texts: [a list of texts] and no classes")
            unique_slugs(self.texts)  # every text must name its own file
        return self

    def layer_names(self) -> list[str]:
        """The file names (without .tif) this task writes per region."""
        if self.mode == "similarity":
            return [f"{self.name}_{slug}" for slug in unique_slugs(self.texts)]
        return [self.name, confidence_layer(self.name)]

    @field_validator("templates", mode="before")
    @classmethod
    def _check_templates(cls, value: Any) -> Any:
        names = template_set_names()
        if isinstance(value, str) and value not in names:
            raise ValueError(
                f"allowed: {', '.join(names)}, or a list of templates each with one '{{}}'"
                + did_you_mean(value, names)
            )
        if not isinstance(value, str | list):
            raise ValueError("expected a template set name or a list of templates")
        template_set(value)  # raises naming the bad template
        return value

    def class_specs(self) -> list[Any]:
        """The classes as ``encoder.classes.ClassSpec`` objects, in label order."""
        if isinstance(self.classes, str):
            return resolve_classes(self.classes)
        return resolve_classes([e.model_dump(exclude_none=True) for e in self.classes])


class OutputsConfig(_Model):
    """Where maps go and which extra layers to write."""

    dir: Path
    confidence: bool = True
    # Keep the embeddings (a Zarr store per region): float16, or int8 (4x smaller than float32).
    embeddings: Literal[False, "float16", "int8"] = False
    overview_resampling: Literal["nearest", "mode"] = "mode"
    blocksize: int = Field(512, ge=128, le=4096, multiple_of=16)  # COG tile size in pixels
    # Above this many pixels per region and zone, a layer is a folder of per-tile COGs with a VRT
    # and a STAC Collection instead of one COG (one multi-gigapixel file helps nobody).
    mosaic_max_pixels: int = Field(1_000_000_000, ge=1)

    @field_validator("dir")
    @classmethod
    def _resolve_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve(value, info)

    @field_validator("embeddings", mode="before")
    @classmethod
    def _true_is_float16(cls, value: Any) -> Any:
        return "float16" if value is True else value


class JobsConfig(_Model):
    """One batch job of Dask workers (dask-jobqueue). What is left out comes from the user's or
    the site's ``jobqueue.yaml`` (the Dask config), as dask-jobqueue users expect."""

    cores: int | None = Field(None, ge=1)
    memory: Annotated[str, AfterValidator(check_memory)] | None = None
    processes: int | None = Field(None, ge=1)  # worker processes per job, sharing its cores
    walltime: Annotated[str, AfterValidator(check_walltime)] | None = None
    queue: str | None = None
    account: str | None = None
    directives: list[str] | None = None  # more job directives, e.g. --gres=gpu:1 or -l ...
    prologue: list[str] | None = None  # job-script lines run before the worker starts
    interface: str | None = None  # network interface of the scheduler and workers, e.g. ib0
    local_directory: str | None = None  # worker scratch on the compute node, e.g. $TMPDIR
    log_directory: ResolvedPath | None = None  # the jobs' output and error files

    @field_validator("walltime", mode="before")
    @classmethod
    def _quoted(cls, value: Any) -> Any:
        if isinstance(value, int | float):  # YAML reads an unquoted 1:00:00 as 3600
            raise ValueError('write the walltime in quotes, e.g. walltime: "02:00:00"')
        return value

    @model_validator(mode="after")
    def _processes_fit(self) -> JobsConfig:
        if self.cores and self.processes and self.processes > self.cores:
            raise ValueError(
                f"got processes {self.processes} and cores {self.cores}; each worker process "
                "needs a core of the job: lower processes or raise cores"
            )
        return self


class TlsFiles(_Model):
    """Certificates of one's own for the scheduler, its workers and the run (PEM files)."""

    ca_file: Path
    cert: Path
    key: Path

    @field_validator("ca_file", "cert", "key")
    @classmethod
    def _check_file(cls, value: Path, info: ValidationInfo) -> Path:
        return _existing(_resolve(value, info), "certificate file", info)


TlsSpec = Annotated[
    Annotated[Literal["temporary", False], Tag("mode")] | Annotated[TlsFiles, Tag("files")],
    Discriminator(lambda v: "files" if isinstance(v, dict | TlsFiles) else "mode"),
]

DEFAULT_DASHBOARD = "127.0.0.1:8787"  # of a cluster the run starts: reached by ssh tunnel
_DASHBOARD_RE = re.compile(r"[\w.\-]*:\d{1,5}")
_BATCH_KEYS = ("jobs", "min_jobs", "max_jobs", "lifetime", "lifetime_stagger")
# Keys that apply to some clusters only: (those clusters' kinds, their name, the keys).
_SOME_CLUSTERS = (
    (("local",), "a local cluster", ("n_workers", "threads_per_worker")),
    (BATCH_SYSTEMS, "slurm and pbs", (*_BATCH_KEYS, "shared_temp_directory")),
    (("local", *BATCH_SYSTEMS), "a cluster the run starts", ("dashboard",)),
)


def _duration(value: str) -> str:
    duration_seconds(value)
    return value


Duration = Annotated[str, AfterValidator(_duration)]


class DaskConfig(_Model):
    """The Dask cluster of a run: ``local`` (sized to this machine), a running scheduler's
    address, or ``slurm`` / ``pbs`` jobs of workers that the run submits (dask-jobqueue)."""

    cluster: Annotated[str, AfterValidator(check_cluster)] = "local"
    # local: worker processes and threads (None = sized to this machine)
    n_workers: int | None = Field(None, ge=1)
    threads_per_worker: int | None = Field(None, ge=1)
    # slurm, pbs: one job's resources, and how many jobs (requested adaptively)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    min_jobs: int = Field(1, ge=0)
    max_jobs: int = Field(4, ge=1)
    # Workers retire this long after they start (with a random stagger of up to plus or minus
    # lifetime_stagger), before their job's walltime; derived from the walltime when left out.
    lifetime: Duration | None = None
    lifetime_stagger: Duration | None = None
    # TLS between scheduler, workers and this run: temporary credentials made for the run
    # (default on slurm and pbs), false for plain TCP, or certificate files of one's own.
    tls: TlsSpec | None = None
    # Where temporary credentials are written for the workers to read (shared with them);
    # default: jobqueue.yaml's shared-temp-directory, else the outputs folder.
    shared_temp_directory: ResolvedPath | None = None
    # The scheduler's dashboard, HOST:PORT (":8787" listens on every interface) or false;
    # default 127.0.0.1:8787, reached from elsewhere through an ssh tunnel.
    dashboard: str | Literal[False] | None = None
    # Seconds without any finished task, or with no worker at all, before a run gives up
    # (a rerun resumes); a published-size model on a CPU takes minutes per 512-px chunk.
    # Without a worker: 120 s by default, an hour on slurm and pbs, whose jobs may queue.
    stall_timeout: float = Field(3600.0, gt=0)
    no_worker_timeout: float | None = Field(None, gt=0)

    @field_validator("tls", mode="before")
    @classmethod
    def _check_tls(cls, value: Any) -> Any:
        if value is True:
            return "temporary"
        if value not in ("temporary", False, None) and not isinstance(value, dict):
            raise ValueError(
                "allowed: temporary, false (plain TCP) or files of your own {ca_file, cert, key}"
            )
        return value

    @field_validator("dashboard")
    @classmethod
    def _check_dashboard(cls, value: str | Literal[False] | None) -> str | Literal[False] | None:
        if isinstance(value, str) and not _DASHBOARD_RE.fullmatch(value):
            raise ValueError("expected HOST:PORT such as 127.0.0.1:8787, :8787 or false")
        return value

    @property
    def kind(self) -> str:
        """``local``, ``address``, ``slurm`` or ``pbs``."""
        return cluster_kind(self.cluster)

    @property
    def tls_mode(self) -> Literal["temporary"] | TlsFiles | None:
        """The TLS the run uses: temporary credentials, files, or None for plain TCP."""
        if self.tls is None:
            return "temporary" if self.kind in BATCH_SYSTEMS else None
        return self.tls or None

    @property
    def no_worker_seconds(self) -> float:
        """``no_worker_timeout``, or its default for this kind of cluster."""
        if self.no_worker_timeout is not None:
            return self.no_worker_timeout
        return 3600.0 if self.kind in BATCH_SYSTEMS else 120.0

    @staticmethod
    def foreign_keys(kind: str) -> tuple[str, ...]:
        """The keys that do not apply to a cluster of ``kind`` (see :attr:`kind`)."""
        return tuple(key for kinds, _, keys in _SOME_CLUSTERS if kind not in kinds for key in keys)

    @model_validator(mode="after")
    def _fits_the_cluster(self) -> DaskConfig:
        kind = self.kind
        if wrong := [name for name in self.foreign_keys(kind) if name in self.model_fields_set]:
            groups = [([k for k in keys if k in wrong], name) for _, name, keys in _SOME_CLUSTERS]
            where = "; ".join(
                f"{', '.join(keys)} {'is' if len(keys) == 1 else 'are'} for {name} only"
                for keys, name in groups
                if keys
            )
            raise ValueError(
                f"got {', '.join(wrong)} with cluster {self.cluster!r}; {where}: drop them or "
                "change cluster"
            )
        if kind == "address" and self.tls == "temporary":
            raise ValueError(
                f"got tls 'temporary' with cluster {self.cluster!r}; a running scheduler has "
                "credentials of its own: give its files as tls: {ca_file, cert, key}"
            )
        if self.min_jobs > self.max_jobs:
            raise ValueError(
                f"got min_jobs {self.min_jobs} above max_jobs {self.max_jobs}; jobs are "
                "requested between the two"
            )
        if kind in BATCH_SYSTEMS:
            self._check_walltime(kind)
        missing = missing_hpc_packages(kind in BATCH_SYSTEMS, self.tls_mode == "temporary")
        if missing:
            tls = " with temporary TLS credentials" if self.tls_mode == "temporary" else ""
            raise ValueError(
                f"got cluster {self.cluster!r}{tls}; that needs {' and '.join(missing)}, not "
                f"installed here: {HPC_EXTRA}"
            )
        return self

    def _check_walltime(self, system: str) -> None:
        if self.jobs.walltime is None:
            return  # the job's walltime comes from jobqueue.yaml: checked when the run starts
        try:
            walltime = walltime_seconds(self.jobs.walltime, system)
        except ValueError as err:
            raise ValueError(f"got jobs.walltime {self.jobs.walltime!r}; {err}") from None
        try:
            worker_lifetime(walltime, *self.lifetime_seconds())
        except ValueError as err:
            given = {"lifetime": self.lifetime, "lifetime_stagger": self.lifetime_stagger}
            got = " and ".join(f"{k} {v!r}" for k, v in given.items() if v is not None)
            raise ValueError(f"got {got}; {err}") from None

    def lifetime_seconds(self) -> tuple[float | None, float | None]:
        """``lifetime`` and ``lifetime_stagger`` in seconds (None where left out)."""
        return tuple(  # type: ignore[return-value]
            None if v is None else duration_seconds(v)
            for v in (self.lifetime, self.lifetime_stagger)
        )


class Workflow(_Model):
    """A complete mapping job: regions x tasks for one year."""

    name: SafeName
    year: int = Field(ge=2015, le=datetime.date.today().year)  # Sentinel-2A launched in 2015
    regions: list[Region] = Field(min_length=1)
    stac: StacConfig
    cube: CubeConfig = Field(default_factory=CubeConfig)
    model: ModelConfig
    tasks: list[TaskConfig] = Field(min_length=1)
    outputs: OutputsConfig
    dask: DaskConfig = Field(default_factory=DaskConfig)
    _source: Path | None = PrivateAttr(None)

    @field_validator("regions")
    @classmethod
    def _unique_regions(cls, value: list[Region]) -> list[Region]:
        _unique([r.name for r in value], "regions")
        return value

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, value: list[TaskConfig]) -> list[TaskConfig]:
        _unique([t.name for t in value], "tasks")
        seen: set[str] = set()
        for name in [VALID_MONTHS, *(n for t in value for n in t.layer_names())]:
            if name.casefold() in seen:
                raise ValueError(
                    f"two outputs of a region would be named {name}.tif (tasks write <name>.tif "
                    "and <name>_confidence.tif, similarity tasks <name>_<text>.tif): rename a "
                    "task or reword a text"
                )
            seen.add(name.casefold())
        return value

    @property
    def source(self) -> Path | None:
        """The workflow file this was read from, if any."""
        return self._source

    def region_folder(self, region: Region) -> Path:
        """Where the region's maps go: a folder of ``outputs.dir`` named after it."""
        return self.outputs.dir / region.name

    def tiles(self, region: Region) -> list[Tile]:
        """The region's tiles on this workflow's grid (``cube.tile_size`` x ``cube.resolution``)."""
        return tiles_for_region(
            region.area, self.cube.tile_size, self.cube.resolution, name=region.name
        )

    def summary(self) -> str:
        """A few lines saying what the workflow will do, for ``timesenclip validate``."""
        lines = [f"workflow {self.name!r}: year {self.year}, outputs in {self.outputs.dir}"]
        for region in self.regions:
            tiles = self.tiles(region)
            crs = ", ".join(f"EPSG:{e}" for e in sorted({t.epsg for t in tiles}))
            bbox = ", ".join(f"{v:g}" for v in region.bbox)
            lines.append(f"  region {region.name}: [{bbox}], {len(tiles)} tile(s) in {crs}")
        for task in self.tasks:
            if task.mode == "similarity":
                lines.append(f"  task {task.name}: similarity to {len(task.texts)} text(s)")
                continue
            label = task.classes if isinstance(task.classes, str) else "custom"
            lines.append(f"  task {task.name}: {len(task.class_specs())} classes ({label})")
        return "\n".join(lines)
