"""Hostile input and access: folder paths leaving the data root, hostile zip uploads in
the browser, oversized uploads, model files carrying code, cross-site uploads."""
import http.client
import io
import os
import re
import stat
import tomllib
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import keras
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect
from streamlit.testing.v1 import AppTest

from core.config import DataConfig, RunConfig
from core.data.files import GiB, MiB
from core.errors import UserError
from core.results.export import load_model_safe
from core.training import runs
from tests.browser import (  # noqa: F401 (chromium, shared_cache and start_app_server are fixtures)
    ROOT,
    VIEWPORT,
    AppServer,
    chromium,
    shared_cache,
    start_app_server,
    start_server,
    stop_server,
    wait_for_images,
    wait_until_idle,
)

APP = str(ROOT / "streamlit_app.py")
CLASSES = {"dark": 10, "light": 10}


# --- folder source ------------------------------------------------------------------

def png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), shade, dtype="uint8")).save(buffer, format="PNG")
    return buffer.getvalue()


def write_class_folders(folder: Path) -> None:
    for index, (name, count) in enumerate(CLASSES.items()):
        (folder / name).mkdir(parents=True)
        for n in range(count):
            (folder / name / f"{n}.png").write_bytes(png(40 + 150 * index + n))


def load_folder(folder: str) -> AppTest:
    """The Data page after choosing "Folder on the server", typing `folder` and pressing Load dataset."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["data_config"] = DataConfig(image_size=96)
    at.run()
    next(r for r in at.radio if r.label == "Source").set_value("folder").run()
    next(t for t in at.text_input if t.label == "Folder (relative to the data root)").input(folder)
    next(b for b in at.button if b.label == "Load dataset").click()
    return at.run()


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    """A data root with a good dataset inside, and an equally good one outside it."""
    root = tmp_path / "data"
    write_class_folders(root / "inside")
    write_class_folders(tmp_path / "outside")
    (root / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    monkeypatch.setenv("TL_DATA_ROOT", str(root))
    return root


def test_a_folder_inside_the_data_root_loads(data_root):
    at = load_folder("inside")
    assert not at.exception and not at.error
    assert at.session_state["data_loaded"]
    assert {caption for image in at.image for caption in image.captions} <= set(CLASSES)


@pytest.mark.parametrize("escape", ["../outside", "{outside}", "link"], ids=["dotdot", "absolute", "symlink"])
def test_a_folder_outside_the_data_root_shows_an_error_and_loads_nothing(data_root, escape):
    at = load_folder(escape.format(outside=data_root.parent / "outside"))
    assert not at.exception
    assert len(at.error) == 1 and "outside the data root" in at.error[0].value
    assert at.session_state["data_config"] == DataConfig(image_size=96), "nothing is loaded; the demo stays"
    shown = {caption for image in at.image for caption in image.captions}
    assert shown and not shown & set(CLASSES), "only the demo's images are shown, none from outside"


# --- zip uploads in the browser --------------------------------------------------------

def zip_of(*members: tuple[zipfile.ZipInfo | str, bytes]) -> bytes:
    """A zip of two good class folders plus `members` (name or ZipInfo, content)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, (name, count) in enumerate(CLASSES.items()):
            for n in range(count):
                archive.writestr(f"shapes/{name}/{n}.png", png(40 + 150 * index + n))
        for member, content in members:
            archive.writestr(member, content)
    return buffer.getvalue()


def symlink_member(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def zeros_zip(size: int) -> bytes:
    """The good class folders plus one member of `size` zero bytes (compressed about 1000:1)."""
    buffer = io.BytesIO(zip_of())
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("shapes/dark/zeros.png", "w", force_zip64=True) as member:
            chunk = bytes(16 * MiB)
            for _ in range(size // len(chunk)):
                member.write(chunk)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server_folder(tmp_path_factory) -> Path:
    """The zip tests' server's cache and runs: every file in it is theirs."""
    return tmp_path_factory.mktemp("zip-server")


@pytest.fixture(scope="module")
def zip_server(server_folder) -> AppServer:
    env = dict(os.environ, TL_CACHE_DIR=str(server_folder / "cache"), TL_RUNS_DIR=str(server_folder / "runs"))
    server = start_server(env, server_folder.parent / "zip-server.log")  # the log stays outside the folder
    yield server
    stop_server(server)


@pytest.fixture
def page(chromium: Browser) -> Page:
    context = chromium.new_context(viewport=VIEWPORT)
    yield context.new_page()
    context.close()


def files_under(folder: Path) -> set[Path]:
    return {path.relative_to(folder) for path in folder.rglob("*")}


def open_zip_uploader(page: Page, url: str) -> None:
    page.goto(url)
    wait_for_images(page, 9)
    page.get_by_test_id("stRadio").filter(has_text="Source").get_by_text("Upload a .zip").click()


def pick_file(page: Page, path: Path) -> str:
    """Pick `path` in the uploader; the URL the browser uploaded it to."""
    with page.expect_request(lambda request: "/_stcore/upload_file/" in request.url) as request:
        page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(path))
    expect(page.locator(f'[data-testid="stFileChipName"][title="{path.name}"]')).to_be_visible()
    return request.value.url


def upload_zip(page: Page, path: Path, content: bytes) -> None:
    """In the open uploader: write `content` to `path`, upload it, press Load dataset."""
    path.write_bytes(content)
    pick_file(page, path)
    page.get_by_role("button", name="Load dataset").click()


def extraction_folder(new_files: set[Path], name: str) -> Path:
    """Where the server extracts the upload called `name`, after checking that the new
    files are only the kept archive, that folder's contents and their parents."""
    archives = [path for path in new_files if path.name == name]
    assert len(archives) == 1, f"{name} was not kept once: {sorted(map(str, new_files))}"
    uploads = Path("cache", "uploads")
    folder = uploads / archives[0].parent.name
    expected = {uploads, uploads / "archives", archives[0].parent, archives[0], folder}
    # the project's own caches (decoded images, features) hold arrays it wrote, not the upload's files
    own = [Path("cache", "images"), Path("cache", "features")]
    outside = {path for path in new_files if path not in expected and not path.is_relative_to(folder)
               and not any(path == cache or path.is_relative_to(cache) for cache in own)}
    assert not outside, f"written outside the extraction folder: {sorted(map(str, outside))}"
    return folder


@pytest.mark.browser
def test_a_good_zip_upload_loads_inside_its_extraction_folder(zip_server, server_folder, page, tmp_path):
    open_zip_uploader(page, zip_server.url)
    before = files_under(server_folder)
    upload_zip(page, tmp_path / "good.zip", zip_of())
    expect(page.get_by_text("Uploaded good.zip")).to_be_visible(timeout=60_000)
    wait_for_images(page, 9)
    wait_until_idle(page)
    folder = extraction_folder(files_under(server_folder) - before, "good.zip")
    assert (server_folder / folder / "data" / "shapes" / "dark" / "0.png").is_file()


def symlink_member_zip(tmp: Path) -> bytes:
    return zip_of(symlink_member("shapes/dark/secret.png", str(tmp / "secret.png")))


HOSTILE_ZIPS = {
    "traversal": (lambda tmp: zip_of(("../../../../escaped.png", png(9))), "points outside the archive with '..'"),
    "absolute": (lambda tmp: zip_of((f"{tmp}/absolute/escaped.png", png(9))), "has an absolute path"),
    "symlink": (symlink_member_zip, "is a symbolic link"),
    "bomb_beyond_1_gib": (lambda tmp: zeros_zip(GiB + 16 * MiB), "over the limit of 1.00 GiB"),
    "bomb_by_ratio": (lambda tmp: zeros_zip(64 * MiB), "zip bomb?"),
}


@pytest.mark.browser
@pytest.mark.parametrize("kind", HOSTILE_ZIPS)
def test_a_hostile_zip_upload_is_refused_and_writes_nothing_outside(zip_server, server_folder, page, tmp_path, kind):
    make, reason = HOSTILE_ZIPS[kind]
    content = make(tmp_path)
    open_zip_uploader(page, zip_server.url)
    before, around = files_under(server_folder), files_under(tmp_path)
    upload_zip(page, tmp_path / f"{kind}.zip", content)

    error = page.get_by_test_id("stAlertContentError")
    expect(error).to_contain_text(f"Refused {kind}.zip: ", timeout=60_000)
    expect(error).to_contain_text(reason)
    wait_until_idle(page)
    expect(page.get_by_test_id("stException")).to_have_count(0)
    expect(page.get_by_text("The dataset below is still the one loaded before.")).to_be_visible()
    expect(page.get_by_test_id("stImageCaption").filter(has_text=re.compile("|".join(CLASSES)))).to_have_count(0)
    folder = extraction_folder(files_under(server_folder) - before, f"{kind}.zip")
    assert not any((server_folder / folder).iterdir()), "a refused upload left files in its extraction folder"
    assert files_under(tmp_path) - around == {Path(f"{kind}.zip")}, "something was written beside the test's files"


@pytest.mark.browser
def test_an_upload_over_the_servers_limit_is_refused(start_app_server, page, tmp_path):
    """With a 1 MB limit the uploader refuses a 2 MB zip, and the server refuses it too
    when a client skips that check."""
    server = start_app_server(STREAMLIT_SERVER_MAX_UPLOAD_SIZE="1")
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("shapes/dark/noise.png", np.random.default_rng(0).bytes(2 * MiB))
    sent = []
    page.on("request", lambda request: sent.append(request.url) if "/_stcore/upload_file/" in request.url else None)
    open_zip_uploader(page, server.url)
    expect(page.get_by_test_id("stFileUploaderDropzone")).to_contain_text("1MB per file")
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(big))
    expect(page.get_by_test_id("stFileUploader")).to_contain_text("File must be 1.0MB or smaller.")
    assert not sent, "the browser sent the oversized file"

    (tmp_path / "small.zip").write_bytes(zip_of())
    upload_url = pick_file(page, tmp_path / "small.zip")
    token = xsrf_token(page)
    assert put_file(upload_url, big.read_bytes(), cookie=token, header=token) == 413


# --- access ----------------------------------------------------------------------------

def put_file(url: str, content: bytes, cookie: str | None, header: str | None) -> int:
    """PUT `content` as a multipart file upload to `url`; the HTTP status the server answers."""
    boundary = "tl-test-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.zip"\r\n'
            f"Content-Type: application/zip\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if cookie is not None:
        headers["Cookie"] = f"_streamlit_xsrf={cookie}"
    if header is not None:
        headers["X-Xsrftoken"] = header
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("PUT", parts.path, body=body, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def xsrf_token(page: Page) -> str:
    """The XSRF cookie Streamlit gave the page (its frontend sends it back as a header)."""
    return next(cookie["value"] for cookie in page.context.cookies() if cookie["name"] == "_streamlit_xsrf")


def test_the_config_keeps_xsrf_protection_on_and_limits_uploads():
    server = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert server["enableXsrfProtection"] is True
    assert server["maxUploadSize"] == 200


@pytest.mark.browser
def test_an_upload_without_the_xsrf_token_is_rejected(zip_server, page, tmp_path):
    """Replays the browser's own upload request: without the token, or with a forged one,
    the running server answers 403; with the page's token it accepts it (the control)."""
    open_zip_uploader(page, zip_server.url)
    expect(page.get_by_test_id("stFileUploaderDropzone")).to_contain_text("200MB per file")  # config.toml's limit
    (tmp_path / "good.zip").write_bytes(zip_of())
    upload_url = pick_file(page, tmp_path / "good.zip")
    token = xsrf_token(page)
    forged = "|".join(["2", "00000000", "0" * 32, token.rsplit("|", 1)[-1]])
    content = zip_of()
    assert put_file(upload_url, content, cookie=None, header=None) == 403
    assert put_file(upload_url, content, cookie=token, header=None) == 403  # all a cross-site form could send
    assert put_file(upload_url, content, cookie=token, header=forged) == 403
    assert put_file(upload_url, content, cookie=token, header=token) == 204


# --- model files carrying code ----------------------------------------------------------

def touching(marker: Path):
    """A lambda that writes `marker` each time it runs (the path travels in its closure)."""
    path = str(marker)
    return lambda x: (open(path, "w").close(), x)[1]


def lambda_model(marker: Path) -> keras.Model:
    """A model whose Lambda layer writes `marker` whenever it is called, or rebuilt unsafely."""
    inputs = keras.Input((96, 96, 3))
    touched = keras.layers.Lambda(touching(marker))(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(touched)
    return keras.Model(inputs, keras.layers.Dense(len(CLASSES))(pooled))


@pytest.fixture
def run_with_code(tmp_path, monkeypatch) -> tuple[runs.Run, Path]:
    """A finished run whose models carry a Lambda layer; and the file that layer would write."""
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    marker = tmp_path / "the-lambda-ran"
    run = runs.Run.create(tmp_path / "runs", RunConfig(data=DataConfig(image_size=96)))
    run.write_json("classes.json", list(CLASSES))
    run.write_json("metrics.json", {"head": {"val_accuracy": 1.0}, "fine_tune": {"val_accuracy": 1.0}})
    model = lambda_model(marker)
    for kind in ("head", "final"):
        run.save_model(model, kind)
    run.set_status(runs.FINISHED)
    marker.unlink()  # building the model called the lambda once
    return run, marker


def test_a_model_with_a_lambda_layer_is_refused_and_its_code_never_runs(run_with_code):
    run, marker = run_with_code
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/evaluate.py").run()
    assert not at.exception
    assert len(at.error) == 1 and "Could not load the model" in at.error[0].value and "Lambda" in at.error[0].value
    assert not at.metric
    with pytest.raises(UserError, match="Lambda"):
        load_model_safe(run.model_path("final"))
    assert not marker.exists(), "the Lambda layer's code ran"

    keras.saving.load_model(run.model_path("final"), safe_mode=False)  # the control: unsafe loading runs it
    assert marker.exists()
