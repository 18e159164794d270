"""AppTest of the Model page: the counts core computes, the unfreeze control, missing weights.

The page runs inside the whole app on the built-in demo data at 96 px; every
expected number is computed here with `core.model.build` on an independently built model.
"""
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.config import AugmentConfig, DataConfig, ModelConfig
from core.data import datasets
from core.model.augmentation import build_augmentation
from core.model.build import build_model, count_params
from core.model.trainable_api import trainable_api_demo

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"
DATA = DataConfig(image_size=96)
METRICS = {
    "Total params": "total_params",
    "Trainable params": "trainable_params",
    "Non-trainable params": "non_trainable_params",
    "Trainable weight tensors": "trainable_weight_tensors",
}


@pytest.fixture(scope="module")
def num_classes() -> int:
    return datasets.load(DATA).num_classes


@pytest.fixture(scope="module")
def expected(num_classes):
    """The counts core reports for the default model with a given freezing."""
    model = build_model(ModelConfig(), num_classes, DATA.image_size, build_augmentation(AugmentConfig()))

    def counts(fine_tune_at: str | None, freeze_batchnorm: bool = False) -> dict:
        model.freeze(fine_tune_at, freeze_batchnorm)
        return count_params(model.model)

    return counts


@pytest.fixture
def page() -> AppTest:
    """The whole app, switched to the Model page, on the demo data at 96 px."""
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["data_config"] = DATA
    at.run()
    at.switch_page("pages/model.py")
    at.run()
    assert not at.exception
    return at


def shown_counts(at: AppTest) -> dict:
    return {METRICS[metric.label]: int(metric.value.replace(",", "")) for metric in at.metric}


def shown_layers(at: AppTest):
    table = next(frame.value for frame in at.dataframe if "part" in frame.value)
    return table[table["part"] == "backbone"]


def test_frozen_backbone_shows_the_counts_core_computes(page, expected):
    assert shown_counts(page) == expected(None)
    assert page.session_state["model_config"] == ModelConfig()
    assert page.session_state["fine_tune_at"] is None
    assert not shown_layers(page)["trainable"].any()


def test_unfreezing_from_a_layer_index_moves_the_trainable_count(page, expected):
    page.radio(key="model_unfreeze").set_value("index").run()
    slider = page.slider(key="model_unfreeze_index:MobileNetV2")
    assert slider.value == 125  # the default cut (DEFAULT_FINE_TUNE), block_14_expand
    slider.set_value(100).run()
    assert not page.exception
    assert shown_counts(page) == expected("100")
    assert shown_counts(page)["trainable_params"] > expected(None)["trainable_params"]
    layers = shown_layers(page)
    assert (layers["trainable"] == (layers["index"] >= 100)).all()
    cut = json.loads(page.get("plotly_chart")[0].proto.spec)["layout"]["shapes"]
    assert 99.5 in [shape["x0"] for shape in cut]

    page.slider(key="model_unfreeze_index:MobileNetV2").set_value(140).run()
    assert shown_counts(page) == expected("140")
    assert page.session_state["fine_tune_at"] == "140"


def test_unfreezing_from_a_layer_name_can_keep_batchnorm_frozen(page, expected):
    page.radio(key="model_unfreeze").set_value("name").run()
    page.selectbox(key="model_unfreeze_name:MobileNetV2").set_value("block_16_expand").run()
    assert not page.exception
    assert shown_counts(page) == expected("block_16_expand")
    assert page.session_state["fine_tune_at"] == "block_16_expand"

    page.checkbox(key="model_freeze_batchnorm").check().run()
    assert shown_counts(page) == expected("block_16_expand", freeze_batchnorm=True)
    assert page.session_state["freeze_batchnorm"] is True


def test_missing_imagenet_weights_offer_random_weights(page, keras_home, num_classes):
    page.selectbox(key="model_backbone").set_value("ResNet50").run(timeout=30)  # no network: fails fast
    assert not page.exception
    message = page.error[0].value
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(keras_home / "models") in message
    assert "weights 'none'" in page.info[0].value
    assert not page.metric

    page.button(key="model_use_random_weights").click().run()
    assert not page.exception and not page.error
    assert page.session_state["model_config"] == ModelConfig(backbone="ResNet50", weights="none")
    assert "Random weights" in page.warning[0].value
    resnet = build_model(ModelConfig(backbone="ResNet50", weights="none"), num_classes, DATA.image_size)
    assert shown_counts(page)["total_params"] == count_params(resnet.model)["total_params"]


def test_trainable_api_panel_runs_the_guides_experiments_when_opened(page):
    assert not page.json  # closed: nothing ran
    page.session_state["model_api_demo"] = True
    page.run()
    assert not page.exception
    experiments = trainable_api_demo()
    codes = [block.value for block in page.code]
    assert all(experiment["code"] in codes for experiment in experiments)
    measured = [json.loads(block.value) for block in page.json]
    assert measured[:3] == [experiment["measured"] for experiment in experiments[:3]]
    assert measured[3]["layer1_max_change"] == 0.0 < measured[3]["layer2_max_change"]
    assert measured[4] == experiments[4]["measured"]


def test_train_head_refuses_to_start_when_the_model_page_found_the_weights_missing(page):
    """A run would fail at once: Start is disabled with the Model page's message and its way out."""
    page.selectbox(key="model_backbone").set_value("ResNet50").run(timeout=30)  # no network: fails fast
    missing = page.error[0].value
    page.switch_page("pages/train_head.py").run()
    assert not page.exception
    start = next(button for button in page.button if button.label == "Start head training")
    assert start.disabled
    assert missing in [error.value for error in page.error]

    page.switch_page("pages/model.py").run()
    page.button(key="model_use_random_weights").click().run()
    page.switch_page("pages/train_head.py").run()
    start = next(button for button in page.button if button.label == "Start head training")
    assert not start.disabled and missing not in [error.value for error in page.error]
