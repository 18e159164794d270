"""AppTests of the app shell and the Data and Augmentation pages.

The demo is loaded at 96 px to stay fast; `st.cache_resource` keeps it for the
whole test process. Folder sources live under a temp data root ($TL_DATA_ROOT).
"""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.config import AugmentConfig, DataConfig
from core.data import demo_data

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
WORKFLOW_PAGES = [
    "pages/data.py", "pages/augmentation.py", "pages/model.py", "pages/train_head.py",
    "pages/fine_tune.py", "pages/evaluate.py", "pages/runs.py",
]
SMALL_DEMO = DataConfig(image_size=96)


def start_app(data_config: DataConfig = SMALL_DEMO) -> AppTest:
    """The app after its first run (the Data page), with `data_config` chosen."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["data_config"] = data_config
    return at.run()


def sidebar_text(at: AppTest) -> str:
    return "\n".join(str(element.value) for element in at.sidebar if hasattr(element, "value"))


def random_views(at: AppTest) -> list:
    """(url, caption) of each augmented preview, the original left out."""
    return [(image.value[0], image.captions[0]) for image in at.image if image.captions[0].startswith("Random view")]


def write_class_folders(folder: Path, classes: dict[str, int]) -> None:
    """`classes[name]` tiny PNGs (32 px, a different colour per class) in folder/<name>/."""
    rng = np.random.default_rng(0)
    for index, (name, count) in enumerate(classes.items()):
        (folder / name).mkdir(parents=True)
        for n in range(count):
            pixels = np.full((32, 32, 3), 60 * index, dtype="uint8") + rng.integers(0, 40, (32, 32, 3), dtype="uint8")
            Image.fromarray(pixels).save(folder / name / f"{name}_{n}.png")


def by_label(elements, label: str):
    """The widget called `label` among `elements` (e.g. `at.slider`)."""
    return next(element for element in elements if element.label == label)


def load_folder_through_form(at: AppTest, folder: str) -> AppTest:
    """Pick "Folder on the server", type `folder` and press Load dataset."""
    by_label(at.radio, "Source").set_value("folder").run()
    by_label(at.text_input, "Folder (relative to the data root)").input(folder)
    by_label(at.selectbox, "Image size (px)").set_value(96)
    by_label(at.button, "Load dataset").click()
    return at.run()


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("TL_DATA_ROOT", str(root))
    return root


def test_shell_registers_the_seven_workflow_pages():
    at = start_app()
    for page in WORKFLOW_PAGES:
        at.switch_page(page)  # raises ValueError for a page st.navigation does not list
    with pytest.raises(ValueError, match="navigation page"):
        at.switch_page("pages/_common.py")


def test_sidebar_shows_current_choices_and_workflow_state():
    # Only the first AppTest run goes through the shell: with a pages/ folder beside
    # the entry point, AppTest runs later reruns as Streamlit's legacy multipage app.
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["data_config"] = DataConfig(image_size=96, batch_size=16)
    at.session_state["augment_config"] = AugmentConfig(flip="vertical", rotation=0.0, zoom=0.2)
    text = sidebar_text(at.run())
    assert "demo · shapes" in text
    assert "96 px · batch 16" in text
    assert "MobileNetV2" in text
    assert "flip=vertical,zoom=0.2" in text
    assert ":material/check_circle: Data loaded" in text, "the sidebar is drawn after the page that loaded it"
    assert ":material/radio_button_unchecked: Head trained" in text


def test_data_page_loads_the_builtin_demo():
    at = start_app()
    assert not at.exception
    assert not at.error
    assert at.title[0].value == "Data"
    assert at.session_state["data_loaded"]
    assert by_label(at.metric, "Classes").value == str(len(demo_data.CLASSES))
    captions = [caption for image in at.image for caption in image.captions]
    assert len(captions) >= 9
    assert set(captions) <= set(demo_data.CLASSES)
    assert at.get("plotly_chart"), "no class-count chart"
    assert any(m.value == "#### Skipped files (0)" for m in at.markdown)
    assert any(c.value == "No file was skipped." for c in at.caption)


def test_folder_source_loads_and_reports_the_corrupt_file(data_root):
    write_class_folders(data_root / "colours", {"dark": 6, "light": 6})
    (data_root / "colours" / "dark" / "broken.png").write_bytes(b"not a png at all")
    at = load_folder_through_form(start_app(), "colours")
    assert not at.exception
    assert not at.error
    assert at.session_state["data_config"].source == "folder"
    assert by_label(at.metric, "Classes").value == "2"
    assert set(at.image[0].captions) <= {"dark", "light"}
    assert any(m.value == "#### Skipped files (1)" for m in at.markdown)
    skipped = at.dataframe[-1].value
    assert skipped["file"].str.endswith("broken.png").tolist() == [True]


def test_folder_outside_the_data_root_shows_an_error_box(data_root):
    write_class_folders(data_root.parent / "outside", {"a": 3, "b": 3})
    at = load_folder_through_form(start_app(), "../outside")
    assert not at.exception
    assert "outside the data root" in at.error[0].value and "TL_DATA_ROOT" in at.info[0].value  # how to change it
    assert at.session_state["data_config"] == SMALL_DEMO, "a refused folder loses nothing: the demo stays loaded"
    assert "still the one loaded before" in " ".join(caption.value for caption in at.caption)


def test_a_data_root_that_does_not_exist_is_said_before_a_folder_is_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_DATA_ROOT", str(tmp_path / "nowhere"))
    at = start_app()
    by_label(at.radio, "Source").set_value("folder").run()
    assert not at.exception
    warning = " ".join(w.value for w in at.warning)
    assert f"{tmp_path / 'nowhere'} does not exist" in warning and "TL_DATA_ROOT" in warning

def test_a_missing_folder_names_the_folders_there_and_keeps_the_current_dataset(data_root):
    write_class_folders(data_root / "colours", {"dark": 3, "light": 3})
    at = load_folder_through_form(start_app(), "colors")
    assert not at.exception
    assert f"There is no folder {data_root / 'colors'}." in at.error[0].value
    assert f"Folders in {data_root}: colours." in at.info[0].value
    assert at.session_state["data_config"] == SMALL_DEMO
    assert at.image, "the demo's samples are still shown"


def test_folder_with_one_class_shows_an_error_box(data_root):
    write_class_folders(data_root / "lonely", {"only": 4})
    at = load_folder_through_form(start_app(), "lonely")
    assert not at.exception
    assert "needs at least two classes" in at.error[0].value
    assert at.info, "the error box comes with a hint"
    assert at.session_state["data_config"] == SMALL_DEMO


def test_augmentation_page_previews_new_views_and_keeps_the_config():
    at = start_app()
    at.switch_page("pages/augmentation.py").run()
    assert not at.exception
    views = random_views(at)
    assert [caption for _, caption in views] == [f"Random view {i}" for i in range(1, 10)]
    assert len({url for url, _ in views}) > 1, "the nine views are not random"

    by_label(at.button, "New random views").click().run()
    assert {url for url, _ in random_views(at)}.isdisjoint({url for url, _ in views})

    by_label(at.slider, "RandomZoom").set_value(0.2).run()
    assert at.session_state["augment_config"].zoom == pytest.approx(0.2)
    assert at.session_state["augmentation_previewed"]
