"""The TF-IDF model a text run mixes in and its baselines use: which recipe (words or characters) and strength an
inner cross-validation prefers, fitted with scikit-learn. `core.ngrams` keeps the fitted model in a plain form for
prediction (and for bundles); this module only chooses and fits. It sits below `core.evaluation` and the training
engine, which both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core import smalldata

#: The TF-IDF recipes the baseline chooses between (by inner cross-validation): words and word pairs suit longer
#: texts; character n-grams within words suit short, noisy ones (tweets, product codes, misspellings). On the
#: benchmark's tweets at 64 per class the character model scored 0.796 against 0.751 for words (5 draws).
TFIDF_RECIPES = {
    "word and bigram": {"analyzer": "word", "ngram_range": (1, 2)},
    "character 2-5-gram": {"analyzer": "char_wb", "ngram_range": (2, 5)},
}
_TFIDF_STRENGTHS = (0.3, 3.0, 30.0)


def fit_tfidf(texts: Sequence[str], targets: np.ndarray, seed: int) -> tuple[Any, str]:
    """The TF-IDF recipe and strength an inner cross-validation on these texts prefers (log-loss), refitted on all.

    With too few examples per class for inner folds the word recipe at a moderate strength is used as it is.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline

    pipeline = Pipeline([
        ("tfidf", TfidfVectorizer(sublinear_tf=True, min_df=1)),
        ("logistic", LogisticRegression(C=3.0, max_iter=2000, random_state=seed)),
    ])
    smallest = int(np.bincount(targets)[np.unique(targets)].min())
    if smallest < 2:
        pipeline.set_params(tfidf__ngram_range=(1, 2)).fit(list(texts), targets)
        return pipeline, "word and bigram, C=3"
    grid = [{f"tfidf__{key}": [value] for key, value in recipe.items()} | {"logistic__C": list(_TFIDF_STRENGTHS)}
            for recipe in TFIDF_RECIPES.values()]
    search = GridSearchCV(pipeline, grid, scoring="neg_log_loss", error_score="raise",
                          cv=StratifiedKFold(min(3, smallest), shuffle=True, random_state=seed))
    with smalldata.one_thread(len(targets)):
        search.fit(list(texts), targets)
    chosen = search.best_params_
    recipe = next(name for name, value in TFIDF_RECIPES.items() if value["analyzer"] == chosen["tfidf__analyzer"])
    return search.best_estimator_, f"{recipe}, C={chosen['logistic__C']:g}"
