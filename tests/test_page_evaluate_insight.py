"""AppTest of the Evaluate page's insight panels on a tiny finished run: the confusion
drill-down lists exactly one cell's test images, most confident first, and the Grad-CAM
choice turns the images into the overlays core computes."""
import pytest

from core import workflow
from core.results import drilldown, evaluation, gradcam
from pages._thumbnails import thumbnail_uri
from tests.test_page_evaluate import CONFIG, data_root, page, run  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def test_split(run, data_root):
    images, labels = workflow.load_data(CONFIG.data, data_root).splits["test"]
    model, classes = workflow.load_run_model(run, "final")
    return images, labels, evaluation.predict_probabilities(model, images), classes, model


def cell_table(at):
    return next(frame.value for frame in at.dataframe if "test image" in frame.value.columns)


def test_drilldown_lists_exactly_the_images_of_each_cell_by_confidence(page, test_split):
    images, labels, probs, classes, _ = test_split
    cell = page.selectbox(key="confusion_cell")
    assert len(cell.options) >= 1
    for option in cell.options:
        page.selectbox(key="confusion_cell").select(option).run()
        assert not page.exception
        true, predicted = page.selectbox(key="confusion_cell").value
        table = cell_table(page)
        expected = drilldown.cell_members(labels, probs, true, predicted)
        assert table["test image"].tolist() == expected.tolist()
        assert table[classes[predicted]].to_numpy() == pytest.approx(probs[expected, predicted], abs=1e-6)
        assert table["image"].tolist() == [thumbnail_uri(images[i]) for i in expected]


def test_gradcam_choice_shows_the_overlays_core_computes(page, test_split):
    images, labels, probs, classes, model = test_split
    page.selectbox(key="evaluate_gradcam").select("predicted class").run()
    assert not page.exception
    true, predicted = page.selectbox(key="confusion_cell").value
    members = drilldown.cell_members(labels, probs, true, predicted)
    maps, _ = gradcam.heatmaps(model, images[members])
    overlays = [gradcam.overlay(image, heatmap) for image, heatmap in zip(images[members], maps)]
    assert cell_table(page)["image"].tolist() == [thumbnail_uri(overlay) for overlay in overlays]

    page.selectbox(key="evaluate_gradcam").select(classes[0]).run()
    assert not page.exception
    maps, explained = gradcam.heatmaps(model, images[members], class_index=0)
    assert set(explained.tolist()) == {0}
    assert cell_table(page)["image"].tolist() == [
        thumbnail_uri(gradcam.overlay(image, heatmap)) for image, heatmap in zip(images[members], maps)]
