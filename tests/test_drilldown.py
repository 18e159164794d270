"""core.results.drilldown.cell_members: exactly one confusion-matrix cell's images, by confidence."""
import numpy as np

from core.results.drilldown import cell_members
from core.results.evaluation import confusion_matrix


def test_cells_partition_the_samples_and_match_the_confusion_matrix():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), size=200)
    labels = rng.integers(0, 3, 200)
    matrix = confusion_matrix(labels, probs.argmax(axis=1), 3)
    seen = []
    for true in range(3):
        for predicted in range(3):
            members = cell_members(labels, probs, true, predicted)
            assert len(members) == matrix[true, predicted]
            assert set(labels[members]) <= {true} and set(probs[members].argmax(axis=1)) <= {predicted}
            confidence = probs[members, predicted]
            assert np.all(np.diff(confidence) <= 0)  # most confident first
            seen += members.tolist()
    assert sorted(seen) == list(range(200))


def test_a_cell_lists_exactly_its_images():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 0, 0, 1, 1])
    assert cell_members(labels, probs, 0, 1).tolist() == [1, 2]
    assert cell_members(labels, probs, 1, 0).tolist() == [4]
    assert cell_members(labels, probs, 1, 1).tolist() == [3]
