"""AppTest of the run picker that the Fine-tune, Evaluate, Label issues and Runs pages
share (pages/_run_picker.py): where it starts, and how it follows the session's run.

The picker runs alone in a tiny script over run folders made here (no training, no Keras).
"""
import pytest
from streamlit.testing.v1 import AppTest

from core.config import RunConfig
from core.training import runs
from pages._run_picker import SESSION_MARK


def picker_script() -> None:
    """The picker over the runs named in session state (newest first), as a page draws it."""
    import streamlit as st

    from core.training.runs import Run
    from pages._run_picker import run_picker_ui

    candidates = [Run(path) for path in st.session_state["paths"]]
    st.session_state["picked"] = run_picker_ui(candidates, key="picker", preferred=st.session_state.get("run_id")).id


@pytest.fixture
def three_runs(tmp_path) -> dict[str, runs.Run]:
    """Oldest to newest: two finished runs and a failed one."""
    made = {}
    for name, status in (("oldest", runs.FINISHED), ("middle", runs.FINISHED), ("newest", runs.FAILED)):
        made[name] = runs.Run.create(tmp_path, RunConfig(name=name))
        made[name].set_status(status)
    return made


def start(made: dict[str, runs.Run], **session) -> AppTest:
    at = AppTest.from_function(picker_script, default_timeout=30)
    at.session_state["paths"] = [str(made[name].path) for name in ("newest", "middle", "oldest")]
    for key, value in session.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception
    return at


def test_without_a_session_run_it_starts_at_the_newest_finished_run(three_runs):
    at = start(three_runs)
    picker = at.selectbox(key="picker")
    assert picker.value == at.session_state["picked"] == three_runs["middle"].id
    assert picker.options == [f"{name} · {three_runs[name].id}" for name in ("newest", "middle", "oldest")]


def test_it_keeps_the_users_pick_until_the_session_follows_another_run(three_runs):
    oldest, newest, middle = three_runs["oldest"], three_runs["newest"], three_runs["middle"]
    at = start(three_runs, run_id=oldest.id)
    assert at.session_state["picked"] == oldest.id
    assert f"oldest · {oldest.id}{SESSION_MARK}" in at.selectbox(key="picker").options

    at.selectbox(key="picker").set_value(newest.id).run()
    at.run()  # a rerun (a poll, another widget) keeps the pick
    assert at.session_state["picked"] == newest.id

    at.session_state["run_id"] = middle.id  # the session starts or loads another run
    at.run()
    assert not at.exception
    assert at.selectbox(key="picker").value == at.session_state["picked"] == middle.id


def test_a_picked_run_that_is_gone_gives_way_to_the_default(three_runs):
    at = start(three_runs)
    at.selectbox(key="picker").set_value(three_runs["oldest"].id).run()
    assert at.session_state["picked"] == three_runs["oldest"].id

    runs.delete_run(three_runs["oldest"])
    at.session_state["paths"] = [str(three_runs[name].path) for name in ("newest", "middle")]
    at.run()
    assert not at.exception
    assert at.session_state["picked"] == three_runs["middle"].id
