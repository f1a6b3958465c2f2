"""The export bundle (the folder `core.export` writes, zipped beside it as `<folder>.zip`), declared once (`CONTRACT`).

Each file's name, who writes it, who reads it, what it holds and when it is there; and the keys of the bundle's
JSON records that readers use. Every writer and reader in `core` takes the names from here (a test walks `core/`
and `pages/` for any other spelling) and reads only what a writer writes: a file that only some bundles have says
so in `when`, and its readers handle its absence for exactly that reason.

`core/bundle_predict.py` ships inside every bundle as `predict.py` and runs without Transfer Studio, so it spells
the names it reads itself; a test checks that they equal these. This module sits at the bottom (the standard
library and `core._run_folder` only), below the export modules and `core.evaluation`, so each of them can import it.
"""

from __future__ import annotations

from dataclasses import dataclass

from core._run_folder import LEXICAL, RUN_INFO, RunFile

#: SHA-256 and size of every other file; `predict.py` and `load_bundle` refuse a bundle whose files changed.
MANIFEST_FILE = "manifest.json"
#: The weights in the bundle's documented layout: `backbone.<library model key>`, `head.weight`, `head.bias`.
WEIGHTS_FILE = "model.safetensors"
#: The classifier traced by TorchScript: runs with torch alone.
TORCHSCRIPT_FILE = "model.torchscript.pt"
#: The classifier as ONNX: runs with onnxruntime.
ONNX_FILE = "model.onnx"
#: A copy of `core/bundle_predict.py`: predicts with the bundle and nothing of Transfer Studio.
PREDICT_FILE = "predict.py"
#: The model report (`core.model_report`).
REPORT_FILE = "MODEL_REPORT.md"
#: The class names, in the model's output order.
LABELS_FILE = "labels.json"
#: The evaluation-time preprocessing in plain numbers (`core._export_formats.preprocessing_config`).
PREPROCESSING_FILE = "preprocessing.json"
#: What the classifier is, and the recipe predict.py rebuilds it by from its library (verified at export).
ARCHITECTURE_FILE = "architecture.json"
#: The run's record, copied from the run folder under its own name.
RUN_FILE = RUN_INFO
#: The parity check's report and the examples it ran on.
PARITY_FILE = "parity.json"
#: How to run the bundle, for a person.
README_FILE = "README.md"
#: The text backbone's tokenizer (transformers' `save_pretrained`).
TOKENIZER_DIR = "tokenizer"
#: A copy of `core/audio.py`: predict.py makes spectrograms, or cuts clips, with the app's own code.
AUDIO_FEATURES_FILE = "audio_features.py"
#: An audio foundation model's own preprocessing (transformers' `save_pretrained`).
FEATURE_EXTRACTOR_DIR = "feature_extractor"
#: A Hugging Face backbone's config, what predict.py's safetensors engine builds the architecture from.
BACKBONE_CONFIG_DIR = "backbone_config"
#: A text run's TF-IDF model, the run folder's file under its own name (`core.ngrams.NgramModel.save`).
LEXICAL_FILE = LEXICAL
#: A copy of `core/ngrams.py`: predict.py mixes in the text run's TF-IDF model with the app's own code.
LEXICAL_MODULE_FILE = "lexical_model.py"

#: When a file is there (`BundleFile.when`):
WHEN = {
    "always": "every bundle",
    "sound": "a sound model's bundle (spectrogram pictures, or an audio foundation model's feature extractor)",
    "feature extractor": "an audio foundation model's bundle (AST, wav2vec 2.0, HuBERT: `uses_feature_extractor`)",
    "text": "a text model's bundle",
    "lexical": "a text run that mixes in its TF-IDF model",
    "transformers": "a Hugging Face backbone (its config is saved before the rebuild is verified, so it is there "
                    "even when no pooling reproduces the backbone)",
}


@dataclass(frozen=True)
class BundleFile(RunFile):
    """One file (or library-written folder) of the bundle, described as a run folder's file is (`RunFile`: name,
    written_by, read_by, holds, keys), its `when` a key of this module's `WHEN`.

    Attributes:
        folder: a folder whose files a library writes (`save_pretrained`); their names are the library's.
    """

    folder: bool = False


#: manifest.json's keys that readers use: `bundle_predict.verify` (`files`), `core._export_bundle.load_bundle`.
MANIFEST_KEYS = ("format", "files")
#: Each manifest entry's keys (`files[name]`); `bundle_predict.verify` compares `sha256`.
MANIFEST_ENTRY_KEYS = ("sha256", "bytes")
#: labels.json's keys.
LABELS_KEYS = ("classes",)
#: preprocessing.json's keys that readers use, by the kind of bundle (a `WHEN` key, or the modality for "image");
#: a spectrogram bundle also holds every field of `core.audio.MelSettings`, which `MelSettings.from_dict` reads.
PREPROCESSING_KEYS = {
    "always": ("modality",),
    "image": ("resize", "crop", "interpolation", "mean", "std"),
    "sound": ("features_module", "sample_rate", "clip_seconds"),
    "feature extractor": ("feature_extractor_dir", "pad_clips"),
    "text": ("tokenizer_dir", "max_tokens"),
    "lexical": ("lexical",),
}
#: preprocessing.json's `lexical` record: the TF-IDF model's file and the module that reads it.
LEXICAL_KEYS = ("model", "module")
#: architecture.json's keys that readers use (`bundle_predict.RebuiltClassifier`, `core._export_parity`).
ARCHITECTURE_KEYS = ("rebuild", "rebuild_detail")
#: architecture.json's `rebuild` recipe (present when verified at export); a Hugging Face one adds `REBUILD_HF_KEYS`.
REBUILD_KEYS = ("source", "model_id", "pooling")
REBUILD_HF_KEYS = ("config_dir", "drop_pooler")

#: The whole bundle: a file not named here (or inside a folder named here) is not the bundle's.
CONTRACT = (
    BundleFile(MANIFEST_FILE, "core._export_bundle.write_manifest (before the parity run, then again at the end)",
               "core.bundle_predict.verify (predict.py, core._export_bundle.verify_manifest), "
               "core._export_bundle.load_bundle, core.export._prepare_folder, core.evaluation.load_model",
               "the bundle's format, each other file's SHA-256 and size, when it was made and whether parity held",
               "always", MANIFEST_KEYS),
    BundleFile(WEIGHTS_FILE, "core.export.export_bundle (core._export_formats.bundle_weights)",
               "core.bundle_predict.RebuiltClassifier (predict.py --engine safetensors)",
               "the classifier's weights: the library model's own keys under `backbone.`, the linear head's", "always"),
    BundleFile(TORCHSCRIPT_FILE, "core._export_formats.export_torchscript",
               "core.bundle_predict.BundlePredictor (the default engine), core._export_bundle.load_bundle, "
               "core._export_parity.check_parity", "the traced classifier: inputs to logits", "always"),
    BundleFile(ONNX_FILE, "core._export_formats.export_onnx",
               "core.bundle_predict.OnnxModel (predict.py --engine onnx), core._export_parity.check_parity",
               "the classifier as ONNX, with a dynamic batch (and token) axis: inputs to logits", "always"),
    BundleFile(PREDICT_FILE, "core.export.export_bundle (a copy of core/bundle_predict.py)",
               "people, core._export_parity (run in a fresh process), core.export._prepare_folder",
               "the standalone predictor", "always"),
    BundleFile(REPORT_FILE, "core.export.export_bundle (core.model_report.model_report)", "people",
               "the model report: data, protocol, results with n and intervals, parity, limits", "always"),
    BundleFile(README_FILE, "core.export._readme", "people", "how to install and run predict.py, what each file is",
               "always"),
    BundleFile(LABELS_FILE, "core.export.export_bundle", "core.bundle_predict.BundlePredictor, "
               "core._export_bundle.load_bundle", "the class names in output order", "always", LABELS_KEYS),
    BundleFile(PREPROCESSING_FILE, "core.export.export_bundle (core._export_formats.preprocessing_config, "
               "plus the lexical record)", "core.bundle_predict (each preprocessor, load_lexical), "
               "core._export_bundle.load_bundle / BundlePreprocessor, core._export_parity.check_parity",
               "the evaluation-time preprocessing in plain numbers, and the steps in words", "always",
               PREPROCESSING_KEYS["always"]),
    BundleFile(ARCHITECTURE_FILE, "core.export.export_bundle (core._export_formats.rebuild_recipe)",
               "core.bundle_predict.RebuiltClassifier, core._export_parity.check_parity",
               "the backbone, inputs and outputs, and the verified rebuild recipe (or why there is none)", "always",
               ARCHITECTURE_KEYS),
    BundleFile(RUN_FILE, "core.export.export_bundle (the run record it was given)", "core._export_bundle.load_bundle "
               "(its keys are the run folder's, core._run_folder.RUN_INFO_KEYS)",
               "the run's record: backbone, settings, status, metrics and estimate", "always"),
    BundleFile(PARITY_FILE, "core.export.export_bundle (core._export_parity.ParityReport.to_dict, plus the items)",
               "core._export_bundle.load_bundle (the record's `parity`)",
               "each artefact's agreement with the app, and the examples compared", "always"),
    BundleFile(AUDIO_FEATURES_FILE, "core.export.export_bundle (a copy of core/audio.py)",
               "core.bundle_predict.AudioPreprocessor (preprocessing.json's `features_module`)",
               "the spectrogram and clip-cutting code the model was trained with", "sound"),
    BundleFile(FEATURE_EXTRACTOR_DIR, "core._export_formats.save_feature_extractor",
               "core.bundle_predict.AudioPreprocessor (preprocessing.json's `feature_extractor_dir`)",
               "the foundation model's feature extractor", "feature extractor", folder=True),
    BundleFile(TOKENIZER_DIR, "core._export_formats.save_tokenizer",
               "core.bundle_predict.TextPreprocessor (preprocessing.json's `tokenizer_dir`)",
               "the text backbone's tokenizer", "text", folder=True),
    BundleFile(LEXICAL_FILE, "core.export.export_bundle (core.ngrams.NgramModel.save)",
               "core.bundle_predict.load_lexical, core._export_bundle.load_bundle (preprocessing.json's lexical model)",
               "the TF-IDF vocabulary, IDF and logistic weights", "lexical"),
    BundleFile(LEXICAL_MODULE_FILE, "core.export.export_bundle (a copy of core/ngrams.py)",
               "core.bundle_predict.load_lexical (preprocessing.json's lexical module)",
               "the code that reads and applies the TF-IDF model", "lexical"),
    BundleFile(BACKBONE_CONFIG_DIR, "core._export_formats.rebuild_recipe (the library model's config)",
               "core.bundle_predict.RebuiltClassifier (architecture.json's rebuild `config_dir`)",
               "the Hugging Face config the architecture is rebuilt from", "transformers", folder=True),
)
NAMES = tuple(bundle_file.name for bundle_file in CONTRACT)
