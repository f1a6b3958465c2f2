"""Freezing by layer group: exactly the right parameters train, frozen BatchNorm statistics stay put."""

from __future__ import annotations

import pytest
import torch

from core.backbones import Classifier, get_spec
from core.freezing import estimate_cost, freeze_first, recommend, set_train_mode
from tests.test_backbones import FAMILY_CASES, build_family


def _train_step(model: Classifier, example, num_classes: int = 3) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    set_train_mode(model)
    batch_size = (example["input_ids"] if isinstance(example, dict) else example).shape[0]
    loss = torch.nn.functional.cross_entropy(model(example), torch.arange(batch_size) % num_classes)
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("case", sorted(FAMILY_CASES))
def test_freeze_first_trains_exactly_the_later_groups_and_keeps_frozen_batchnorm(case: str) -> None:
    backbone, example = build_family(case)
    model = Classifier(backbone, 3)
    groups = backbone.groups()
    frozen = len(groups) // 2
    summary = freeze_first(model, frozen)
    assert model.frozen_groups == frozen
    frozen_ids = {id(p) for group in groups[:frozen] for p in group.parameters()}
    for parameter in model.parameters():
        assert parameter.requires_grad == (id(parameter) not in frozen_ids)
    assert summary.trainable_params == sum(p.numel() for p in model.parameters() if id(p) not in frozen_ids)
    assert [g.frozen for g in summary.groups] == [i < frozen for i in range(len(groups))]

    before = {name: t.detach().clone() for name, t in model.state_dict().items()}
    _train_step(model, example)
    after = model.state_dict()
    frozen_names = {name for name, p in model.named_parameters() if id(p) in frozen_ids}
    for name, tensor in after.items():
        if name in frozen_names:
            assert torch.equal(tensor, before[name]), f"frozen {name} moved"
    changed = [name for name, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[name])]
    assert any(name.startswith("head.") for name in changed)
    assert any(name.startswith("backbone.") for name in changed)
    # BatchNorm statistics of frozen groups do not move; those of trainable groups do.
    for index, group in enumerate(groups):
        for module in group.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                assert module.training == (index >= frozen)
    bn_buffers = {id(b) for i, g in enumerate(groups[:frozen]) for m in g.modules()
                  if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for b in (m.running_mean, m.running_var)}
    for name, buffer in model.named_buffers():
        if id(buffer) in bn_buffers:
            assert torch.equal(buffer, before[name]), f"frozen BatchNorm statistic {name} moved"


@pytest.mark.parametrize("case", ["efficientnet", "bert"])
def test_feature_extraction_and_full_fine_tuning_ends(case: str) -> None:
    backbone, _ = build_family(case)
    model = Classifier(backbone, 3)
    everything = freeze_first(model, len(backbone.groups()))
    assert everything.trainable_params == everything.head_params == sum(p.numel() for p in model.head.parameters())
    nothing = freeze_first(model, 0)
    assert nothing.trainable_params == nothing.total_params
    with pytest.raises(ValueError, match="from 0"):
        freeze_first(model, len(backbone.groups()) + 1)
    with pytest.raises(ValueError, match="from 0"):
        freeze_first(model, -1)


def test_estimate_cost_runs_real_steps_and_leaves_the_model_alone(colour_dataset, tiny_backbone) -> None:
    from core.preprocess import make_preprocessor
    from tests.tiny import TINY_SPEC

    model = Classifier(tiny_backbone, 3)
    freeze_first(model, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    items, _ = colour_dataset.split("train")
    estimate = estimate_cost(model, make_preprocessor(TINY_SPEC), items, batch_size=4, n_batches=2, device="cpu")
    assert estimate.measured_batches == 2
    assert estimate.seconds_per_epoch > 0
    assert estimate.seconds_per_epoch == pytest.approx(estimate.seconds_per_batch * 6)  # 24 items / 4 = 6 steps
    assert estimate.peak_memory_mb >= 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    with pytest.raises(ValueError, match="no training examples"):
        estimate_cost(model, make_preprocessor(TINY_SPEC), [], batch_size=4)


def test_recommend_freezes_more_for_small_data_and_less_for_large() -> None:
    spec = get_spec("efficientnet_lite0")
    small, why_small = recommend(200, "image", spec)
    medium, _ = recommend(5000, "image", spec)
    large, why_large = recommend(50000, "image", spec)
    assert small == spec.num_groups and "head" in why_small
    assert large < medium < small
    assert "200" in why_small and "50000" in why_large
    with pytest.raises(ValueError, match="text"):
        recommend(200, "text", spec)
