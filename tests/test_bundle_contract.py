"""The bundle's declared contract (`core._bundle_folder`) holds: real exports of each kind write exactly the files it
names for that kind, with the keys it says readers use; every case of the contract is made here; no module of
`core/` or `pages/` spells a bundle file's name itself, and the standalone predict.py spells the same names."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core import _bundle_folder as bundle_folder
from core import audio, bundle_predict, export, ngrams
from core._run_folder import LEXICAL, RUN_INFO
from core.backbones import Classifier
from core.preprocess import make_preprocessor
from tests.run_info import full_run_info
from tests.test_run_folder import _literals
from tests.tiny import TINY_SPEC, TinyCNN, make_colour_dataset

ROOT = Path(__file__).resolve().parent.parent

#: Each bundle this test exports, with the cases of the contract (`WHEN` keys) it is.
KINDS = {
    "image": ("always",),
    "sound": ("always", "sound"),
    "text with its TF-IDF model": ("always", "text", "lexical", "transformers"),
    "audio foundation model": ("always", "sound", "feature extractor", "transformers"),
}
#: manifest.json's keys no code reads: what a person (or a test) looking at the bundle sees.
MANIFEST_FOR_PEOPLE = {"created", "parity_ok"}


def _export(model: torch.nn.Module, preprocessor: Any, modality: str, classes: list[str], out: Path,
            items: list[str]) -> Path:
    torch.manual_seed(0)
    info = full_run_info(run_id=f"tiny-{modality}", backbone=model.backbone.spec.name, modality=modality,
                         classes=classes)
    result = export.export_bundle(model.eval(), preprocessor, info, out, items, make_zip=False)
    assert result.parity.ok, str(result.parity)
    return result.bundle_dir


def _image_bundle(root: Path) -> Path:
    dataset = make_colour_dataset(root / "colours")
    torch.manual_seed(0)
    return _export(Classifier(TinyCNN(), dataset.num_classes), make_preprocessor(TINY_SPEC), "image",
                   dataset.classes, root / "bundle", dataset.split("test")[0])


def _sound_bundle(root: Path) -> Path:
    from tests.test_audio import TINY_AUDIO_SPEC, tones_dataset

    dataset = tones_dataset(root / "tones", per_class=3)
    torch.manual_seed(0)
    backbone = TinyCNN()
    backbone.spec = TINY_AUDIO_SPEC
    return _export(Classifier(backbone, dataset.num_classes), make_preprocessor(TINY_AUDIO_SPEC), "audio",
                   dataset.classes, root / "bundle", dataset.split("test")[0])


def _text_bundle(root: Path) -> Path:
    """A two-layer BERT with a 40-word tokenizer, mixed with a TF-IDF model as a text run delivers it."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from core._backbone_families import HFEncoderBackbone
    from core.backbones import BackboneSpec
    from core.tfidf import fit_tfidf

    texts = ["the match ended in a draw", "shares fell after the report", "a goal in the last minute",
             "interest rates rose again", "the striker scored twice", "the bank cut its rates"]
    words = sorted({word for text in texts for word in text.split()})
    vocabulary = root / "vocab.txt"
    root.mkdir(parents=True, exist_ok=True)
    vocabulary.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    spec = BackboneSpec(name="tiny_bert", modality="text", source="transformers", model_id="tiny-bert",
                        title="Tiny BERT", input_size=(16,), params_millions=0.0, gmacs=0.0, licence="-",
                        pretrained_on="-", description="-")
    torch.manual_seed(0)
    network = BertModel(BertConfig(vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))
    model = Classifier(HFEncoderBackbone(spec, network), 2)
    pipeline, recipe = fit_tfidf(texts, np.array([0, 1, 0, 1, 0, 1]), seed=0)
    model.lexical = ngrams.from_pipeline(pipeline, 2, recipe)
    preprocessor = make_preprocessor(spec)
    preprocessor._tokenizer = BertTokenizerFast(vocab_file=str(vocabulary))  # what the weights folder would give
    return _export(model, preprocessor, "text", ["sport", "money"], root / "bundle", texts)


def _foundation_bundle(root: Path) -> Path:
    from core._backbone_families import HFSpeechBackbone
    from core.backbones import availability, get_spec
    from tests.test_audio import tones_dataset
    from tests.test_audio_hub import save_tiny

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFER_STUDIO_WEIGHTS_DIR", str(root / "weights"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        if availability("wav2vec2_base").source == "cache":
            pytest.skip("wav2vec2_base is in this machine's Hugging Face cache; the cache comes first")
        network = save_tiny("wav2vec2_base", root / "weights")  # and its feature extractor, which export saves
        dataset = tones_dataset(root / "tones", per_class=3)
        torch.manual_seed(0)
        model = Classifier(HFSpeechBackbone(get_spec("wav2vec2_base"), network), dataset.num_classes)
        return _export(model, make_preprocessor(get_spec("wav2vec2_base")), "audio", dataset.classes,
                       root / "bundle", dataset.split("test")[0])


MAKERS = {"image": _image_bundle, "sound": _sound_bundle, "text with its TF-IDF model": _text_bundle,
          "audio foundation model": _foundation_bundle}


@pytest.fixture(scope="module", params=list(KINDS))
def bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One real export of each kind (export runs predict.py in fresh processes: made once per kind)."""
    return request.param, MAKERS[request.param](tmp_path_factory.mktemp("bundle"))


def _entries(folder: Path) -> set[str]:
    """The bundle's files, each file inside a library-written folder counted as that folder."""
    folders = {entry.name for entry in bundle_folder.CONTRACT if entry.folder}
    found = set()
    for path in folder.rglob("*"):
        if path.is_file():
            name = path.relative_to(folder).as_posix()
            top = name.split("/", 1)[0]
            found.add(top if top in folders and "/" in name else name)
    return found


def _declared(*when: str) -> set[str]:
    assert set(when) <= set(bundle_folder.WHEN), set(when) - set(bundle_folder.WHEN)
    return {entry.name for entry in bundle_folder.CONTRACT if entry.when in when}


def _read(folder: Path, name: str) -> dict[str, Any]:
    return json.loads((folder / name).read_text(encoding="utf-8"))


def test_each_kind_of_bundle_writes_exactly_the_files_the_contract_declares(bundle: tuple[str, Path]) -> None:
    kind, folder = bundle
    assert _entries(folder) == _declared(*KINDS[kind])
    assert all((folder / entry.name).is_dir() for entry in bundle_folder.CONTRACT
               if entry.folder and entry.when in KINDS[kind])
    manifest = _read(folder, bundle_folder.MANIFEST_FILE)
    listed = {name.split("/", 1)[0] if "/" in name else name for name in manifest["files"]}
    assert listed | {bundle_folder.MANIFEST_FILE} == _entries(folder)


def test_each_kind_of_bundle_writes_the_keys_its_readers_use(bundle: tuple[str, Path]) -> None:
    kind, folder = bundle
    for entry in bundle_folder.CONTRACT:
        if entry.keys and (folder / entry.name).is_file():
            record = _read(folder, entry.name)
            assert set(entry.keys) <= set(record), (entry.name, set(entry.keys) - set(record))
    manifest = _read(folder, bundle_folder.MANIFEST_FILE)
    assert set(manifest) == {*bundle_folder.MANIFEST_KEYS, *MANIFEST_FOR_PEOPLE}
    assert all(set(files) == set(bundle_folder.MANIFEST_ENTRY_KEYS) for files in manifest["files"].values())
    preprocessing = _read(folder, bundle_folder.PREPROCESSING_FILE)
    cases = [*KINDS[kind], preprocessing["modality"]]
    wanted = {key for case in cases for key in bundle_folder.PREPROCESSING_KEYS.get(case, ())}
    assert wanted <= set(preprocessing), wanted - set(preprocessing)
    assert preprocessing.get("lexical") is None or set(bundle_folder.LEXICAL_KEYS) <= set(preprocessing["lexical"])
    if "sound" in KINDS[kind] and "feature extractor" not in KINDS[kind]:  # MelSettings.from_dict reads them all
        assert {field.name for field in dataclasses.fields(audio.MelSettings)} <= set(preprocessing)
    rebuild = _read(folder, bundle_folder.ARCHITECTURE_FILE)["rebuild"]
    if "transformers" in KINDS[kind]:  # a Hugging Face backbone: its verified recipe names the config folder
        assert set(bundle_folder.REBUILD_KEYS) | set(bundle_folder.REBUILD_HF_KEYS) <= set(rebuild)
        assert rebuild["config_dir"] == bundle_folder.BACKBONE_CONFIG_DIR
    else:
        assert rebuild is None  # TinyCNN comes from no public library


def test_the_exports_cover_every_case_of_the_contract() -> None:
    assert {case for cases in KINDS.values() for case in cases} == set(bundle_folder.WHEN)
    assert len(set(bundle_folder.NAMES)) == len(bundle_folder.NAMES)
    # The two files a bundle shares with the run folder keep the run folder's names.
    assert (bundle_folder.RUN_FILE, bundle_folder.LEXICAL_FILE) == (RUN_INFO, LEXICAL) and ngrams.FILE == LEXICAL


# --------------------------------------------------------------------------------------------- the spellings

#: Where another thing of the same spelling is meant: (module, literal) -> why.
OTHER_THINGS_OF_THE_SAME_NAME = {
    ("core/_run_folder.py", RUN_INFO): "the run folder's record; the bundle copies it under the same name",
    ("core/_run_folder.py", LEXICAL): "the run folder's TF-IDF model; the bundle copies it under the same name",
    ("core/_run_folder.py", bundle_folder.WEIGHTS_FILE): "the run's weights, in the app's own layout",
    ("core/ngrams.py", LEXICAL): "ngrams.py ships alone in bundles; its FILE is checked equal above",
    ("core/_backbone_weights.py", bundle_folder.WEIGHTS_FILE): "a Hugging Face model folder's weights",
    ("core/_project_format.py", "data/manifest.json"): "a project file's list of examples",
    ("core/_project_reader.py", "data/manifest.json"): "a project file's list of examples",
    ("core/_project_reader.py", bundle_folder.MANIFEST_FILE): "a project file's list of examples (data/manifest.json)",
    ("core/_project_writer.py", "data/manifest.json"): "a project file's list of examples",
}


def _names_a_bundle_file(literal: str) -> bool:
    """Whether `literal` is a bundle file's name or a path ending in it, or a path into a library-written folder.

    A folder's bare name is not counted: it is also the attribute or key its content is saved from
    (`preprocessor.tokenizer`, `spec.extra["feature_extractor"]`).
    """
    for entry in bundle_folder.CONTRACT:
        if entry.folder:
            if literal.startswith(entry.name + "/") or literal.endswith("/" + entry.name):
                return True
        elif literal == entry.name or literal.endswith("/" + entry.name):
            return True
    return False


def _spelled(path: Path) -> set[str]:
    return {literal for literal in _literals(ast.parse(path.read_text(encoding="utf-8")))
            if _names_a_bundle_file(literal)}


def test_no_module_spells_a_bundle_file_name_but_the_contract() -> None:
    paths = [*(ROOT / "core").glob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "app.py"]
    found = set()
    for path in paths:
        module = path.relative_to(ROOT).as_posix()
        if module not in ("core/_bundle_folder.py", "core/bundle_predict.py"):  # predict.py: checked below
            found |= {(module, literal) for literal in _spelled(path)}
    spelled = found - set(OTHER_THINGS_OF_THE_SAME_NAME)
    assert not spelled, f"take these names from core._bundle_folder: {sorted(spelled)}"
    assert set(OTHER_THINGS_OF_THE_SAME_NAME) <= found, sorted(set(OTHER_THINGS_OF_THE_SAME_NAME) - found)


def test_the_standalone_predict_py_spells_the_contracts_names() -> None:
    """predict.py ships alone and imports nothing of core: its own names must be the contract's, and it spells no
    bundle file anywhere else."""
    own = {name: value for name, value in vars(bundle_predict).items()
           if name.endswith(("_FILE", "_DIR")) and isinstance(value, str)}
    assert {"MANIFEST_FILE", "LABELS_FILE", "PREPROCESSING_FILE", "ARCHITECTURE_FILE", "TORCHSCRIPT_FILE",
            "WEIGHTS_FILE", "ONNX_FILE"} <= set(own)
    assert {name: getattr(bundle_folder, name, None) for name in own} == own
    assert _spelled(Path(bundle_predict.__file__)) == set(own.values())


def _keys_read(tree: ast.AST, record: str) -> set[str]:
    """The keys read from a name `record`: `record["k"]` (not assigned to) and `record.get("k", ...)`."""
    keys = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Name)
                and node.value.id == record and isinstance(node.slice, ast.Constant)):
            keys.add(node.slice.value)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == record and node.args
                and isinstance(node.args[0], ast.Constant)):
            keys.add(node.args[0].value)
    return keys


def test_every_key_the_bundles_readers_read_is_one_the_contract_declares() -> None:
    readers = ["core/bundle_predict.py", "core/_export_bundle.py", "core/_export_parity.py"]
    trees = [ast.parse((ROOT / module).read_text(encoding="utf-8")) for module in readers]
    declared = {
        "config": {key for keys in bundle_folder.PREPROCESSING_KEYS.values() for key in keys},  # preprocessing.json
        "architecture": set(bundle_folder.ARCHITECTURE_KEYS),
        "rebuild": set(bundle_folder.REBUILD_KEYS) | set(bundle_folder.REBUILD_HF_KEYS),
        "manifest": set(bundle_folder.MANIFEST_KEYS),
    }
    for record, keys in declared.items():
        read = set().union(*(_keys_read(tree, record) for tree in trees))
        assert read, f"the walk sees no reader of `{record}`"
        assert read <= keys, (record, sorted(read - keys))
