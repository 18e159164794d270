"""Evaluation metrics against values worked out by hand on small cases."""
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from core.errors import UserError
from core.results import evaluation


def per_class(report, key):
    return [row[key] for row in report["per_class"]]


# --- probabilities -------------------------------------------------------------


def test_binary_logit_maps_to_two_columns_of_sigmoid():
    # sigmoid(0) = 1/2; sigmoid(ln 3) = 3 / (3 + 1) = 3/4.
    probs = evaluation.probabilities(np.array([[0.0], [math.log(3.0)]]))
    np.testing.assert_allclose(probs, [[0.5, 0.5], [0.25, 0.75]])


def test_softmax_of_several_logits():
    # exp(0), exp(ln 2), exp(ln 5) = 1, 2, 5; total 8.
    probs = evaluation.probabilities(np.array([[0.0, math.log(2.0), math.log(5.0)]]))
    np.testing.assert_allclose(probs, [[1 / 8, 2 / 8, 5 / 8]])


@pytest.mark.filterwarnings("error")
def test_extreme_logits_do_not_overflow():
    binary = evaluation.probabilities(np.array([[-1000.0], [1000.0]]))
    softmax = evaluation.probabilities(np.array([[1000.0, 0.0, -1000.0]]))
    np.testing.assert_allclose(binary, [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(softmax, [[1.0, 0.0, 0.0]])


def test_probabilities_sum_to_one():
    logits = np.random.default_rng(0).normal(scale=5.0, size=(20, 4))
    probs = evaluation.probabilities(logits)
    assert probs.shape == (20, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert np.all(probs >= 0)


# --- confusion matrix ----------------------------------------------------------


def test_confusion_matrix_rows_are_true_columns_are_predicted():
    matrix = evaluation.confusion_matrix([0, 1, 1], [2, 1, 0], num_classes=3)
    expected = np.zeros((3, 3), dtype=int)
    expected[0, 2] = 1  # true 0 predicted 2
    expected[1, 1] = 1
    expected[1, 0] = 1  # true 1 predicted 0
    np.testing.assert_array_equal(matrix, expected)


def test_confusion_matrix_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match="y_pred"):
        evaluation.confusion_matrix([0, 1], [0, 3], num_classes=3)


def test_one_hot_labels_are_read_as_class_indices():
    one_hot = np.eye(3)[[2, 0, 1]]
    matrix = evaluation.confusion_matrix(one_hot, [2, 0, 0], num_classes=3)
    np.testing.assert_array_equal(matrix, [[1, 0, 0], [1, 0, 0], [0, 0, 1]])


# --- classification report -----------------------------------------------------


def test_binary_report_by_hand():
    # true [0 0 0 1 1], pred [0 1 0 1 0]
    # class 0: predicted at 0,2,4 -> TP 2 of 3 predicted, 2 of 3 true: P = R = F1 = 2/3.
    # class 1: predicted at 1,3   -> TP 1 of 2 predicted, 1 of 2 true: P = R = F1 = 1/2.
    # accuracy 3/5; macro (2/3 + 1/2) / 2 = 7/12; weighted (3 * 2/3 + 2 * 1/2) / 5 = 3/5.
    report = evaluation.classification_report([0, 0, 0, 1, 1], [0, 1, 0, 1, 0], ["cat", "dog"])
    assert report["accuracy"] == pytest.approx(0.6)
    assert [row["class"] for row in report["per_class"]] == ["cat", "dog"]
    assert per_class(report, "precision") == pytest.approx([2 / 3, 1 / 2])
    assert per_class(report, "recall") == pytest.approx([2 / 3, 1 / 2])
    assert per_class(report, "f1") == pytest.approx([2 / 3, 1 / 2])
    assert per_class(report, "support") == [3, 2]
    assert report["macro"] == pytest.approx({"precision": 7 / 12, "recall": 7 / 12, "f1": 7 / 12})
    assert report["weighted"] == pytest.approx({"precision": 0.6, "recall": 0.6, "f1": 0.6})


@pytest.mark.filterwarnings("error")
def test_three_class_report_by_hand_with_a_class_never_true():
    # true [0 0 1 1 1 0], pred [0 2 1 1 0 2]
    # class 0: support 3 (0,1,5); predicted at 0,4 -> TP 1: P 1/2, R 1/3, F1 = (2 * 1/6) / (5/6) = 2/5.
    # class 1: support 3 (2,3,4); predicted at 2,3 -> TP 2: P 1, R 2/3, F1 = (4/3) / (5/3) = 4/5.
    # class 2: support 0; predicted twice, never right: P 0/2 = 0, R 0/0 -> 0, F1 0.
    # accuracy 3/6. macro P (1/2 + 1 + 0) / 3 = 1/2, R (1/3 + 2/3 + 0) / 3 = 1/3, F1 (2/5 + 4/5) / 3 = 2/5.
    # weighted (supports 3, 3, 0): P (3/2 + 3) / 6 = 3/4, R (1 + 2) / 6 = 1/2, F1 (6/5 + 12/5) / 6 = 3/5.
    y_true, y_pred = [0, 0, 1, 1, 1, 0], [0, 2, 1, 1, 0, 2]
    report = evaluation.classification_report(y_true, y_pred, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(0.5)
    assert per_class(report, "precision") == pytest.approx([1 / 2, 1.0, 0.0])
    assert per_class(report, "recall") == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert per_class(report, "f1") == pytest.approx([2 / 5, 4 / 5, 0.0])
    assert per_class(report, "support") == [3, 3, 0]
    assert report["macro"] == pytest.approx({"precision": 1 / 2, "recall": 1 / 3, "f1": 2 / 5})
    assert report["weighted"] == pytest.approx({"precision": 3 / 4, "recall": 1 / 2, "f1": 3 / 5})
    # rows true, columns predicted: true 0 -> [0, 2, 2], true 1 -> [1, 1, 0].
    matrix = evaluation.confusion_matrix(y_true, y_pred, 3)
    np.testing.assert_array_equal(matrix, [[1, 0, 2], [1, 2, 0], [0, 0, 0]])


@pytest.mark.filterwarnings("error")
def test_class_never_predicted_has_zero_precision_without_warnings():
    # true [0 1], pred [0 0]: class 1 precision 0/0 -> 0, recall 0/1 = 0.
    # class 0: P 1/2, R 1/1, F1 = 1 / (3/2) = 2/3.
    report = evaluation.classification_report([0, 1], [0, 0], ["a", "b"])
    assert per_class(report, "precision") == pytest.approx([1 / 2, 0.0])
    assert per_class(report, "recall") == pytest.approx([1.0, 0.0])
    assert per_class(report, "f1") == pytest.approx([2 / 3, 0.0])
    assert not any(math.isnan(value) for value in report["macro"].values())


# --- losses --------------------------------------------------------------------


def test_cross_entropy_by_hand():
    # -ln 0.8 = 0.22314, -ln 0.4 = 0.91629; mean 0.56972.
    probs = np.array([[0.8, 0.2], [0.4, 0.6]])
    assert evaluation.cross_entropy([0, 0], probs) == pytest.approx(0.569717, abs=1e-6)


def test_cross_entropy_clips_zero_probability():
    # p = 0 is clipped to 1e-7: -ln(1e-7) = 16.1181.
    loss = evaluation.cross_entropy([1], np.array([[1.0, 0.0]]))
    assert loss == pytest.approx(16.1181, abs=1e-4)


def test_top_losses_orders_mistakes_by_loss_and_skips_correct_samples():
    y_true = [0, 1, 2, 0, 0]
    probs = np.array(
        [
            [0.90, 0.05, 0.05],  # correct
            [0.70, 0.20, 0.10],  # wrong, loss -ln 0.2 = 1.609
            [0.30, 0.60, 0.10],  # wrong, loss -ln 0.1 = 2.303
            [0.40, 0.50, 0.10],  # wrong, loss -ln 0.4 = 0.916
            [0.35, 0.33, 0.32],  # correct, yet loss -ln 0.35 = 1.050 > sample 3
        ]
    )
    assert evaluation.top_losses(y_true, probs, k=10) == [2, 1, 3]
    assert evaluation.top_losses(y_true, probs, k=2) == [2, 1]


# --- running a model -----------------------------------------------------------


def colour_model(units: int) -> keras.Model:
    """Raw pixels -> (inactive) flip -> [0, 1] -> mean colour -> Dense with an identity kernel.

    A pure red, green or blue image gives logits that are one-hot on its colour.
    """
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.Rescaling(1 / 255)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(units)
    outputs = dense(x)
    model = keras.Model(inputs, outputs)
    kernel = np.eye(3, units, dtype="float32")
    dense.set_weights([kernel, np.zeros(units, dtype="float32")])
    return model


def solid_images(colour_indices) -> np.ndarray:
    images = np.zeros((len(colour_indices), 8, 8, 3), dtype="float32")
    for i, channel in enumerate(colour_indices):
        images[i, :, :, channel] = 255.0
    return images


def test_evaluate_three_class_model_on_raw_pixels():
    # red, green, blue, red images with labels 0, 1, 2, 1 (the last one is a mistake).
    # logits one-hot -> softmax [e, 1, 1] / (e + 2): predicted class confidence 0.57612,
    # other classes 0.21194. Loss: three samples -ln 0.57612 = 0.55144, one -ln 0.21194 = 1.55144;
    # mean (3 * 0.55144 + 1.55144) / 4 = 0.80144.
    model = colour_model(3)
    report = evaluation.evaluate(model, solid_images([0, 1, 2, 0]), [0, 1, 2, 1], ["red", "green", "blue"])
    assert report["accuracy"] == pytest.approx(0.75)
    assert report["loss"] == pytest.approx(0.80144, abs=1e-5)
    assert report["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert report["class_names"] == ["red", "green", "blue"]
    assert [p["predicted"] for p in report["predictions"]] == [0, 1, 2, 0]
    assert [p["label"] for p in report["predictions"]] == [0, 1, 2, 1]
    assert [p["confidence"] for p in report["predictions"]] == pytest.approx([0.57612] * 4, abs=1e-5)
    assert report["predictions"][3]["loss"] == pytest.approx(1.55144, abs=1e-5)
    assert json.loads(json.dumps(report)) == report


def test_evaluate_binary_model_uses_sigmoid():
    # One unit reading the red channel: red image logit 1 -> p(class 1) = sigmoid(1) = 0.73106,
    # green image logit 0 -> 0.5, a tie resolved to class 0 (argmax takes the first).
    model = colour_model(1)
    report = evaluation.evaluate(model, solid_images([0, 1]), [1, 0], ["cat", "dog"])
    assert [p["predicted"] for p in report["predictions"]] == [1, 0]
    assert report["predictions"][0]["confidence"] == pytest.approx(0.73106, abs=1e-5)
    assert report["accuracy"] == 1.0


def test_evaluate_rejects_a_model_for_another_number_of_classes():
    with pytest.raises(UserError, match="3 classes"):
        evaluation.evaluate(colour_model(3), solid_images([0]), [0], ["cat", "dog"])


def test_predict_probabilities_from_dataset_matches_arrays():
    model = colour_model(3)
    images = solid_images([0, 1, 2, 2, 1])
    labels = np.array([0, 1, 2, 2, 1])
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    from_arrays = evaluation.predict_probabilities(model, images, batch_size=2)
    from_dataset = evaluation.predict_probabilities(model, dataset)
    assert from_arrays.shape == (5, 3)
    np.testing.assert_allclose(from_dataset, from_arrays, rtol=1e-6)
    np.testing.assert_array_equal(from_arrays.argmax(axis=1), labels)


def test_interpretation_predicts_once_and_its_views_agree():
    import keras

    from core.results.evaluation import Interpretation

    calls = []

    class Counting(keras.Model):
        def call(self, x):
            calls.append(1)
            return keras.ops.stack([x[:, 0, 0, 0], 255.0 - x[:, 0, 0, 0]], axis=1) / 50.0

    images = np.zeros((6, 2, 2, 3), "float32")
    images[:, 0, 0, 0] = [250, 240, 10, 5, 200, 30]  # high -> class 0, low -> class 1
    labels = np.array([0, 0, 1, 1, 1, 0])  # samples 4 and 5 are mistakes
    interp = Interpretation.from_model(Counting(), images, labels, ["a", "b"])
    assert len(calls) == 1
    assert interp.predicted.tolist() == [0, 0, 1, 1, 0, 1]
    assert interp.confusion_matrix().tolist() == [[2, 1], [1, 2]]
    assert sorted(interp.top_losses(5)) == [4, 5]
    report = interp.report()
    assert report["accuracy"] == 4 / 6
    assert report["confusion_matrix"] == interp.confusion_matrix().tolist()
    assert [p["loss"] for p in report["predictions"]] == interp.losses.tolist()
