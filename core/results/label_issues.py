"""Label issues: training and validation images whose given label the model contradicts most.

Follows cleanlab's recipe (Northcutt et al., "Confident learning", 2021): out-of-sample
predicted probabilities from heads cross-validated over K folds on the frozen backbone's
pooled features, ranked by cleanlab's label quality score
(`cleanlab.rank.get_label_quality_scores`, self-confidence: the out-of-sample
probability of the given label, lowest first), with cleanlab's `find_label_issues`
marking the images it counts as likely mislabelled.

Heads (scikit-learn): "knn", a distance-weighted k-nearest-neighbour vote on
L2-normalised features (cosine similarity, as cleanlab's Datalab uses for features);
"logistic", strongly regularised logistic regression on L2-normalised, standardised
features; and "ensemble", the default, the mean of the two heads' probabilities. On
flowers at 128 px with 5 % of the training labels flipped (four flip seeds), the
ensemble put 0.56-0.61 of the flipped images in the top 5 % of the ranking, k-NN alone
0.50-0.54 and logistic regression alone 0.57-0.58 (benchmarks/benchmark_insight.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from core.errors import UserError

FOLDS = 5
NEIGHBOURS = 30
HEADS = ("ensemble", "knn", "logistic")
#: L2 weight of the logistic head on its mean log loss (sklearn's C = 1 / (weight * n)): strong,
#: since N is small against D = 1,280 (on flowers' 3,100 images a fold, C = 3.2e-4).
LOGISTIC_L2 = 1.0
#: The splits label issues are looked for in (the test split stays untouched, as held-out data).
SPLITS = ("train", "validation")


@dataclass
class LabelIssues:
    """Images ranked from the most to the least likely mislabelled (all arrays (N,), rank order).

    position: the image's index in the features / labels given; label: the given
    class; suggested: the class the out-of-sample heads find most probable;
    score: cleanlab's label quality in [0, 1] (low = likely wrong); is_issue:
    whether `find_label_issues` flags it; pred_probs: (N, C) out-of-sample
    probabilities, in input order.
    """

    position: np.ndarray
    label: np.ndarray
    suggested: np.ndarray
    score: np.ndarray
    is_issue: np.ndarray
    pred_probs: np.ndarray


def out_of_sample_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int,
                                folds: int = FOLDS, seed: int = 0, head: str = "ensemble") -> np.ndarray:
    """Each image's class probabilities (N, C) float64 from a `head` ("ensemble", "knn" or
    "logistic") fitted on the other folds (`cross_val_predict`, stratified K folds) of
    features (N, D); "ensemble" is the mean of the other two.
    Raises UserError when a class has fewer than 2 images."""
    if head == "ensemble":
        return np.mean([out_of_sample_probabilities(features, labels, num_classes, folds, seed, part)
                        for part in ("knn", "logistic")], axis=0)
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)
    if counts.min() < 2:
        raise UserError(f"Label issues need at least 2 images of every class; the smallest class has {counts.min()}.",
                        "Add images to the small classes, or exclude fewer.")
    folds = int(min(folds, counts.min()))
    if head == "knn":  # at most as many neighbours as a fold's training part holds
        neighbours = min(NEIGHBOURS, len(labels) - -(-len(labels) // folds))
        model = make_pipeline(Normalizer(), KNeighborsClassifier(neighbours, weights="distance"))
    elif head == "logistic":
        fitted = len(labels) * (folds - 1) / folds  # images each fold's head is fitted on
        model = make_pipeline(Normalizer(), StandardScaler(),
                              LogisticRegression(C=1.0 / (LOGISTIC_L2 * fitted), max_iter=1000))
    else:
        raise UserError(f"Unknown label-issue head {head!r}.", f"Choose one of: {', '.join(HEADS)}.")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, features, labels, cv=cv, method="predict_proba")


def rank_label_issues(labels: np.ndarray, pred_probs: np.ndarray) -> LabelIssues:
    """Rank images by cleanlab's label quality score (lowest first) from out-of-sample
    probabilities (N, C); ties keep input order."""
    labels = np.asarray(labels)
    scores = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    flagged = find_label_issues(labels, pred_probs)
    order = np.argsort(scores, kind="stable")
    return LabelIssues(position=order, label=labels[order], suggested=pred_probs.argmax(axis=1)[order],
                       score=scores[order], is_issue=flagged[order], pred_probs=pred_probs)


def find_issues(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0,
                head: str = "ensemble") -> LabelIssues:
    """`rank_label_issues` on `out_of_sample_probabilities` of pooled features (N, D)."""
    return rank_label_issues(labels, out_of_sample_probabilities(features, labels, num_classes, seed=seed, head=head))
