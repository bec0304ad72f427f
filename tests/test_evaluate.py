"""Evaluation: metric arithmetic, retrieval recall, and the report of a real (tiny) checkpoint."""

import json

import h5py
import numpy as np
import pytest
import torch
import yaml

from encoder.checkpoint import EncoderMetadata, load_encoder, save_checkpoint
from encoder.conventions import B4_FIRST, Conventions
from encoder.evaluate import (
    BAND_CANDIDATES,
    classification_metrics,
    read_eval_pairs,
    retrieval_recall,
    run_evaluation,
    transductive_scores,
)
from encoder.pairs import PairsError
from encoder.pairs_store import read_pairs, write_pairs
from encoder.preprocess import normalize
from encoder.prompts import TextEncoder, reference_classes
from encoder.training.trainer import run_training
from fixtures.pairs import synthetic_pairs
from fixtures.tiny import tiny_encoder, write_tiny_clip
from pipeline.cli import main

DIM = 16


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 1, 2, 2, 2])
    scores = np.array(
        [
            [0.9, 0.1, 0.0],  # 0 -> 0
            [0.1, 0.8, 0.3],  # 0 -> 1 (true class second)
            [0.2, 0.7, 0.1],  # 1 -> 1
            [0.1, 0.2, 0.7],  # 2 -> 2
            [0.6, 0.1, 0.3],  # 2 -> 0 (true class second)
            [0.0, 0.3, 0.9],  # 2 -> 2
        ]
    )
    m = classification_metrics(labels, scores, ["a", "b", "c"])
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["top3"] == 1.0  # K = 3 < 5: top-K
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    recall = [1 / 2, 1.0, 2 / 3]
    precision = [1 / 2, 1 / 2, 1.0]
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recall))
    for row, p, r in zip(m["per_class"], precision, recall, strict=True):
        assert row["precision"] == pytest.approx(p) and row["recall"] == pytest.approx(r)
        assert row["f1"] == pytest.approx(2 * p * r / (p + r))
    assert [r["support"] for r in m["per_class"]] == [2, 1, 3]
    five = classification_metrics(np.array([0, 5]), np.eye(6)[[1, 5]], list("abcdef"))
    assert five["top5"] == 1.0 and five["top1"] == 0.5
    assert five["per_class"][2]["recall"] is None  # absent classes do not count as failures
    assert five["balanced_accuracy"] == 0.5


def test_macro_f1_counts_classes_predicted_but_never_true():
    """As sklearn's f1_score(average="macro"): classes 0 (true), 1 (only predicted), 2 (both)."""
    labels = np.array([0, 0, 2])
    m = classification_metrics(labels, np.eye(4)[[0, 1, 2]], list("abcd"))
    f1 = [2 * 1.0 * 0.5 / 1.5, 0.0, 1.0]  # class d: neither true nor predicted, left out
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert [r["f1"] for r in m["per_class"]] == pytest.approx([*f1, None])
    assert m["balanced_accuracy"] == pytest.approx(0.75)  # recall stays over true classes


def test_transductive_scores_divide_by_class_means():
    cosine = np.array([[0.2, 0.4], [0.0, 0.8]])
    shifted = cosine / 2 + 1
    expected = shifted / (shifted.mean(0) + 1e-6)
    np.testing.assert_allclose(transductive_scores(cosine), expected)


def test_retrieval_recall():
    torch.manual_seed(0)
    q = torch.randn(50, 8)
    assert retrieval_recall(q, q * 3) == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0}
    keys = torch.cat([q[1:], q[:1]])  # every query's best match is someone else's key
    r = retrieval_recall(q, keys, batch_size=7)
    assert r["R@1"] < 0.2 and r["R@1"] <= r["R@5"] <= r["R@10"]
    # Query i's own key ranks (i % 3)th among 3 near-identical candidates.
    base = torch.eye(3)
    keys = torch.stack([base[0], base[0] + 0.01 * base[1], base[0] + 0.02 * base[2]])
    queries = base[0].expand(3, 3)
    assert retrieval_recall(queries, keys, ks=(1, 2, 3)) == pytest.approx(
        {"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0}
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    clip = write_tiny_clip(root / "clip", embed_dim=DIM)
    text = TextEncoder(f"local-dir:{clip}", cache_dir=root / "cache")
    weights = text.class_embeddings("land_cover")
    write_pairs(root / "test.zarr", synthetic_pairs(weights.numpy(), 96, seed=3))
    checkpoint = root / "encoder.pt"
    save_checkpoint(
        tiny_encoder(dim=DIM),
        checkpoint,
        metadata=EncoderMetadata(clip_model=f"local-dir:{clip}", clip_pretrained=""),
    )
    return root, clip, checkpoint, weights


def test_report_of_a_checkpoint(setup, tmp_path):
    root, _, checkpoint, weights = setup
    report = run_evaluation(
        checkpoint,
        root / "test.zarr",
        "land_cover",
        tmp_path / "report",
        cache_dir=root / "cache",
        device="cpu",
    )
    result = json.loads(report.json_path.read_text())
    task = result["tasks"]["land_cover"]
    # Recompute top-1 from the encoder and the class embeddings directly.
    pairs = read_pairs(root / "test.zarr")
    with torch.no_grad():
        emb = load_encoder(checkpoint)(
            torch.from_numpy(normalize(pairs.series)), torch.from_numpy(pairs.month_mask)
        )
    cosine = torch.nn.functional.normalize(emb, dim=-1) @ weights.T
    top1 = (cosine.argmax(1).numpy() == pairs.labels["land_cover"]).mean()
    assert task["n"] == 96 and task["top1"] == pytest.approx(top1)
    assert len(task["per_class"]) == 8 and "transductive" in task
    assert result["clip_model"].startswith("local-dir:")  # read from the checkpoint
    r = result["retrieval"]
    assert r["n"] == 96 and r["pooling"] == "mean"
    for direction in ("satellite_to_ground", "ground_to_satellite"):
        values = [r[direction][k] for k in ("R@1", "R@5", "R@10")]
        assert values == sorted(values) and all(0 <= v <= 1 for v in values)
    markdown = report.markdown_path.read_text()
    assert "transductive" in markdown and "| satellite -> ground |" in markdown
    assert report.figures == [tmp_path / "report" / "confusion_land_cover.png"]
    assert report.figures[0].read_bytes()[:4] == b"\x89PNG"


def test_labels_are_routed_to_the_asked_task(setup, tmp_path):
    root, *_ = setup
    with pytest.raises(PairsError, match="no labels for crop_type"):
        run_evaluation(root / "encoder.pt", root / "test.zarr", "crop_type", tmp_path)


def test_attention_pooling_of_the_training_run(setup, tmp_path):
    root, clip, *_ = setup
    config = {
        "data": {"train": str(root / "test.zarr")},
        "model": {"dim": DIM, "depth": 1, "heads": 2, "ff_dim": 16},
        "clip": {"model": f"local-dir:{clip}"},
        "train": {"batch_size": 32, "pooling": "attention", "queue_size": 32, "lr": 1e-2},
        "output": {"dir": str(tmp_path / "run")},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    trained = run_training(tmp_path / "c.yaml", max_steps=2, progress=False)
    report = run_evaluation(
        trained.checkpoint,
        root / "test.zarr",
        "land_cover",
        tmp_path / "r",
        cache_dir=root / "cache",
        transductive=False,
        retrieval_limit=40,
    )
    assert report.results["retrieval"]["pooling"] == "attention"
    assert report.results["retrieval"]["n"] == 40
    assert "transductive" not in report.results["tasks"]["land_cover"]


# --- which conventions? -------------------------------------------------------------------------

CONV_DIM = 32


@pytest.fixture(scope="module")
def trained_under_known_conventions(tmp_path_factory):
    """A tiny encoder trained on a synthetic world under B4-first bands and January lone tokens,
    then saved as a bare state_dict, as published weights come (no conventions recorded)."""
    root = tmp_path_factory.mktemp("conventions")
    clip = write_tiny_clip(root / "clip", embed_dim=CONV_DIM)
    text = TextEncoder(f"local-dir:{clip}", cache_dir=root / "cache")
    weights = text.class_embeddings("land_cover").numpy()
    write_pairs(root / "train.zarr", synthetic_pairs(weights, 512, seed=1))
    write_pairs(root / "test.zarr", synthetic_pairs(weights, 256, seed=101))
    # Random positions at the start, so a lone token's position matters to the trained model.
    init = save_checkpoint(tiny_encoder(dim=CONV_DIM, seed=1), root / "init.pt")
    config = {
        "data": {"train": "train.zarr"},
        "model": {
            "dim": CONV_DIM,
            "depth": 2,
            "heads": 4,
            "ff_dim": 32,
            "dropout": 0.0,
            "init": str(init),
            "band_order": ["B4", "B3", "B2", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"],
            "single_token_position": "january",
        },
        "clip": {"model": f"local-dir:{clip}", "cache_dir": "cache"},
        "train": {
            "epochs": 8,
            "batch_size": 32,
            "lr": 2e-3,
            "warmup_epochs": 1,
            "queue_size": 64,
            "augment_probability": 1.0,  # TSMixAug on every batch: lone tokens on half of them
            "seed": 1,
        },
        "output": {"dir": "run"},
    }
    (root / "train.yaml").write_text(yaml.safe_dump(config))
    trained = run_training(root / "train.yaml", progress=False)
    model = load_encoder(trained.checkpoint)
    torch.save(model.state_dict(), root / "published.pt")
    return root, clip, model


def test_training_records_its_conventions(trained_under_known_conventions):
    *_, model = trained_under_known_conventions
    assert model.conventions == Conventions.published(B4_FIRST, single_token_position="january")


def test_try_conventions_recovers_the_training_conventions(trained_under_known_conventions, capsys):
    root, clip, trained = trained_under_known_conventions
    published = root / "published.pt"
    argv = ["evaluate", "--checkpoint", str(published), "--data", str(root / "test.zarr")]
    argv += ["--out", str(root / "eval"), "--clip-model", f"local-dir:{clip}", "--device", "cpu"]
    assert main([*argv, "--try-conventions"]) == 0
    out = capsys.readouterr().out
    assert "| monthly | B04 B03 B02 ... | B04 B03 B02 ... | - |" in out
    assert "recommended: bands B04 B03 B02 B05 B06 B07 B08 B8A B11 B12; constants: each " in out
    assert "lone token: january" in out
    record = json.loads((root / "eval" / "conventions.json").read_text())
    assert Conventions.from_dict(record["recorded"]) == Conventions()
    assert Conventions.from_dict(record["recommended"]) == trained.conventions
    rows = {
        (r["candidate"], r["input"], r["conventions"]["single_token_position"]): r
        for r in record["rows"]
    }
    assert len(rows) == 9
    top1 = {k: r["tasks"]["land_cover"]["top1"] for k, r in rows.items()}
    monthly = [top1[(c, "monthly", "mean")] for c in BAND_CANDIDATES]
    assert monthly[1] > max(monthly[0], monthly[2]) + 0.05  # B4-first clearly best
    assert top1[("B4-first", "annual", "january")] > top1[("B4-first", "annual", "mean")] + 0.05
    # The printed command records them; maps and evaluation then use them.
    command = next(line for line in out.splitlines() if line.startswith("to record them: "))
    convert = command.removeprefix("to record them: timesenclip ").split()
    convert[-1] = str(root / "converted.pt")
    assert convert[:2] == ["convert", str(published)]
    assert main(convert) == 0
    assert "lone token: january" in capsys.readouterr().out
    converted = load_encoder(root / "converted.pt")
    assert converted.conventions == trained.conventions
    report = run_evaluation(
        root / "converted.pt",
        root / "test.zarr",
        out_dir=root / "converted-eval",
        clip_model=f"local-dir:{clip}",
        cache_dir=root / "cache",
        device="cpu",
        transductive=False,
    )
    assert report.results["tasks"]["land_cover"]["top1"] == pytest.approx(
        top1[("B4-first", "monthly", "mean")]
    )
    assert report.results["conventions"] == trained.conventions.to_dict()
    # The same scores from the published file with the conventions given as options.
    assert main([*argv, "--band-order", "B4,B3,B2,B5,B6,B7,B8,B8A,B11,B12"]) == 0
    overridden = json.loads((root / "eval" / "report.json").read_text())
    assert overridden["tasks"]["land_cover"]["top1"] == pytest.approx(
        report.results["tasks"]["land_cover"]["top1"]
    )
    assert main([*argv, "--try-conventions", "--single-token-position", "mean"]) == 2
    assert "leave out" in capsys.readouterr().err


def test_sen4map_hdf5_is_evaluated_directly(setup, tmp_path):
    """--data may be a Sen4Map HDF5 file: labels from its attributes, no photos, no retrieval."""
    root, _, checkpoint, _ = setup
    pairs = read_pairs(root / "test.zarr")
    codes = [c["lucas_lc1_codes"][0] for c in reference_classes("lc")]
    with h5py.File(tmp_path / "test.h5", "w") as f:
        for i in range(len(pairs)):
            group = f.create_group(f"Lucas_Point_{i:04d}")  # HDF5 lists groups by name
            patch = np.zeros((12, 10, 3, 3), np.float32)
            patch[:, :, 1, 1] = np.nan_to_num(pairs.series[i], nan=0.0)
            group.create_dataset("image", data=patch)
            group.attrs["lc1"] = codes[pairs.labels["land_cover"][i]]
    loaded = read_eval_pairs(tmp_path / "test.h5", ["land_cover"])
    np.testing.assert_array_equal(loaded.labels["land_cover"], pairs.labels["land_cover"])
    np.testing.assert_array_equal(loaded.series[pairs.month_mask], pairs.series[pairs.month_mask])
    assert not loaded.photo_mask.any()
    report = run_evaluation(
        checkpoint, tmp_path / "test.h5", out_dir=tmp_path / "r", cache_dir=root / "cache"
    )
    assert report.results["retrieval"]["n"] == 0
    assert report.results["tasks"]["land_cover"]["n"] == len(pairs)
