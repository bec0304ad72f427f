"""Ground photos: folder layouts, embedding files, resumable embedding, photo pooling."""

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from encoder.ground import (
    DIRECTIONS,
    GroundEmbeddingError,
    GroundEmbeddings,
    PhotoPooling,
    ZarrGroundWriter,
    embed_photo_folders,
    find_photos,
)
from fixtures.tiny import write_tiny_clip

DIM = 16


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny", embed_dim=DIM)


def photo(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    for i, d in enumerate("WENS"):
        photo(root / "P1" / f"{d}.jpg", i)
    photo(root / "P2" / "n.PNG", 10)  # any case, png too
    photo(root / "P3_W.jpeg", 11)  # flat layout
    photo(root / "P3_S.jpg", 12)
    (root / "P2" / "notes.txt").write_text("ignored")
    return root


def test_find_photos_both_layouts(photos):
    found = find_photos(photos)
    assert sorted(found) == ["P1", "P2", "P3"]
    assert sorted(found["P1"]) == sorted(DIRECTIONS)
    assert list(found["P2"]) == ["N"] and sorted(found["P3"]) == ["S", "W"]
    photo(photos / "P3" / "W.jpg", 13)  # a second W photo for P3
    with pytest.raises(GroundEmbeddingError, match="two W photos"):
        find_photos(photos)


def test_find_photos_errors(tmp_path):
    with pytest.raises(GroundEmbeddingError, match="does not exist"):
        find_photos(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GroundEmbeddingError, match="no photos found"):
        find_photos(tmp_path / "empty")


@pytest.mark.parametrize("suffix", [".pt", ".npz", ".zarr"])
def test_embedding_files_roundtrip_and_lookup(tmp_path, suffix):
    rng = np.random.default_rng(0)
    data = {k: rng.normal(size=DIM).astype(np.float32) for k in ("AT_123W", "AT_123S", "X9N")}
    path = GroundEmbeddings.from_mapping(data).save(tmp_path / f"g{suffix}")
    back = GroundEmbeddings.load(path)
    assert sorted(back.keys) == sorted(data) and back.dim == DIM
    vectors, mask = back.photos("123", country="AT")
    assert mask.tolist() == [True, False, False, True]
    np.testing.assert_array_equal(vectors[0], data["AT_123W"])
    np.testing.assert_array_equal(vectors[1], np.zeros(DIM))
    assert back.photos("123")[1].tolist() == mask.tolist()  # the bare LUCAS id also finds it
    assert back.photos("X9")[1].tolist() == [False, False, True, False]
    assert not back.photos("missing")[1].any()


def test_embedding_file_errors(tmp_path):
    with pytest.raises(GroundEmbeddingError, match="direction letter"):
        GroundEmbeddings(["AT_1X"], np.zeros((1, 3)))
    (tmp_path / "g.json").write_text("{}")
    with pytest.raises(GroundEmbeddingError, match="unknown ground embedding format"):
        GroundEmbeddings.load(tmp_path / "g.json")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(GroundEmbeddingError, match="expected a dict"):
        GroundEmbeddings.load(tmp_path / "list.pt")


def test_zarr_writer_recovers_from_a_torn_append(tmp_path):
    path = tmp_path / "g.zarr"
    writer = ZarrGroundWriter(path, 3)
    writer.append(["aW", "aE"], np.ones((2, 3)))
    writer.group["embedding"].append(np.ones((1, 3), np.float32), axis=0)  # crash before the key
    reopened = ZarrGroundWriter(path, 3)
    assert reopened.keys() == ["aW", "aE"] and reopened.group["embedding"].shape == (2, 3)
    with pytest.raises(GroundEmbeddingError, match="3-d embeddings"):
        ZarrGroundWriter(path, 4)


def expected_embedding(clip_dir, path):
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{clip_dir}")
    with torch.no_grad(), Image.open(path) as image:
        return model.eval().encode_image(preprocess(image.convert("RGB"))[None])[0].numpy()


@pytest.mark.parametrize("suffix", [".zarr", ".pt"])
def test_embed_photo_folders_is_resumable(photos, clip_dir, tmp_path, suffix):
    out = tmp_path / f"emb{suffix}"
    kwargs = {
        "clip_model": f"local-dir:{clip_dir}",
        "device": "cpu",
        "batch_size": 3,
        "chunk_points": 2,
        "progress": False,
    }
    summary = embed_photo_folders(photos, out, **kwargs)
    assert (summary.points_total, summary.points_skipped, summary.photos_embedded) == (3, 0, 7)
    stored = GroundEmbeddings.load(out)
    assert sorted(stored.keys) == sorted(["P1W", "P1E", "P1N", "P1S", "P2N", "P3W", "P3S"])
    vectors, mask = stored.photos("P3")
    assert mask.tolist() == [True, False, False, True]
    np.testing.assert_allclose(
        vectors[3], expected_embedding(clip_dir, photos / "P3_S.jpg"), rtol=1e-4, atol=1e-5
    )
    # A rerun skips what is done; a new point and a broken photo are picked up.
    photo(photos / "P4" / "E.jpg", 20)
    (photos / "P4" / "W.jpg").write_bytes(b"not an image")
    again = embed_photo_folders(photos, out, **kwargs)
    assert (again.points_skipped, again.photos_embedded, again.photos_failed) == (3, 1, 1)
    assert len(GroundEmbeddings.load(out)) == 8


def test_pooling_mean_attention_and_mask():
    torch.manual_seed(0)
    photos = torch.randn(3, 4, DIM)
    mask = torch.tensor([[True] * 4, [True, False, True, False], [False] * 4])
    mean = PhotoPooling(DIM, "mean")(photos, mask)
    expected = torch.nn.functional.normalize(photos[1, [0, 2]].mean(0), dim=0)
    torch.testing.assert_close(mean[1], expected)
    torch.testing.assert_close(mean[0].norm(), torch.tensor(1.0))
    assert mean[2].isnan().all()  # no photo at all
    attention = PhotoPooling(DIM, "attention")
    torch.testing.assert_close(attention(photos, mask)[:2], mean[:2])  # starts as mean pooling
    with torch.no_grad():
        attention.attention.weight.normal_()
    pooled = attention(photos, mask)
    changed = photos.clone()
    changed[1, [1, 3]] = 100.0  # absent photos never matter
    torch.testing.assert_close(attention(changed, mask)[1], pooled[1])
    weights = (attention.attention(photos[1, [0, 2]]).squeeze(-1)).softmax(0)
    expected = torch.nn.functional.normalize((weights[:, None] * photos[1, [0, 2]]).sum(0), dim=0)
    torch.testing.assert_close(pooled[1], expected)
    with pytest.raises(ValueError, match="photo pooling 'max'"):
        PhotoPooling(DIM, "max")
