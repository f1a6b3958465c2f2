"""Preprocessing derived from the backbone's spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from core.backbones import get_spec
from core.preprocess import make_preprocessor
from tests.tiny import TINY_SPEC


def test_image_preprocessing_matches_timms_pretrained_config(colour_dataset) -> None:
    spec = get_spec("efficientnet_lite0")
    config = timm.data.resolve_model_data_config(timm.create_model(spec.model_id))
    assert tuple(config["input_size"]) == spec.input_size
    assert tuple(config["mean"]) == spec.mean and tuple(config["std"]) == spec.std
    assert config["crop_pct"] == spec.crop_pct and config["interpolation"] == spec.interpolation
    items, _ = colour_dataset.split("train")
    preprocessor = make_preprocessor(spec)
    batch = preprocessor.collate([preprocessor.load(item) for item in items[:3]])
    assert batch.shape == (3, 3, 224, 224)
    expected = timm.data.create_transform(**config)(Image.open(items[0]).convert("RGB"))
    torch.testing.assert_close(batch[0], expected)


def test_augmentation_changes_training_loads_only(colour_dataset) -> None:
    items, _ = colour_dataset.split("train")
    plain = make_preprocessor(TINY_SPEC)
    strong = make_preprocessor(TINY_SPEC, augmentation="strong")
    torch.testing.assert_close(plain.load(items[0], train=True), plain.load(items[0], train=False))
    torch.testing.assert_close(strong.load(items[0], train=False), plain.load(items[0], train=False))
    assert not torch.equal(strong.load(items[0], train=True), strong.load(items[0], train=False))
    assert plain.cache_key == strong.cache_key  # evaluation preprocessing is the same
    assert plain.cache_key != make_preprocessor(get_spec("efficientnet_lite0")).cache_key
    with pytest.raises(ValueError, match="augmentation"):
        make_preprocessor(TINY_SPEC, augmentation="wild")


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(ValueError, match="broken.png"):
        make_preprocessor(TINY_SPEC).load(str(broken))


def test_text_batches_are_padded_and_truncated_to_max_tokens() -> None:
    spec = get_spec("all_minilm_l6_v2")
    preprocessor = make_preprocessor(spec)
    assert preprocessor.load("  two   spaces\n") == "two spaces"
    batch = preprocessor.batch(["short", "word " * 500])
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == (2, spec.max_tokens)
    assert batch["attention_mask"][0].sum() == 3  # [CLS] short [SEP]
    assert batch["attention_mask"][1].sum() == spec.max_tokens
