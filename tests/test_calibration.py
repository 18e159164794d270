"""Temperature scaling on synthetic logits, and the unsure verdict."""
import numpy as np
import pytest

from core.errors import UserError
from core.results import calibration


def over_confident(n: int = 2000, classes: int = 4, scale: float = 4.0, seed: int = 0):
    """Labels drawn from softmax(z); the model reports logits scale * z (over-confident by `scale`)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, classes))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return scale * z, labels


def test_temperature_scaling_lowers_validation_nll_of_an_over_confident_model():
    logits, labels = over_confident()
    temperature = calibration.fit_temperature(logits, labels)
    assert temperature == pytest.approx(4.0, rel=0.15)  # undoes the over-confidence
    before = calibration.negative_log_likelihood(logits, labels)
    after = calibration.negative_log_likelihood(logits, labels, temperature)
    assert after < 0.8 * before
    # the fit is the minimum: nearby temperatures are no better
    for other in (temperature * 0.8, temperature * 1.25):
        assert calibration.negative_log_likelihood(logits, labels, other) >= after


def test_binary_logit_is_scaled_like_its_two_class_softmax():
    logits, labels = over_confident(classes=2, scale=3.0, seed=1)
    one_logit = (logits[:, 1] - logits[:, 0])[:, None]  # sigmoid(l1 - l0) == softmax(l)[1]
    assert calibration.fit_temperature(one_logit, labels) == pytest.approx(
        calibration.fit_temperature(logits, labels), rel=1e-3)


def test_scaling_never_changes_the_predicted_class():
    logits, _ = over_confident(n=200)
    for temperature in (0.3, 1.0, 7.0):
        assert (calibration.scaled_probabilities(logits, temperature).argmax(axis=1) == logits.argmax(axis=1)).all()


def test_empty_validation_split_is_a_user_error():
    with pytest.raises(UserError, match="validation split is empty") as raised:
        calibration.fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))
    assert raised.value.hint


def test_verdicts_mark_predictions_below_the_threshold_unsure():
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8]])
    verdicts = calibration.verdicts(probs, ["cat", "dog"], 0.6)
    assert [v["label"] for v in verdicts] == ["cat", "unsure", "dog"]
    assert [v["predicted"] for v in verdicts] == ["cat", "cat", "dog"]
    assert [v["confidence"] for v in verdicts] == pytest.approx([0.9, 0.55, 0.8])
    assert [v["label"] for v in calibration.verdicts(probs, ["cat", "dog"], 0.0)] == ["cat", "cat", "dog"]


def test_perfectly_separated_validation_does_not_sharpen():
    """Every validation image right and far apart: the NLL falls all the way to the search's
    bound, which is no evidence of under-confidence; the temperature stays 1."""
    from core.results.calibration import fit_temperature

    logits = np.array([[3.0, -1.0], [-2.0, 2.5], [4.0, 0.0], [0.5, 3.0]])
    labels = np.array([0, 1, 0, 1])
    assert fit_temperature(logits, labels) == 1.0
