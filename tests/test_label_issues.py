"""Label issues (core.results.label_issues) and the embedding map (core.results.embedding):
labels flipped on purpose rank first, from out-of-sample probabilities."""
import numpy as np
import pytest

from core.config import ModelConfig
from core.errors import UserError
from core.model.build import build_model
from core.results import embedding, features, label_issues
from tests.helpers import COLOURS


def blobs(per_class=40, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (classes, 16))
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + rng.normal(0, 1, (len(labels), 16)), labels


@pytest.mark.parametrize("head", label_issues.HEADS)
def test_flipped_labels_rank_first_on_features(head):
    feats, labels = blobs()
    flipped = np.array([3, 50, 77, 101, 118])
    given = labels.copy()
    given[flipped] = (labels[flipped] + 1) % 3
    issues = label_issues.find_issues(feats, given, 3, head=head)
    assert set(issues.position[:len(flipped)].tolist()) == set(flipped.tolist())
    assert issues.suggested[:len(flipped)].tolist() == labels[issues.position[:len(flipped)]].tolist()
    flagged = issues.position[issues.is_issue]
    assert len(flagged) and set(flagged.tolist()) <= set(flipped.tolist())  # cleanlab flags no clean image
    assert np.all(np.diff(issues.score) >= 0) and issues.score.min() >= 0 and issues.score.max() <= 1
    assert sorted(issues.position.tolist()) == list(range(len(labels)))  # every image ranked once


@pytest.mark.parametrize("head", label_issues.HEADS)
def test_out_of_sample_probabilities_do_not_see_their_own_label(head):
    feats, labels = blobs(per_class=10, classes=2)
    given = labels.copy()
    given[0] = 1  # in-sample, a k-NN vote would count the image itself; out of sample it cannot
    probs = label_issues.out_of_sample_probabilities(feats, given, 2, head=head)
    assert probs.shape == (20, 2) and probs[0].argmax() == 0
    assert np.allclose(probs.sum(axis=1), 1)


def test_a_class_with_one_image_is_a_clear_error():
    feats, labels = blobs(per_class=5, classes=2)
    labels[-5:-1] = 0
    with pytest.raises(UserError, match="at least 2 images of every class"):
        label_issues.out_of_sample_probabilities(feats, labels, 2)


def test_flipped_colour_images_rank_first_with_pretrained_features():
    """Real pipeline: MobileNet's ImageNet features of colour images, two labels flipped."""
    rng = np.random.default_rng(1)
    names = list(COLOURS)
    labels = np.repeat(np.arange(3), 12)
    images = np.stack([np.clip(np.array(COLOURS[names[label]]) + rng.normal(0, 25, (128, 128, 3)), 0, 255)
                       for label in labels]).astype("uint8")
    given = labels.copy()
    given[[5, 30]] = [2, 0]
    classifier = build_model(ModelConfig(backbone="MobileNet", weights="imagenet"), 3, 128)
    pooled = features.pooled_features(classifier.model, images, batch_size=16)
    assert pooled.shape == (36, classifier.pooling.output.shape[-1])
    issues = label_issues.find_issues(pooled, given, 3)
    assert set(issues.position[:2].tolist()) == {5, 30}


def test_pooled_features_stop_between_batches():
    from core.training.progress import Progress
    from core.training.progress import Stopped

    model = build_model(ModelConfig(backbone="MobileNet", weights="none"), 2, 96).model
    progress = Progress()
    progress.request_stop()
    with pytest.raises(Stopped):
        features.pooled_features(model, np.zeros((4, 96, 96, 3), "uint8"), batch_size=2, progress=progress)


def test_pca_projection_separates_blobs_and_keeps_the_order():
    feats, labels = blobs()
    coords = embedding.project(feats)
    assert coords.shape == (len(labels), 2)
    centres = np.stack([coords[labels == c].mean(axis=0) for c in range(3)])
    spread = max(coords[labels == c].std(axis=0).max() for c in range(3))
    assert min(np.linalg.norm(centres[a] - centres[b]) for a, b in ((0, 1), (0, 2), (1, 2))) > spread
    assert embedding.project(feats[:1]).shape == (1, 2)
    assert "PCA" in embedding.available_methods()
