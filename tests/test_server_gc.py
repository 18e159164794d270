"""The server's collections skip the imported modules (pages/_server.py).

Streamlit runs a full garbage collection after every script run, a fragment's poll
included (`keras.backend.clear_session()` once Keras is imported, and
`runner.postScriptGC`); with TensorFlow's modules in the heap each one cost about a
second of CPU, taken from the training the page showed. benchmarks/benchmark_watched.py
measures the server's CPU while a page watches a run.
"""
import gc
import sys
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.config import DataConfig
from pages import _server

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")


def test_after_a_run_of_the_app_the_collector_no_longer_scans_the_imported_modules(monkeypatch):
    import keras  # as after a page that builds or loads a model

    monkeypatch.setattr(_server, "_modules_at_last_freeze", 0)
    gc.unfreeze()
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["data_config"] = DataConfig(image_size=96)
    at.run()
    assert not at.exception

    tracked = {id(obj) for obj in gc.get_objects()}
    for long_lived in (keras.layers.Dense, keras.layers.Dense.__init__, sys.modules["tensorflow"].__dict__):
        assert id(long_lived) not in tracked, f"{long_lived!r} is still scanned by every collection"
    frozen = gc.get_freeze_count()
    assert frozen > 100_000
    assert _server.freeze_imported_modules() is False, "no new modules: nothing to freeze again"
    assert gc.get_freeze_count() == frozen


def test_objects_made_after_the_freeze_are_still_collected(monkeypatch):
    monkeypatch.setattr(_server, "_modules_at_last_freeze", 0)
    assert _server.freeze_imported_modules() is True

    class Node:
        pass

    cycle = Node()
    cycle.self = cycle
    probe = id(cycle)
    del cycle
    gc.collect()
    assert probe not in {id(obj) for obj in gc.get_objects()}
