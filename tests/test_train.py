"""Training: config validation, queue, schedule, learning a synthetic world, exact resume."""

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from encoder.checkpoint import load_encoder
from encoder.model import TimeSenCLIPEncoder
from encoder.pairs_store import write_pairs
from encoder.prompts import TextEncoder
from encoder.training.config import TrainConfigError, load_config, parse_config
from encoder.training.learner import ContrastiveLearner
from encoder.training.schedule import lr_factor
from encoder.training.state import latest_checkpoint, read_train_state
from encoder.training.trainer import Trainer, run_training
from fixtures.pairs import synthetic_pairs
from fixtures.tiny import write_tiny_clip
from timesenclip.common.errors import TrainingError

DIM = 32
TINY_MODEL = {"dim": DIM, "depth": 1, "heads": 4, "ff_dim": 32, "dropout": 0.1}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny CLIP, and train/val pairs whose photos are its text embeddings of each class."""
    root = tmp_path_factory.mktemp("world")
    clip = write_tiny_clip(root / "clip", embed_dim=DIM)
    text = TextEncoder(f"local-dir:{clip}", cache_dir=root / "cache")
    weights = text.class_embeddings("land_cover").numpy()
    write_pairs(root / "train.zarr", synthetic_pairs(weights, 512, seed=0))
    write_pairs(root / "val.zarr", synthetic_pairs(weights, 256, seed=1))
    write_pairs(root / "small.zarr", synthetic_pairs(weights, 128, seed=2))
    return root, clip


def write_config(root, name, **sections):
    _, clip = root
    config = {
        "data": {"train": "train.zarr"},
        "model": TINY_MODEL,
        "clip": {"model": f"local-dir:{clip}", "cache_dir": "cache"},
        "output": {"dir": f"runs/{name}"},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    path = root[0] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# --- config -------------------------------------------------------------------------------------


def test_config_defaults_and_relative_paths(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {train: pairs/train.zarr}\noutput: {dir: run}\n")
    config = load_config(path)
    assert config.data.train == tmp_path / "pairs" / "train.zarr"
    assert config.output.dir == tmp_path / "run"
    t = config.train
    assert (t.lr, t.weight_decay, t.queue_size, t.augment_probability) == (1e-4, 1e-4, 2048, 0.5)
    assert math.isclose(t.logit_scale_init, 1 / 0.07) and t.logit_scale_max == 100


def test_config_errors_name_the_field():
    with pytest.raises(TrainConfigError) as err:
        parse_config(
            {
                "data": {"train": "x.zarr"},
                "output": {"dir": "o"},
                "train": {"lr": -1, "pooling": "max", "batchsize": 3},
                "validation": {"tasks": ["land_cover", "habitats"]},
            }
        )
    message = str(err.value)
    for field in ("train.lr", "train.pooling", "train.batchsize", "validation.tasks"):
        assert field in message
    assert "'max'" in message and "habitats" in message
    with pytest.raises(TrainConfigError, match="output: missing"):
        parse_config({"data": {"train": "x.zarr"}})


def test_augment_recipe_and_conventions_config():
    base = {"data": {"train": "x.zarr"}, "output": {"dir": "o"}}
    assert parse_config(base).train.augment_kinds() == ("median", "quarter_drop")  # tsmixaug
    assert parse_config(base | {"train": {"augment": "all"}}).train.augment_kinds() == (
        "median",
        "quarter_drop",
        "subset",
    )
    picked = {"augment": "all", "augmentations": ["subset"]}
    assert parse_config(base | {"train": picked}).train.augment_kinds() == ("subset",)
    with pytest.raises(TrainConfigError, match="augmentations applies to augment: all only"):
        parse_config(base | {"train": {"augmentations": ["median"]}})
    with pytest.raises(TrainConfigError, match=r"model: .*must name each of the 10 bands"):
        parse_config(base | {"model": {"band_order": ["B4", "B3", "B2"]}})
    with pytest.raises(TrainConfigError, match=r"model\.single_token_position"):
        parse_config(base | {"model": {"single_token_position": "july"}})


# --- learner pieces -----------------------------------------------------------------------------


def learner(queue_size=5, dim=4):
    encoder = TimeSenCLIPEncoder(dim=dim, depth=1, heads=1, ff_dim=4)
    return ContrastiveLearner(encoder, dim, "mean", queue_size)


def test_queue_starts_full_of_unit_vectors_and_is_fifo():
    lr = learner(queue_size=5)
    assert lr.queue.shape == (5, 4) and int(lr.queue_ptr) == 0
    torch.testing.assert_close(lr.queue.norm(dim=1), torch.ones(5))
    assert torch.linalg.matrix_rank(lr.queue) == 4  # random keys, not zeros or copies
    rows = torch.arange(40, dtype=torch.float32).view(10, 4)
    lr.enqueue(rows[:3])
    assert int(lr.queue_ptr) == 3
    assert torch.equal(lr.queue[:3], rows[:3])
    lr.enqueue(rows[3:7])  # 4 more: two fill the end, two wrap to the start
    assert int(lr.queue_ptr) == 2
    assert torch.equal(lr.queue, torch.stack([rows[5], rows[6], rows[2], rows[3], rows[4]]))
    lr.enqueue(rows[:7])  # more than the queue holds: the newest 5 stay, in FIFO order
    assert torch.equal(lr.queue[[4, 0, 1, 2, 3]], rows[2:7])
    assert int(lr.queue_ptr) == 4
    assert ContrastiveLearner(TimeSenCLIPEncoder(dim=4, depth=1, heads=1), 4).queue.shape[0] == 2048
    with pytest.raises(TrainingError, match="queue_size"):
        learner(queue_size=0)


def test_loss_is_the_positive_against_the_queue_only():
    torch.manual_seed(0)
    lr = learner(queue_size=6)
    sat, keys = torch.randn(3, 4), F.normalize(torch.randn(3, 4), dim=-1)
    s = F.normalize(sat, dim=-1)
    logits = torch.cat([(s * keys).sum(1, keepdim=True), s @ lr.queue.T], 1) / 0.07
    expected = F.cross_entropy(logits, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(lr.loss(sat, keys), expected)
    # The other rows' keys are not negatives: each row's loss depends on its own key only.
    rows = torch.stack([lr.loss(sat[i : i + 1], keys[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(lr.loss(sat, keys), rows.mean())
    queued = F.normalize(torch.randn(6, 4), dim=-1)
    lr.enqueue(queued)
    logits = torch.cat([(s * keys).sum(1, keepdim=True), s @ queued.T], 1) / 0.07
    expected = F.cross_entropy(logits, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(lr.loss(sat, keys), expected)


def test_logit_scale_parameter_is_clamped_and_keeps_its_gradient():
    lr = learner()
    with torch.no_grad():
        lr.logit_scale.fill_(10.0)  # exp(10) > 100
    lr.clamp_logit_scale()
    assert lr.scale().item() == pytest.approx(100.0)
    lr.loss(torch.randn(3, 4), F.normalize(torch.randn(3, 4), dim=-1)).backward()
    assert lr.logit_scale.grad.abs() > 0  # at the cap it can still move down
    high = ContrastiveLearner(TimeSenCLIPEncoder(dim=4, depth=1, heads=1), 4, logit_scale_init=500)
    assert high.scale().item() == pytest.approx(100.0)


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 4, 20, 0.0) == 0.25 and lr_factor(3, 4, 20, 0.0) == 1.0
    assert lr_factor(4, 4, 20, 0.0) == 1.0
    assert math.isclose(lr_factor(12, 4, 20, 0.0), 0.5)
    assert math.isclose(lr_factor(20, 4, 20, 0.1), 0.1)
    assert lr_factor(0, 0, 10, 0.0) == 1.0


# --- training -----------------------------------------------------------------------------------


def test_learns_a_synthetic_world_zero_shot(world):
    config = write_config(
        world,
        "learn",
        data={"val": "val.zarr"},
        model={"depth": 2, "dropout": 0.0},
        train={"epochs": 3, "batch_size": 32, "lr": 5e-3, "warmup_epochs": 1, "queue_size": 64},
    )
    result = run_training(config, progress=False)
    assert result.step == 3 * 16
    assert np.mean(result.losses[-8:]) < np.mean(result.losses[:8]) - 0.8
    final = result.validation[-1]["val_land_cover_top1"]
    assert final > 0.6  # zero-shot on held-out points; chance is 1/8
    out = result.out_dir
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 49))
    assert float(rows[0]["lr"]) == pytest.approx(5e-3 / 16)  # warm-up over the first epoch
    assert (out / "validation.csv").is_file() and (out / "training.png").stat().st_size > 0
    encoder = load_encoder(out / "encoder.pt")
    assert encoder.metadata.clip_model.startswith("local-dir:")
    assert encoder.config.dim == DIM


def test_resume_repeats_an_uninterrupted_run(world):
    train = {
        "epochs": 2,
        "batch_size": 16,
        "accumulate": 2,
        "lr": 1e-3,
        "warmup_epochs": 0.5,
        "queue_size": 48,
        "pooling": "attention",
        "augment_probability": 0.5,
    }
    data = {"train": "small.zarr"}
    straight = run_training(write_config(world, "straight", data=data, train=train), progress=False)
    assert straight.step == 8
    split = write_config(world, "split", data=data, train=train, output={"checkpoint_every": 2})
    first = run_training(split, max_steps=4, progress=False)
    assert first.step == 4 and first.checkpoint.name == "step_00000004.pt"
    with pytest.raises(TrainingError, match="already holds checkpoints"):
        run_training(split, progress=False)
    second = run_training(split, resume=True, progress=False)
    assert second.step == 8
    np.testing.assert_allclose(first.losses + second.losses, straight.losses, rtol=1e-6)
    a, b = straight.checkpoint, second.checkpoint
    for (name, p), (_, q) in zip(
        load_encoder(a).state_dict().items(), load_encoder(b).state_dict().items(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)
    sa, sb = read_train_state(a), read_train_state(b)
    for key in ("queue", "queue_ptr", "pooling_layer.attention.weight", "logit_scale"):
        torch.testing.assert_close(sa["learner"][key], sb["learner"][key], rtol=1e-6, atol=1e-7)
    # Only the newest checkpoints are kept (default 3), each with its training state.
    kept = sorted(p.name for p in (world[0] / "runs/split/checkpoints").glob("step_*.pt"))
    assert kept[-1] == "step_00000008.train_state.pt" and len(kept) == 6
    assert latest_checkpoint(world[0] / "runs/split").name == "step_00000008.pt"
    with (world[0] / "runs/split/metrics.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 9))


def test_resume_refuses_a_changed_config(world):
    data = {"train": "small.zarr"}
    train = {"epochs": 1, "batch_size": 32, "queue_size": 8}
    config = write_config(world, "changed", data=data, train=train)
    run_training(config, max_steps=1, progress=False)
    config = write_config(world, "changed", data=data, train={**train, "lr": 5e-4})
    with pytest.raises(TrainingError, match=r"config changed \(train.lr\)"):
        run_training(config, resume=True, progress=False)
    config = write_config(world, "changed", data={"train": "train.zarr"}, train=train)
    with pytest.raises(TrainingError, match=r"config changed \(data.train\)"):
        run_training(config, resume=True, progress=False)


def test_train_step_clamps_the_logit_scale(world):
    config = write_config(world, "clamp", data={"train": "small.zarr"}, train={"batch_size": 32})
    trainer = Trainer(load_config(config), progress=False)
    with torch.no_grad():
        trainer.learner.logit_scale.fill_(10.0)
    trainer.train_step(torch.arange(32))
    assert trainer.learner.logit_scale.item() <= math.log(100.0) + 1e-6  # the parameter itself


def test_points_without_months_or_photos_are_left_out(world, caplog):
    pairs = synthetic_pairs(np.random.default_rng(0).normal(size=(8, DIM)), 80, seed=3)
    pairs.month_mask[:10] = False  # 10 points with no valid month
    pairs.series[:10] = np.nan
    pairs.photo_mask[10:16] = False  # 6 with no photo
    pairs.ground[10:16] = 0.0
    write_pairs(world[0] / "holes.zarr", pairs)
    config = write_config(
        world, "holes", data={"train": "holes.zarr"}, train={"epochs": 1, "batch_size": 16}
    )
    with caplog.at_level("INFO", logger="encoder.training"):
        result = run_training(config, progress=False)
    assert result.step == 64 // 16 and all(math.isfinite(x) for x in result.losses)
    assert "left out 16 of 80 points (10 without a valid month, 6 more without a photo)" in (
        caplog.text
    )


def test_too_little_data(world):
    config = write_config(world, "tiny", data={"train": "small.zarr"}, train={"batch_size": 512})
    with pytest.raises(TrainingError, match="fewer than one step"):
        run_training(config, progress=False)


def test_validation_split_from_the_training_store(world):
    config = write_config(
        world,
        "split_val",
        data={"train": "small.zarr", "val_fraction": 0.25},
        train={"epochs": 1, "batch_size": 32, "queue_size": 8},
        validation={"tasks": ["land_cover"], "templates": "Generic"},
    )
    result = run_training(config, progress=False)
    assert result.step == 3  # 96 of the 128 points train, 32 validate
    (row,) = result.validation
    assert row["epoch"] == 0 and 0.0 <= row["val_land_cover_top1"] <= 1.0
