"""core.data: every input kind, every check, every bad input (real files made in the test), the split, the CLI."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core import data
from core.__main__ import main as cli_main
from core._zipsafe import ZipLimits
from core.dataset import Dataset
from core.paths import assets_dir, workspace_subdir


def png_bytes(colour: tuple[int, int, int], size: int = 16, mode: str = "RGB", noise_seed: int | None = None) -> bytes:
    pixels = np.zeros((size, size, 3), np.uint8) + np.array(colour, np.uint8)
    if noise_seed is not None:
        pixels = np.clip(pixels + np.random.default_rng(noise_seed).integers(0, 40, pixels.shape), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(size: tuple[int, int] = (40, 20), orientation: int | None = None, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3)).astype(np.uint8)
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if orientation is None:
        image.save(buffer, format="JPEG")
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def make_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def class_entries(
    prefix: str = "", per_class: int = 6, classes: tuple[str, ...] = ("cats", "dogs")
) -> dict[str, bytes]:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    return {
        f"{prefix}{label}/{label}_{i}.png": png_bytes(colours[c], noise_seed=c * 100 + i)
        for c, label in enumerate(classes)
        for i in range(per_class)
    }


def write_tree(root: Path, entries: dict[str, bytes]) -> Path:
    for name, content in entries.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def codes(report: dict, kind: str = "warnings") -> set[str]:
    return {problem["code"] for problem in report[kind]}


def problem(report: dict, code: str) -> dict:
    return next(p for p in report["errors"] + report["warnings"] if p["code"] == code)


# ------------------------------------------------------------------------------------------------- input kinds


def test_zip_of_class_folders_with_wrapping_folder_and_junk_is_extracted_to_workspace() -> None:
    entries = class_entries("export/my data/")
    entries["__MACOSX/export/my data/cats/._cats_0.png"] = b"\x00\x05\x16\x07junk"
    entries["export/my data/cats/.DS_Store"] = b"junk"
    entries["export/my data/.hidden.png"] = b"junk"
    entries["export/my data/.ipynb_checkpoints/x.png"] = b"junk"
    archive = make_zip(entries)

    dataset, report = data.load_zip(archive, name="pets.zip")

    assert report["ok"], report
    assert dataset.modality == "image" and dataset.classes == ["cats", "dogs"]
    assert report["info"]["skipped_junk"] == 4
    assert report["info"]["per_class"] == {"cats": 6, "dogs": 6}
    assert not report["warnings"]
    datasets = workspace_subdir("datasets").resolve()
    for item in dataset.table["item"]:
        assert Path(item).resolve().is_relative_to(datasets)
        with Image.open(item) as image:
            assert image.mode == "RGB"
    again, _ = data.load_zip(archive, name="pets.zip")
    assert again.table["item"].tolist() == dataset.table["item"].tolist()
    assert again.fingerprint == dataset.fingerprint


def test_zip_with_images_and_label_csv() -> None:
    images = {f"img/{i}.png": png_bytes((200, 30, 30) if i % 2 else (30, 30, 200), noise_seed=i) for i in range(10)}
    rows = ["file,label"] + [f"img/{i}.png,{'red' if i % 2 else 'blue'}" for i in range(9)] + ["img/missing.png,red"]
    archive = make_zip({**images, "labels.csv": "\n".join(rows).encode()})

    dataset, report = data.load_zip(archive, name="listed.zip")

    assert dataset.classes == ["blue", "red"]
    assert len(dataset.table) == 9
    assert codes(report) >= {"missing_files", "unlisted_images"}
    assert "missing.png" in problem(report, "missing_files")["message"]
    assert problem(report, "unlisted_images")["items"] == ["img/9.png"]


def test_existing_split_folders_are_respected(tmp_path: Path) -> None:
    entries = {}
    for split, count in (("train", 6), ("valid", 2), ("test", 2)):
        entries.update(class_entries(f"{split}/", per_class=count))
    # the same content under a different file name must not be re-assigned across splits: names differ per split
    root = write_tree(tmp_path / "split_data", entries)

    dataset, report = data.load_folder(root)

    assert report["info"]["split_sizes"] == {"train": 12, "val": 4, "test": 4}
    assert set(dataset.table.loc[dataset.table["source"].str.startswith("valid/"), "split"]) == {"val"}
    assert "folders" in report["info"]["split_source"]


def test_missing_test_folder_is_carved_from_train(tmp_path: Path) -> None:
    entries = {**class_entries("train/", per_class=10), **class_entries("val/", per_class=2)}
    dataset, report = data.load_folder(write_tree(tmp_path / "d", entries))
    sizes = report["info"]["split_sizes"]
    assert sizes["val"] == 4 and sizes["test"] > 0 and sizes["train"] + sizes["test"] == 20
    assert "test carved from train" in report["info"]["split_source"]


def test_csv_next_to_images_via_load_path(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for i in range(8):
        write_tree(root, {f"{i}.png": png_bytes((200, 30, 30) if i < 4 else (30, 30, 200), noise_seed=i)})
    (root / "labels.csv").write_text(
        "filename,class\n" + "\n".join(f"{i}.png,{'a' if i < 4 else 'b'}" for i in range(8))
    )

    dataset, report = data.load_path(root / "labels.csv")

    assert dataset.modality == "image" and report["info"]["per_class"] == {"a": 4, "b": 4}


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "latin-1"])
def test_text_csv_encodings(encoding: str) -> None:
    rows = [("Le café était froid", "plainte"), ("Très bon service merci", "éloge")] * 6
    rows = [(f"{text} {i}", label) for i, (text, label) in enumerate(rows)]
    content = "texte,catégorie\n" + "\n".join(f"{t},{lab}" for t, lab in rows)

    dataset, report = data.load_text_table(
        content.encode(encoding), name="avis.csv", text_column="texte", label_column="catégorie"
    )

    assert report["ok"], report
    assert sorted(dataset.classes) == ["plainte", "éloge"]
    assert dataset.table["item"].iloc[0].startswith("Le café")
    expected = {"utf-8": "utf-8", "utf-8-sig": "utf-8-sig", "latin-1": "windows-1252"}[encoding]
    assert report["info"]["encoding"] == expected


def test_tsv_with_guessed_columns(tmp_path: Path) -> None:
    path = tmp_path / "msgs.tsv"
    lines = ["id\tmessage\tcategory"] + [
        f"{i}\tmessage number {i}, with a comma\t{'x' if i % 2 else 'y'}" for i in range(12)
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    frame = data.read_table(path)
    assert frame.attrs["delimiter"] == "\t"
    assert data.guess_columns(frame) == ("message", "category")
    dataset, report = data.load_path(path)
    assert report["ok"] and dataset.modality == "text" and len(dataset.table) == 12


def test_text_checks_empty_long_and_conflicting_duplicates() -> None:
    rows = [(f"ordinary message {i}", "a" if i % 2 else "b") for i in range(12)]
    rows += [("", "a"), ("word " * 300, "a"), ("Same text here", "a"), ("same  text HERE", "b"), ("no label", "")]
    frame = pd.DataFrame(rows, columns=["text", "label"])
    dataset, report = data.load_text_table(frame.to_csv(index=False).encode(), name="t.csv")

    assert codes(report) >= {"empty_texts", "long_texts", "conflicting_duplicates", "missing_labels"}
    assert problem(report, "empty_texts")["items"] == ["row 14"]
    assert "300 words" in problem(report, "long_texts")["message"]
    assert len(dataset.table) == 15  # empty text and unlabelled row dropped; long text kept
    same = dataset.table[dataset.table["item"].str.casefold().str.contains("same")]
    assert same["split"].nunique() == 1


def test_samples_load_and_are_small() -> None:
    images, image_report = data.load_sample("images")
    texts, text_report = data.load_sample("texts")
    assert image_report["ok"] and text_report["ok"]
    assert images.num_classes == 10 and len(images.table) == 240
    assert texts.num_classes == 4 and len(texts.table) >= 150
    assert (assets_dir() / "samples" / "digits.zip").stat().st_size < 1024**2
    assert (assets_dir() / "samples" / "README.md").read_text().count("Licence") >= 2
    with Image.open(images.table["item"].iloc[0]) as image:
        assert image.size == (64, 64)


def test_real_photos_from_scikit_image(tmp_path: Path) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    faces = skimage_data.lfw_subset()  # 100 faces then 100 non-faces, 25x25 grey in [0, 1]
    entries = {}
    for i in range(0, 200, 10):
        label = "face" if i < 100 else "not_face"
        image = Image.fromarray((faces[i] * 255).astype(np.uint8))  # grey: must be normalised to RGB
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        entries[f"{label}/{i}.png"] = buffer.getvalue()
    for name in ("chelsea", "coffee"):
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage_data, name)()).save(buffer, format="JPEG")
        entries[f"not_face/{name}.jpg"] = buffer.getvalue()

    dataset, report = data.load_folder(write_tree(tmp_path / "lfw", entries))

    assert report["ok"] and report["info"]["per_class"] == {"face": 10, "not_face": 12}
    assert report["info"]["normalised_images"] == 20
    for item in dataset.table["item"]:
        with Image.open(item) as image:
            assert image.mode == "RGB"


# ------------------------------------------------------------------------------------------------------ checks


def test_non_images_are_named_per_folder(tmp_path: Path) -> None:
    entries = class_entries()
    entries.update({"cats/a.txt": b"hello", "cats/b.pdf": b"%PDF-1.4", "cats/c.doc": b"\xd0\xcf\x11\xe0"})
    _, report = data.load_folder(write_tree(tmp_path / "d", entries))
    assert problem(report, "not_image")["message"].startswith(
        "3 files in `cats/` are not images and were skipped: a.txt, b.pdf, c.doc"
    )


def test_truncated_jpeg_is_reported_and_skipped(tmp_path: Path) -> None:
    entries = class_entries()
    real_jpeg = jpeg_bytes(size=(64, 64))
    entries["dogs/broken.jpg"] = real_jpeg[: len(real_jpeg) // 2]
    dataset, report = data.load_folder(write_tree(tmp_path / "d", entries))
    damaged = problem(report, "damaged")
    assert damaged["items"] == ["dogs/broken.jpg"] and "`dogs/`" in damaged["message"]
    assert report["ok"] and len(dataset.table) == 12


def test_decompression_bomb_image_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = class_entries()
    entries["cats/huge.png"] = png_bytes((1, 2, 3), size=200)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 200x200 = 40,000 pixels: over twice the limit
    dataset, report = data.load_folder(write_tree(tmp_path / "d", entries))
    assert problem(report, "too_large")["items"] == ["cats/huge.png"]
    assert not dataset.table["source"].str.contains("huge").any()


def test_exif_orientation_and_modes_are_normalised(tmp_path: Path) -> None:
    entries = class_entries()
    entries["cats/rotated.jpg"] = jpeg_bytes(size=(40, 20), orientation=6)  # 90 degrees: upright is 20x40
    entries["dogs/grey.png"] = png_bytes((90, 90, 90), mode="L")
    entries["dogs/alpha.png"] = png_bytes((10, 200, 10), mode="RGBA")
    entries["dogs/palette.png"] = png_bytes((10, 10, 200), mode="P")
    dataset, report = data.load_folder(write_tree(tmp_path / "d", entries))
    assert report["info"]["normalised_images"] == 4
    by_source = dict(zip(dataset.table["source"], dataset.table["item"], strict=True))
    with Image.open(by_source["cats/rotated.jpg"]) as image:
        assert image.size == (20, 40) and image.mode == "RGB"
    for name in ("dogs/grey.png", "dogs/alpha.png", "dogs/palette.png"):
        assert Path(by_source[name]).is_relative_to(workspace_subdir("datasets"))
        with Image.open(by_source[name]) as image:
            assert image.mode == "RGB"
    assert by_source["cats/cats_0.png"] == str(tmp_path / "d" / "cats" / "cats_0.png")  # already fine: no copy


def test_duplicates_in_two_classes_and_kept_in_one_split(tmp_path: Path) -> None:
    entries = class_entries(per_class=10)
    entries["dogs/copy_of_cat.png"] = entries["cats/cats_0.png"]
    entries["cats/cats_copy.png"] = entries["cats/cats_1.png"]
    dataset, report = data.load_folder(write_tree(tmp_path / "d", entries))
    assert "cats/cats_0.png = dogs/copy_of_cat.png" in problem(report, "conflicting_duplicates")["message"]
    assert problem(report, "duplicates")["items"] == ["cats/cats_1.png = cats/cats_copy.png"]
    table = dataset.table.set_index("source")
    assert table.loc["cats/cats_0.png", "split"] == table.loc["dogs/copy_of_cat.png", "split"]
    assert table.loc["cats/cats_1.png", "split"] == table.loc["cats/cats_copy.png", "split"]
    assert "duplicates_across_splits" not in codes(report)


def test_duplicates_across_given_splits_are_leakage(tmp_path: Path) -> None:
    entries = {**class_entries("train/", per_class=6), **class_entries("test/", per_class=2)}
    entries["test/cats/leak.png"] = entries["train/cats/cats_3.png"]
    _, report = data.load_folder(write_tree(tmp_path / "d", entries))
    leak = problem(report, "duplicates_across_splits")
    assert "test/cats/leak.png" in leak["message"] and "leakage" in leak["message"]


def test_class_size_checks(tmp_path: Path) -> None:
    entries = {**class_entries(per_class=30, classes=("big",)), **class_entries(per_class=3, classes=("small",))}
    entries["lonely/only.png"] = png_bytes((5, 5, 5))
    _, report = data.load_folder(write_tree(tmp_path / "d", entries))
    assert not report["ok"]
    assert problem(report, "too_few_examples")["items"] == ["lonely"]
    assert problem(report, "few_examples")["items"] == ["small"]
    assert "30x" in problem(report, "imbalance")["message"]


def test_one_class_is_an_error(tmp_path: Path) -> None:
    _, report = data.load_folder(write_tree(tmp_path / "d", class_entries(classes=("cats",))))
    assert codes(report, "errors") == {"one_class"}
    assert "needs at least two" in report["errors"][0]["message"]


def test_images_outside_class_folders_are_named(tmp_path: Path) -> None:
    entries = {**class_entries(), "stray.png": png_bytes((1, 1, 1)), "README.md": b"# notes"}
    dataset, report = data.load_folder(write_tree(tmp_path / "d", entries))
    assert problem(report, "outside_class_folders")["items"] == ["stray.png"]
    assert "not_image" not in codes(report) and len(dataset.table) == 12


# ------------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("bad_name", ["../evil.png", "/tmp/evil_absolute.png", "cats/..\\..\\evil.png"])
def test_zip_slip_refuses_the_whole_archive(bad_name: str, tmp_path: Path) -> None:
    entries = {**class_entries(), bad_name: png_bytes((1, 2, 3))}
    with pytest.raises(data.DataError, match="points outside") as caught:
        data.load_zip(make_zip(entries), name="slip.zip")
    assert f"`{bad_name}`" in str(caught.value)
    datasets = workspace_subdir("datasets")
    assert not (datasets.parent / "evil.png").exists() and not Path("/tmp/evil_absolute.png").exists()
    assert not list(datasets.glob("*/files/cats"))  # nothing extracted at all


def test_zip_bomb_by_ratio_is_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("cats/bomb.bmp", b"\x00" * (80 * 1024**2))  # 80 MB of zeros, a few KB compressed
        archive.writestr("cats/a.png", png_bytes((1, 1, 1)))
    with pytest.raises(data.DataError, match="zip bombs"):
        data.load_zip(buffer.getvalue(), name="bomb.zip")


def test_zip_limits_on_count_and_total_size() -> None:
    archive = make_zip(class_entries())
    with pytest.raises(data.DataError, match="entries, more than the limit of 5"):
        data.load_zip(archive, name="many.zip", limits=ZipLimits(max_entries=5))
    with pytest.raises(data.DataError, match="would unpack to"):
        data.load_zip(archive, name="big.zip", limits=ZipLimits(max_total_bytes=1000))


def test_corrupt_and_truncated_zip() -> None:
    archive = make_zip(class_entries())
    for broken in (b"this is not a zip", archive[: len(archive) // 2]):
        with pytest.raises(data.DataError, match="not a readable zip archive"):
            data.load_zip(broken, name="broken.zip")


def test_upload_over_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFER_STUDIO_MAX_UPLOAD_MB", "0.001")
    with pytest.raises(data.DataError, match="MB upload limit"):
        data.load_zip(make_zip(class_entries()), name="large.zip")
    with pytest.raises(data.DataError, match="upload limit"):
        data.check_upload_size(20 * 1024**2, "x.zip")


def test_csv_missing_column_and_binary_renamed_csv(tmp_path: Path) -> None:
    csv_bytes = b"text,label\nhello,a\nworld,b\n"
    with pytest.raises(data.DataError, match="no label column `category`; its columns are: `text`, `label`"):
        data.load_text_table(csv_bytes, name="t.csv", label_column="category")
    with pytest.raises(data.DataError, match="is not a text table: it is a PNG image"):
        data.load_text_table(png_bytes((1, 1, 1)), name="photo.csv")
    with pytest.raises(data.DataError, match="binary data"):
        data.load_text_table(b"abc\x00\x01\x02" * 100, name="blob.csv")
    with pytest.raises(data.DataError, match="is empty"):
        data.read_table(b"   \n", name="empty.csv")


def test_server_path_is_confined_to_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_tree(tmp_path / "root", {f"pets/{k}": v for k, v in class_entries().items()})
    write_tree(tmp_path, {"outside/a/x.png": png_bytes((1, 1, 1))})
    with pytest.raises(data.DataError, match="switched off"):
        data.load_server_path("pets")
    monkeypatch.setenv("TRANSFER_STUDIO_DATA_ROOT", str(root))
    assert data.list_server_entries() == ["pets/"]
    dataset, report = data.load_server_path("pets")
    assert report["ok"] and len(dataset.table) == 12
    with pytest.raises(data.DataError, match="outside the server's data folder"):
        data.load_server_path("../outside")
    with pytest.raises(data.DataError, match="outside the server's data folder"):
        data.load_server_path(str(tmp_path / "outside"))


# ------------------------------------------------------------------------------------------------------ split


def test_split_is_stratified_seeded_and_keeps_tiny_classes_in_train() -> None:
    labels = ["a"] * 40 + ["b"] * 20 + ["c"] * 1 + ["d"] * 2
    first = data.split_examples(labels, fractions=(0.7, 0.15, 0.15), seed=3)
    assert first == data.split_examples(labels, fractions=(0.7, 0.15, 0.15), seed=3)
    assert first != data.split_examples(labels, fractions=(0.7, 0.15, 0.15), seed=4)
    table = pd.DataFrame({"label": labels, "split": first})
    counts = pd.crosstab(table["label"], table["split"]).reindex(columns=["train", "val", "test"], fill_value=0)
    assert counts.loc["a"].tolist() == [28, 6, 6]
    assert counts.loc["b"].tolist() == [14, 3, 3]
    assert counts.loc["c", "train"] == 1 and counts.loc["d", "train"] >= 1
    other = data.split_examples(labels, fractions=(0.5, 0.5, 0.0), seed=0)
    assert other.count("test") == 0 and other.count("val") > 0


def test_split_keeps_groups_together() -> None:
    labels = ["a"] * 20 + ["b"] * 20
    groups = [f"g{i // 4}" for i in range(40)]  # groups of 4 identical items
    splits = data.split_examples(labels, groups, seed=1)
    for group in set(groups):
        assert len({split for split, g in zip(splits, groups, strict=True) if g == group}) == 1
    assert {"train", "val", "test"} == set(splits)


def test_bad_fractions_are_a_clear_error() -> None:
    with pytest.raises(data.DataError, match="add up to 1"):
        data.split_examples(["a", "b"], fractions=(0.5, 0.2, 0.2))
    with pytest.raises(data.DataError, match="training fraction"):
        data.split_examples(["a", "b"], fractions=(0.0, 0.5, 0.5))


def test_dataset_contract() -> None:
    dataset, _ = data.load_sample("texts")
    assert isinstance(dataset, Dataset)
    items, targets = dataset.split("train")
    assert len(items) == len(targets) > 0 and set(targets) <= set(range(dataset.num_classes))
    assert dataset.counts().loc[:, "total"].sum() == len(dataset.table)



def test_a_sample_says_it_is_one_and_a_random_split_names_its_recipe() -> None:
    """The Train page writes `--data sample-texts` from the report, and compares the split with the CLI's own."""
    dataset, report = data.load_sample("texts")
    assert report["info"]["sample"] == "texts" and data.load_path("sample-texts")[1]["info"]["sample"] == "texts"
    assert report["info"]["split_source"] == data.random_split_source() == (
        "random, stratified (train/val/test 70%/15%/15%, seed 0)")

# -------------------------------------------------------------------------------------------------------- CLI


def test_cli_check_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["check-data", "sample-texts"]) == 0
    assert "OK: ready to train." in capsys.readouterr().out

    one_class = write_tree(tmp_path / "one", class_entries(classes=("cats",)))
    assert cli_main(["check-data", str(one_class), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["errors"][0]["code"] == "one_class"

    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"garbage")
    assert cli_main(["check-data", str(broken)]) == 2
    assert "not a readable zip" in capsys.readouterr().err

    table = tmp_path / "t.csv"
    table.write_text("a,b,c\n" + "\n".join(f"text {i},{i % 2},x" for i in range(10)))
    assert cli_main(["check-data", str(table), "--text-column", "a", "--label-column", "b"]) == 0
    assert cli_main(["check-data", str(table), "--label-column", "nope"]) == 2


def test_reloading_sees_a_file_that_changed(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "d", class_entries())
    first, _ = data.load_folder(root, seed=0)
    again, report = data.load_folder(root, seed=1)  # remembered inspection: same items, new split
    assert sorted(again.table["item"]) == sorted(first.table["item"]) and report["ok"]
    good = (root / "cats" / "cats_2.png").read_bytes()
    (root / "cats" / "cats_2.png").write_bytes(good[: len(good) // 2])
    _, report = data.load_folder(root, seed=1)
    assert problem(report, "damaged")["items"] == ["cats/cats_2.png"]


def test_identical_files_that_fill_no_held_out_split_are_warned_about(tmp_path) -> None:
    """Identical files stay in one split; when that empties validation and test, the report says so."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    from core.data import load_zip

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, value in (("dark", 30), ("light", 220)):
            image = io.BytesIO()
            Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)).save(image, format="PNG")
            for index in range(6):
                archive.writestr(f"{label}/{index}.png", image.getvalue())
    _dataset, report = load_zip(buffer.getvalue(), name="same.zip")
    codes = [warning["code"] for warning in report["warnings"]]
    assert "empty_split" in codes
    message = next(w["message"] for w in report["warnings"] if w["code"] == "empty_split")
    assert "validation and test" in message


def test_images_in_zip_are_named_by_their_path_inside_it() -> None:
    archive = make_zip({"b/0000.png": png_bytes((0, 0, 200)), "a/0000.png": png_bytes((200, 0, 0)),
                        "a/.DS_Store": b"junk", "readme.txt": b"hello"})  # fmt: skip
    images = data.images_in_zip(archive, name="new.zip")
    assert [inside for inside, _ in images] == ["a/0000.png", "b/0000.png"]
    assert all(path.is_file() and path.as_posix().endswith(inside) for inside, path in images)
    with pytest.raises(data.DataError, match="`texts.zip` holds no images"):
        data.images_in_zip(make_zip({"notes.txt": b"hello"}), name="texts.zip")


def test_plural_agrees_with_the_count() -> None:
    assert [data.plural(n, "mistake") for n in (0, 1, 2)] == ["0 mistakes", "1 mistake", "2 mistakes"]
    assert data.plural(3, "class", "classes") == "3 classes"
