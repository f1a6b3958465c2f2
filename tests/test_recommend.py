"""Which backbone? The choice rule, and the probe against the app's own training runs on real data and weights."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from core import recommend
from core.data import load_sample
from core.dataset import Dataset


def candidate(name: str, accuracy: float, interval: tuple[float, float], params: float, speed: float = 10.0
              ) -> recommend.Candidate:
    return recommend.Candidate(
        name=name, title=name.title(), accuracy=accuracy, interval95=interval, n=240, protocol="5-fold "
        "cross-validation", examples_per_second=speed, speed_examples=64, speed_from="feature pass",
        params_millions=params, gmacs=1.0, feature_seconds=1.0,
    )


def test_a_smaller_backbone_inside_the_top_interval_is_chosen_and_the_sentence_says_why() -> None:
    small, large = candidate("small", 0.86, (0.81, 0.90), 3.4), candidate("large", 0.89, (0.84, 0.92), 6.1)
    chosen, sentence = recommend.choose([large, small])
    assert chosen is small
    assert "inside the 95 % interval" in sentence and "smaller and faster" in sentence


def test_the_top_backbone_is_chosen_when_no_smaller_one_scores_inside_its_interval() -> None:
    small, large = candidate("small", 0.70, (0.64, 0.75), 3.4), candidate("large", 0.89, (0.84, 0.92), 6.1)
    chosen, sentence = recommend.choose([small, large])
    assert chosen is large and "best for your data" in sentence


def test_one_backbone_is_not_a_ranking() -> None:
    only = candidate("only", 0.8, (0.7, 0.9), 22.7)
    chosen, sentence = recommend.choose([only])
    assert chosen is only and "nothing to rank" in sentence


def digits_subset(classes: int, per_class: int) -> Dataset:
    """The first `per_class` sample digits of the first `classes` classes (the probe's cost is a run's per backbone,
    so the test keeps the data small); no split is given, so it is scored by cross-validation, as the app does."""
    dataset, _ = load_sample("images")
    kept = dataset.table[dataset.table["label"].isin(dataset.classes[:classes])]
    table = kept.groupby("label", group_keys=False).head(per_class).reset_index(drop=True)
    return Dataset(name=f"{per_class} digits per class", modality="image", table=table, root=dataset.root)


def app_run(dataset: Dataset, backbone: str, tmp_path) -> dict:
    """A feature-extraction run with the Train page's defaults (every group frozen, the logistic head), without the
    TF-IDF mix-in of text runs (it does not depend on the backbone; the probe scores the backbone's head alone)."""
    from core.backbones import get_spec
    from core.training import TrainConfig, fit, suggested_settings

    groups = get_spec(backbone).num_groups
    settings = suggested_settings(dataset, groups, groups)
    config = TrainConfig(backbone, frozen_groups=groups, epochs=settings["epochs"], batch_size=settings["batch_size"],
                         lr=settings["lr"], class_weights=settings["class_weights"], lexical="off")
    result = fit(dataset, config, run_dir=tmp_path / backbone)
    assert result.status == "completed", result.error
    return result.estimate


@pytest.mark.integration
def test_the_ranking_agrees_with_the_app_training_runs_on_real_digits(tmp_path) -> None:
    """Real EfficientNet-Lite weights on real digits: each probe number is the one a run of the app reports, so
    the pre-selected backbone's run is within the 95 % interval of the best run."""
    dataset = digits_subset(classes=5, per_class=8)
    names = ["efficientnet_lite0", "efficientnet_lite1"]
    seen: list[float] = []
    ranking = recommend.rank_backbones(dataset, names, device="cpu", progress=lambda fraction, note: seen.append(
        fraction))
    assert [c.name for c in ranking.candidates] == sorted(names, key=lambda n: -ranking.candidate(n).accuracy)
    assert seen[-1] == 1.0 and seen == sorted(seen), "progress only goes forward, to the end"
    runs = {name: app_run(dataset, name, tmp_path) for name in names}
    for name in names:
        probe, run = ranking.candidate(name), runs[name]
        assert probe.n == run["n"] == 40 and run["protocol"] == "cross-validation"
        assert probe.accuracy == pytest.approx(run["accuracy"], abs=1e-9), name
        assert probe.examples_per_second > 0 and probe.speed_examples > 0
    best_run = max(runs.values(), key=lambda run: run["accuracy"])
    assert runs[ranking.best]["accuracy"] >= best_run["accuracy_interval95"][0]
    assert ranking.to_dict()["best"] == ranking.best


@pytest.mark.integration
def test_the_command_line_ranks_texts_and_says_there_is_one_backbone(capsys, tmp_path) -> None:
    """MiniLM is the only text backbone offline: one row, no pretend ranking, and its number is a run's
    (the class-name prior included). 8 texts of each of the sample's classes."""
    from core.__main__ import main
    from core.data import load_path

    sample, _ = load_sample("texts")
    texts = sample.table.groupby("label", group_keys=False).head(8)[["item", "label"]]
    texts.rename(columns={"item": "text"}).to_csv(tmp_path / "texts.csv", index=False)
    assert main(["recommend", "--data", str(tmp_path / "texts.csv"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in printed["candidates"]] == ["all_minilm_l6_v2"] == [printed["best"]]
    assert "nothing to rank" in printed["sentence"]
    dataset, _ = load_path(tmp_path / "texts.csv")
    run = app_run(dataset, "all_minilm_l6_v2", tmp_path)
    assert printed["candidates"][0]["accuracy"] == pytest.approx(run["accuracy"], abs=1e-9)
    assert printed["candidates"][0]["n"] == run["n"] == len(dataset.table)


def test_a_backbone_for_another_kind_of_data_is_refused_with_its_reason() -> None:
    texts = Dataset(name="notes", modality="text",
                    table=pd.DataFrame({"item": ["a", "b"], "label": ["x", "y"], "split": ["train", "train"]}))
    with pytest.raises(ValueError, match="reads images"):
        recommend.rank_backbones(texts, ["efficientnet_lite0"])


# ---------------------------------------------------------------------------------------------------- the page


def fake_ranking(dataset: Dataset, names: list[str]) -> recommend.Ranking:
    """Lite1 on top, Lite0 inside its interval: the smaller Lite0 is pre-selected."""
    scores = {"efficientnet_lite1": 0.90, "efficientnet_lite0": 0.88, "efficientnet_lite2": 0.70,
              "all_minilm_l6_v2": 0.80}
    rows = [candidate(name, scores[name], (scores[name] - 0.05, scores[name] + 0.04), 3.0 + index)
            for index, name in enumerate(names)]
    rows.sort(key=lambda row: -row.accuracy)
    best, sentence = recommend.choose(rows)
    return recommend.Ranking(dataset.name, dataset.fingerprint, dataset.modality, rows, best.name, sentence)


@pytest.fixture
def ranked(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The page's ranking without features (its real work is tested above): records each call's names."""
    calls: list[list[str]] = []

    def rank(dataset: Dataset, names: list[str], progress=None, **_: object) -> recommend.Ranking:
        calls.append(list(names))
        for done in range(len(names) + 1):
            progress(done / len(names), f"{done} of {len(names)}")
        return fake_ranking(dataset, names)

    monkeypatch.setattr(recommend, "rank_backbones", rank)
    return calls


def test_the_page_ranks_on_a_click_preselects_the_best_and_does_not_recompute_on_a_rerun(tmp_path, ranked) -> None:
    from core.session import StudioState
    from tests.test_pages_backbone_freezing import start
    from tests.tiny import make_colour_dataset

    state = StudioState(dataset=make_colour_dataset(tmp_path / "colours", per_class=3))
    at = start("pages/2_backbone.py", state)
    assert at.selectbox[0].value == "efficientnet_lite0"
    at.selectbox[0].set_value("efficientnet_lite2").run()
    at.button(key="backbone_rank").click().run()
    assert not at.exception, at.exception
    assert not [b for b in at.button if b.key == "backbone_rank"], "the page redraws with the ranking, no button"
    assert ranked == [["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]]
    table = at.dataframe[1].value
    assert list(table["Backbone"]) == ["Efficientnet_Lite1", "Efficientnet_Lite0  ✅", "Efficientnet_Lite2"]
    assert {"Accuracy", "95 % interval", "n", "Examples/s", "Parameters (M)"} <= set(table.columns)
    assert "smaller and faster" in "\n".join(str(s.value) for s in at.success)
    assert at.selectbox[0].value == "efficientnet_lite0" and state.backbone_name == "efficientnet_lite0"

    at.selectbox[0].set_value("efficientnet_lite1").run()  # the user's own choice wins after the pre-selection
    assert state.backbone_name == "efficientnet_lite1" and len(ranked) == 1, "cached: a rerun does not recompute"
    assert len(at.dataframe[1].value) == 3
    assert not [b for b in at.button if b.key == "backbone_rank"], "ranked already: no button to press again"


def test_the_page_says_plainly_when_there_is_only_one_backbone_to_rank(ranked) -> None:
    from core.session import StudioState
    from tests.test_pages_backbone_freezing import start, text_dataset

    at = start("pages/2_backbone.py", StudioState(dataset=text_dataset()))
    assert "there is nothing to rank" in "\n".join(str(i.value) for i in at.info)
    at.button(key="backbone_rank").click().run()
    assert len(at.dataframe[1].value) == 1
    assert "nothing to rank" in "\n".join(str(s.value) for s in at.success)
