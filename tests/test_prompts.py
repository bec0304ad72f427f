"""Class sets, templates and cached prompt embeddings (tiny offline open_clip model)."""

import json
from pathlib import Path

import open_clip
import pytest
import torch
import yaml

from encoder import prompts
from encoder.prompts import (
    ClassSpec,
    TextEncoder,
    class_prompts,
    class_set,
    class_set_names,
    is_class_set,
    resolve_classes,
    template_set,
    template_set_names,
)
from fixtures.tiny import write_tiny_clip
from timesenclip.common.errors import TimeSenCLIPError
from timesenclip.common.files import file_sha256

YAML_PATH = Path(__file__).resolve().parents[1] / "encoder" / "data" / "classes.yaml"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1},
}
SETS = [
    ("land_cover", "lc", 8),
    ("land_use", "lu", 16),
    ("crop_type", "crop", 40),
    ("bioregion", "bioregion", 12),
    ("eunis_habitat", "eunis", 44),
    ("country", "nuts", 28),
]


def _write_tiny(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CFG)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _write_tiny(tmp_path_factory.mktemp("clip") / "tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_other(tmp_path_factory) -> Path:
    return _write_tiny(tmp_path_factory.mktemp("clip") / "tiny", seed=1)


def _manual(folder: Path, prompts: list[list[str]]) -> torch.Tensor:
    model = open_clip.create_model(f"local-dir:{folder}").eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    rows = []
    with torch.no_grad():
        for group in prompts:
            each = model.encode_text(tokenizer(group))
            each = each / each.norm(dim=-1, keepdim=True)
            mean = each.mean(0)
            rows.append(mean / mean.norm())
    return torch.stack(rows)


# --- class sets ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "key", "size"), SETS)
def test_builtin_sets_match_yaml(name, key, size):
    reference = yaml.safe_load(YAML_PATH.read_text())["tasks"][key]["classes"]
    classes = class_set(name)
    assert len(classes) == size
    assert [c.name for c in classes] == [e["name"] for e in reference]
    assert [list(c.prompts) for c in classes] == [e["prompts"] for e in reference]
    assert class_set(key) == classes


def test_set_names_and_aliases():
    assert class_set_names() == tuple(name for name, _, _ in SETS)
    assert class_set("Land-Cover") == class_set("land_cover")
    for bad in ("scenicness", "landcover", ""):
        assert not is_class_set(bad)
        with pytest.raises(TimeSenCLIPError, match=r"land_cover.*eunis_habitat"):
            class_set(bad)
    for name, key, _ in SETS:
        assert is_class_set(name) and is_class_set(key.upper()) and is_class_set(f" {name} ")
    assert is_class_set("Land-Cover") and not is_class_set("vineyard, olive grove")


def test_resolve_user_classes():
    classes = resolve_classes(
        [
            "water",
            {"name": " forest ", "color": "#00AA11", "prompts": ["a forest", "woods"]},
            {"name": "field", "prompts": "a wheat field"},
            ClassSpec("town", color="#123456"),
        ]
    )
    assert classes == [
        ClassSpec("water"),
        ClassSpec("forest", ("a forest", "woods"), "#00aa11"),
        ClassSpec("field", ("a wheat field",)),
        ClassSpec("town", None, "#123456"),
    ]
    assert resolve_classes("crop") == class_set("crop_type")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([], "non-empty list"),
        (5, "non-empty list"),
        (["water", "Water"], "appears twice"),
        (["a", "  "], "empty"),
        ([{"color": "#000000"}], "name \\(required\\)"),
        ([{"name": "a", "colour": "#000000"}], "unknown: colour"),
        ([{"name": "a", "prompts": []}], "non-empty list of non-empty strings"),
        ([{"name": "a", "prompts": ["ok", ""]}], "non-empty list of non-empty strings"),
        ([3], "neither a name"),
    ],
)
def test_resolve_rejects_bad_input(spec, message):
    with pytest.raises(TimeSenCLIPError, match=message):
        resolve_classes(spec)


# --- templates ------------------------------------------------------------------------------


def test_template_sets():
    reference = yaml.safe_load(YAML_PATH.read_text())["template_sets"]
    assert set(template_set_names()) == set(reference)
    for name in template_set_names():
        assert template_set(name) == reference[name]
    assert template_set() == ["{}"]
    assert len(template_set("LC_Generic")) == 6
    assert template_set(["a map of {}", "{} from above"]) == ["a map of {}", "{} from above"]
    with pytest.raises(TimeSenCLIPError, match=r"unknown template set 'nope'.*LC_Generic"):
        template_set("nope")


@pytest.mark.parametrize("bad", [[], ["no slot"], ["{} and {}"], ["{x}"], ["{0} {1}"], [3]])
def test_bad_templates(bad):
    with pytest.raises(TimeSenCLIPError):
        template_set(bad)


def test_class_prompts_rule():
    assert class_prompts("land_cover")[:2] == [["Artificial Land"], ["Cropland"]]
    classes = [ClassSpec("forest", ("a forest", "woods")), ClassSpec("water")]
    assert class_prompts(classes, ["a {}", "b {}"]) == [
        ["a a forest", "b a forest", "a woods", "b woods"],
        ["a water", "b water"],
    ]
    assert class_prompts(["x"], "Generic")[0][1] == "a photo of a x."


# --- text encoder --------------------------------------------------------------------------


def test_embeddings_equal_manual_ensemble(tiny, tmp_path):
    encoder = TextEncoder(f"local-dir:{tiny}", cache_dir=tmp_path)
    got = encoder.class_embeddings("land_cover", "LC_Generic")
    assert got.shape == (8, 16) and got.dtype == torch.float32
    torch.testing.assert_close(got.norm(dim=1), torch.ones(8))
    expected = _manual(tiny, class_prompts("land_cover", "LC_Generic"))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_embeddings_usable_in_autograd(tiny, tmp_path):
    for _ in range(2):  # a cache miss, then a hit
        weights = TextEncoder(f"local-dir:{tiny}", cache_dir=tmp_path).class_embeddings(["a", "b"])
        x = torch.ones(16, requires_grad=True)
        (weights @ x).sum().backward()
        torch.testing.assert_close(x.grad, weights.sum(0))


def test_cache_hit_skips_model(tiny, tmp_path, monkeypatch):
    first = TextEncoder(f"local-dir:{tiny}", cache_dir=tmp_path).class_embeddings(["a", "b"])
    files = list((tmp_path / "prompts").iterdir())
    assert [f.suffix for f in files] == [".npy"]

    def boom(*args, **kwargs):
        raise AssertionError("model created on a cache hit")

    monkeypatch.setattr(open_clip, "create_model", boom)
    monkeypatch.setattr(open_clip, "get_tokenizer", boom)
    second = TextEncoder(f"local-dir:{tiny}", cache_dir=tmp_path).class_embeddings(["a", "b"])
    assert torch.equal(first, second)


def test_cache_key_depends_on_prompts_templates_weights(tiny, tiny_other, tmp_path):
    enc = TextEncoder(f"local-dir:{tiny}", cache_dir=tmp_path)
    other = TextEncoder(f"local-dir:{tiny_other}", cache_dir=tmp_path)
    paths = {
        enc.cache_path(class_prompts(["a", "b"])),
        enc.cache_path(class_prompts(["a", "c"])),
        enc.cache_path(class_prompts(["a", "b"], "Generic")),
        enc.cache_path(class_prompts([{"name": "a", "prompts": ["x"]}, "b"])),
        other.cache_path(class_prompts(["a", "b"])),
    }
    assert len(paths) == 5
    assert enc.cache_path(class_prompts(["a", "b"])) == enc.cache_path([["a"], ["b"]])
    assert not torch.allclose(enc.class_embeddings(["a", "b"]), other.class_embeddings(["a", "b"]))


def test_default_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TIMESENCLIP_CACHE", str(tmp_path))
    assert TextEncoder().cache_dir == tmp_path


def test_auto_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert TextEncoder(device="auto").device == torch.device("cpu")
    with pytest.raises(TimeSenCLIPError, match="asks for a GPU"):
        TextEncoder(device="cuda")


def test_weights_file_hashed_once_until_rewritten(tmp_path, monkeypatch):
    calls = []

    def counting_sha256(path):
        calls.append(path)
        return file_sha256(path)

    monkeypatch.setattr(prompts, "file_sha256", counting_sha256)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"first")
    ids = [TextEncoder("x", pretrained=weights).weights_id() for _ in range(2)]
    assert ids == [f"file:{file_sha256(weights)}"] * 2 and len(calls) == 1
    weights.write_bytes(b"second version")  # another size: the cache must not answer
    assert TextEncoder("x", pretrained=weights).weights_id() == f"file:{file_sha256(weights)}"
    assert len(calls) == 2


def test_write_tiny_clip_keeps_the_global_generator(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    write_tiny_clip(tmp_path / "a", seed=4)
    assert torch.equal(torch.rand(3), expected)
    write_tiny_clip(tmp_path / "b", seed=4)
    files = [(tmp_path / d / "open_clip_pytorch_model.bin") for d in "ab"]
    assert file_sha256(files[0]) == file_sha256(files[1])


def test_corrupt_cache_entry_is_recomputed(tiny, tmp_path):
    enc = TextEncoder(f"local-dir:{tiny}", cache_dir=tmp_path)
    good = enc.class_embeddings(["a", "b"])
    path = enc.cache_path([["a"], ["b"]])
    path.write_bytes(b"not numpy")
    fresh = TextEncoder(f"local-dir:{tiny}", cache_dir=tmp_path)
    torch.testing.assert_close(fresh.class_embeddings(["a", "b"]), good)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_local_weights_file(tiny, tmp_path):
    config = tmp_path / "tsc-tiny-test.json"
    config.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(config)
    weights = tiny / "open_clip_pytorch_model.bin"
    enc = TextEncoder("tsc-tiny-test", pretrained=str(weights), cache_dir=tmp_path / "cache")
    assert enc.weights_id().startswith("file:")
    expected = TextEncoder(f"local-dir:{tiny}", cache_dir=tmp_path / "c2").class_embeddings("lc")
    torch.testing.assert_close(enc.class_embeddings("lc"), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("model", "pretrained", "message"),
    [
        ("NoSuchModel-XYZ", "openai", "NoSuchModel-XYZ"),
        ("ViT-B-32", "no-such-tag", "no-such-tag"),
    ],
)
def test_model_creation_failure_is_clear(tmp_path, model, pretrained, message):
    enc = TextEncoder(model, pretrained=pretrained, cache_dir=tmp_path)
    with pytest.raises(TimeSenCLIPError, match=f"could not create the CLIP model.*{message}"):
        enc.class_embeddings(["a"])


def test_local_dir_without_config_or_weights(tmp_path):
    with pytest.raises(TimeSenCLIPError, match=r"open_clip_config\.json"):
        TextEncoder(f"local-dir:{tmp_path / 'missing'}").class_embeddings(["a"])
    folder = tmp_path / "noweights"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    with pytest.raises(TimeSenCLIPError, match="could not create"):
        TextEncoder(f"local-dir:{folder}", cache_dir=tmp_path).class_embeddings(["a"])
