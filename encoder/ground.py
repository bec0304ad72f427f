"""Ground-photo embeddings: photo folders -> CLIP image embeddings, embedding files, photo pooling.

An embedding file maps LUCAS-style keys ``<point key><W|E|N|S>`` (the direction is the last
character; LUCAS keys look like ``AT_47243144N``) to one image embedding each. Three formats, chosen
by the file name: ``.pt`` (a ``torch.save`` dict of 1-D tensors, as the reference publishes),
``.npz`` (one array per key) and ``.zarr`` (a group with ``key`` (M,) strings and ``embedding``
(M, D) float32, appended in chunks; best for large photo sets).

Photo folder layouts accepted by :func:`find_photos` (``.jpg``, ``.jpeg`` or ``.png``, any case):

- ``PHOTOS/<point_id>/W.jpg`` (and ``E``, ``N``, ``S``): one folder per point;
- ``PHOTOS/<point_id>_W.jpg`` (and ``_E``, ``_N``, ``_S``): flat files.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encoder.clip import open_clip_model
from encoder.device import resolve_device
from timesenclip.common.atomic import atomic_path
from timesenclip.common.errors import TimeSenCLIPError

log = logging.getLogger(__name__)

DIRECTIONS = ("W", "E", "N", "S")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
GROUND_FORMAT = "timesenclip-ground-embeddings"
_FLAT_NAME = re.compile(r"^(?P<point>.+)_(?P<dir>[WENSwens])$")
_COUNTRY_KEY = re.compile(r"^[A-Za-z]{2}_(?P<point>.+)$")


class GroundEmbeddingError(TimeSenCLIPError):
    """A photo folder or an embedding file is missing, malformed or inconsistent."""


# --- photo folders ------------------------------------------------------------------------------


def find_photos(photos_dir: str | Path) -> dict[str, dict[str, Path]]:
    """Point id -> {direction: photo path}, from either layout of the module docstring."""
    root = Path(photos_dir)
    if not root.is_dir():
        raise GroundEmbeddingError(f"photo folder {root} does not exist or is not a folder")
    points: dict[str, dict[str, Path]] = {}

    def add(point: str, direction: str, path: Path) -> None:
        photos = points.setdefault(point, {})
        if direction in photos:
            raise GroundEmbeddingError(
                f"point {point!r} has two {direction} photos ({photos[direction]} and {path}): "
                "keep one photo per direction"
            )
        photos[direction] = path

    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            for photo in sorted(entry.iterdir()):
                if photo.suffix.lower() in IMAGE_SUFFIXES and photo.stem.upper() in DIRECTIONS:
                    add(entry.name, photo.stem.upper(), photo)
        elif entry.suffix.lower() in IMAGE_SUFFIXES and (m := _FLAT_NAME.match(entry.stem)):
            add(m["point"], m["dir"].upper(), entry)
    if not points:
        raise GroundEmbeddingError(
            f"no photos found in {root}: expected <point_id>/W.jpg (E, N, S) folders or "
            "<point_id>_W.jpg files (.jpg, .jpeg or .png)"
        )
    return points


# --- embedding files ----------------------------------------------------------------------------


class GroundEmbeddings:
    """LUCAS-style photo embeddings: ``keys[i]`` = ``<point key><direction>`` -> ``vectors[i]``."""

    def __init__(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(keys) != len(vectors):
            raise GroundEmbeddingError(
                f"ground embeddings need one 1-D vector per key: {len(keys)} keys, "
                f"vectors of shape {vectors.shape}"
            )
        self.keys = [str(k) for k in keys]
        self.vectors = vectors
        self._points: dict[str, dict[str, int]] = {}
        for row, key in enumerate(self.keys):
            if len(key) < 2 or key[-1].upper() not in DIRECTIONS:
                raise GroundEmbeddingError(
                    f"ground embedding key {key!r} does not end with a direction letter "
                    f"({'/'.join(DIRECTIONS)}): expected keys like 'AT_47243144N'"
                )
            self._points.setdefault(key[:-1], {})[key[-1].upper()] = row
        # LUCAS keys carry a country prefix the satellite side may not know: index the bare ids too.
        bare: dict[str, list[str]] = {}
        for point in self._points:
            if m := _COUNTRY_KEY.match(point):
                bare.setdefault(m["point"], []).append(point)
        self._bare = {pid: keys[0] for pid, keys in bare.items() if len(keys) == 1}

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.keys)

    def photos(self, point_id: str, country: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(len(DIRECTIONS), D) embeddings in W, E, N, S order and the (4,) bool photo mask.

        Tries ``<country>_<point_id>``, then ``point_id``, then a unique LUCAS key whose id part is
        ``point_id``. Absent directions are zero rows with mask False (all False: no photo at all).
        """
        candidates = [f"{country}_{point_id}"] if country else []
        candidates += [point_id, self._bare.get(point_id, "")]
        rows = next((self._points[c] for c in candidates if c in self._points), {})
        out = np.zeros((len(DIRECTIONS), self.dim), dtype=np.float32)
        mask = np.zeros(len(DIRECTIONS), dtype=bool)
        for i, direction in enumerate(DIRECTIONS):
            if direction in rows:
                out[i] = self.vectors[rows[direction]]
                mask[i] = True
        return out, mask

    @classmethod
    def load(cls, path: str | Path) -> GroundEmbeddings:
        """Read a ``.pt``, ``.npz`` or ``.zarr`` embedding file (see the module docstring)."""
        path = Path(path)
        if not path.exists():
            raise GroundEmbeddingError(f"ground embedding file {path} does not exist")
        kind = _file_kind(path)
        if kind == "zarr":
            import zarr

            group = zarr.open_group(path, mode="r")
            keys = [str(k) for k in group["key"][:]]
            return cls(keys, group["embedding"][: len(keys)])
        if kind == "npz":
            with np.load(path, allow_pickle=False) as data:
                return cls.from_mapping({k: data[k] for k in data.files}, path)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a bad pickle
            raise GroundEmbeddingError(f"could not read {path} as a torch file: {exc}") from exc
        if not isinstance(data, Mapping):
            raise GroundEmbeddingError(
                f"{path} holds a {type(data).__name__}, expected a dict of key -> embedding"
            )
        return cls.from_mapping(data, path)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Tensor | np.ndarray], source: object = "dict"):
        """From a key -> 1-D vector mapping (torch or numpy values)."""
        if not data:
            return cls([], np.zeros((0, 0), np.float32))
        keys = list(data)
        try:
            vectors = np.stack([np.asarray(torch.as_tensor(data[k]).float()) for k in keys])
        except (RuntimeError, ValueError, TypeError) as exc:
            raise GroundEmbeddingError(
                f"{source}: embeddings must be 1-D vectors of one length: {exc}"
            ) from exc
        return cls(keys, vectors.reshape(len(keys), -1))

    def save(self, path: str | Path) -> Path:
        """Write all embeddings to a ``.pt``, ``.npz`` (atomically) or ``.zarr`` file."""
        path = Path(path)
        kind = _file_kind(path)
        if kind == "zarr":
            ZarrGroundWriter(path, self.dim, overwrite=True).append(self.keys, self.vectors)
            return path
        with atomic_path(path) as tmp:
            if kind == "npz":
                with open(tmp, "wb") as f:
                    np.savez(f, **dict(zip(self.keys, self.vectors, strict=True)))
            else:
                vectors = torch.from_numpy(self.vectors)
                torch.save(dict(zip(self.keys, vectors, strict=True)), tmp)
        return path


def _file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        return "pt"
    if suffix in (".npz", ".zarr"):
        return suffix[1:]
    raise GroundEmbeddingError(
        f"{path}: unknown ground embedding format {suffix!r}; use .pt, .npz or .zarr"
    )


class ZarrGroundWriter:
    """Append-only ``.zarr`` embedding group; a crash between appends loses at most one chunk."""

    def __init__(self, path: Path, dim: int, overwrite: bool = False, attrs: dict | None = None):
        import zarr

        self.path = Path(path)
        mode = "w" if overwrite or not self.path.exists() else "r+"
        self.group = zarr.open_group(self.path, mode=mode)
        if mode == "w":
            self.group.attrs.update({"format": GROUND_FORMAT, **(attrs or {})})
            self.group.create_array("key", shape=(0,), chunks=(4096,), dtype=str)
            self.group.create_array(
                "embedding", shape=(0, dim), chunks=(4096, dim), dtype="float32"
            )
        elif self.group["embedding"].shape[1] != dim:
            raise GroundEmbeddingError(
                f"{self.path} holds {self.group['embedding'].shape[1]}-d embeddings, "
                f"the model gives {dim}-d: write to a new file"
            )
        # Embeddings are appended before keys, so `key` is the committed length.
        n = self.group["key"].shape[0]
        if self.group["embedding"].shape[0] != n:
            self.group["embedding"].resize((n, dim))

    def keys(self) -> list[str]:
        return [str(k) for k in self.group["key"][:]]

    def append(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        if len(keys):
            self.group["embedding"].append(np.asarray(vectors, np.float32), axis=0)
            self.group["key"].append(np.asarray(list(keys), dtype=object), axis=0)


# --- embedding photos ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GroundEmbedSummary:
    """What :func:`embed_photo_folders` did."""

    out: Path
    points_total: int
    points_skipped: int  # already in the output (resume)
    photos_embedded: int
    photos_failed: int  # unreadable images, logged and left out


class _PhotoDataset(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], transform) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, bool]:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.paths[i]) as image:
                return self.transform(image.convert("RGB")), True
        except (OSError, UnidentifiedImageError) as exc:
            log.warning("skipping unreadable photo %s: %s", self.paths[i], exc)
            return torch.zeros(1), False


def _collate(items: list[tuple[Tensor, bool]]) -> tuple[Tensor | None, Tensor]:
    ok = torch.tensor([good for _, good in items])
    images = [img for img, good in items if good]
    return (torch.stack(images) if images else None), ok


def embed_photo_folders(
    photos_dir: str | Path,
    out: str | Path,
    *,
    clip_model: str = "ViT-B-32",
    clip_pretrained: str | None = "openai",
    device: str | None = "auto",
    batch_size: int = 64,
    chunk_points: int = 512,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> GroundEmbedSummary:
    """Embed every photo under ``photos_dir`` with the CLIP image tower into ``out``; resumable.

    ``out`` is a ``.zarr`` group (appended every ``chunk_points`` points) or a ``.pt``/``.npz``
    dict (rewritten atomically every ``chunk_points`` points). Points already in ``out`` are
    skipped, so an interrupted run continues where it stopped. Keys are ``<point_id><W|E|N|S>``;
    the vectors are the raw ``encode_image`` outputs (pooling normalises later).
    """
    from tqdm.auto import tqdm

    if batch_size < 1 or chunk_points < 1:
        raise GroundEmbeddingError("batch_size and chunk_points must be at least 1")
    out = Path(out)
    kind = _file_kind(out)
    points = find_photos(photos_dir)
    dev = resolve_device(device)
    clip, transform = open_clip_model(clip_model, clip_pretrained, dev, cache_dir)
    dim = int(clip.visual.output_dim)
    attrs = {"model": clip_model, "pretrained": clip_pretrained, "directions": list(DIRECTIONS)}
    if kind == "zarr":
        writer = ZarrGroundWriter(out, dim, attrs=attrs)
        done_keys = writer.keys()
        stored: GroundEmbeddings | None = None
    else:
        stored = (
            GroundEmbeddings.load(out) if out.exists() else GroundEmbeddings([], np.zeros((0, dim)))
        )
        if len(stored) and stored.dim != dim:
            raise GroundEmbeddingError(
                f"{out} holds {stored.dim}-d embeddings, the model gives {dim}-d: write elsewhere"
            )
        done_keys = stored.keys
    done = {k[:-1] for k in done_keys}
    todo = [p for p in points if p not in done]
    embedded = failed = 0
    bar = tqdm(total=len(todo), desc="ground-embed", unit="point", disable=not progress)
    for start in range(0, len(todo), chunk_points):
        keys, paths = [], []
        for point in todo[start : start + chunk_points]:
            for direction, path in sorted(points[point].items()):
                keys.append(f"{point}{direction}")
                paths.append(path)
        vectors, ok = _embed_images(clip, transform, paths, dev, batch_size, num_workers)
        keys = [k for k, good in zip(keys, ok, strict=True) if good]
        if kind == "zarr":
            writer.append(keys, vectors)
        else:
            stored = GroundEmbeddings(stored.keys + keys, np.concatenate([stored.vectors, vectors]))
            stored.save(out)
        embedded += len(keys)
        failed += int((~ok).sum())
        bar.update(min(chunk_points, len(todo) - start))
    bar.close()
    return GroundEmbedSummary(out, len(points), len(points) - len(todo), embedded, failed)


def _embed_images(clip, transform, paths, device, batch_size, num_workers):
    """(n_ok, D) float32 embeddings of the readable photos and the (n,) bool readable mask."""
    loader = torch.utils.data.DataLoader(
        _PhotoDataset(paths, transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    parts, oks = [], []
    with torch.inference_mode():
        for images, ok in loader:
            oks.append(ok.numpy())
            if images is not None:
                parts.append(clip.encode_image(images.to(device)).float().cpu().numpy())
    vectors = np.concatenate(parts) if parts else np.zeros((0, clip.visual.output_dim), np.float32)
    return vectors, np.concatenate(oks) if oks else np.zeros(0, bool)


# --- pooling ------------------------------------------------------------------------------------


class PhotoPooling(nn.Module):
    """Pool a point's photo embeddings (N, P, D) with mask (N, P) into one unit vector (N, D).

    ``mean``: mean over the present photos. ``attention``: ``Linear(D, 1, bias=False)`` scores,
    softmax over the present photos, weighted sum. The score layer starts at zero, so training
    starts from mean pooling. Rows without any photo come out as NaN.
    """

    def __init__(self, dim: int, mode: str = "mean") -> None:
        super().__init__()
        if mode not in ("mean", "attention"):
            raise TimeSenCLIPError(f"photo pooling {mode!r} is unknown: use 'mean' or 'attention'")
        self.mode = mode
        self.attention = nn.Linear(dim, 1, bias=False) if mode == "attention" else None
        if self.attention is not None:
            nn.init.zeros_(self.attention.weight)

    def forward(self, photos: Tensor, mask: Tensor) -> Tensor:
        if self.attention is None:
            scores = torch.zeros(mask.shape, dtype=photos.dtype, device=photos.device)
        else:
            scores = self.attention(photos).squeeze(-1)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=1)
        return F.normalize((weights.unsqueeze(-1) * photos).sum(1), dim=-1)
