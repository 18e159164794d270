"""Picking a run: the run selectbox of the Fine-tune, Evaluate, Label issues and Runs
pages, with the same labels, the same default and the same status reading."""
from __future__ import annotations

import streamlit as st

from core.errors import UserError
from core.results.compare import UNREADABLE
from core.training import runs

SESSION_MARK = "  (this session's latest)"


def run_status(run: runs.Run) -> str:
    """The run's status (one of `runs.STATUSES`), or `UNREADABLE` when its files cannot be read."""
    try:
        return run.status()["status"]
    except UserError:
        return UNREADABLE


def run_label(run: runs.Run) -> str:
    """ "name · id", or the id of a run without a name (or with an unreadable config)."""
    try:
        name = run.config.name
    except UserError:
        name = ""
    return f"{name} · {run.id}" if name else run.id


def default_run(candidates: list[runs.Run], preferred: str | None) -> runs.Run:
    """The run `preferred` names when it is a candidate, else the newest finished one, else the newest."""
    by_id = {run.id: run for run in candidates}
    if preferred in by_id:
        return by_id[preferred]
    finished = [run for run in candidates if run_status(run) == runs.FINISHED]
    return (finished or candidates)[0]


def run_picker_ui(candidates: list[runs.Run], *, key: str, preferred: str | None, label: str = "Run",
                  help: str | None = None) -> runs.Run:
    """A selectbox over `candidates` (newest first, at least one) that starts at `default_run`
    and keeps the user's pick until `preferred` (the session's run: "run_id" or "head_run_id"
    in session state) changes, when it starts at the default again. Returns the picked run."""
    ids = [run.id for run in candidates]
    anchor = f"_{key}_preferred"
    if st.session_state.get(anchor) != preferred or st.session_state.get(key) not in ids:
        st.session_state.pop(key, None)  # a new run of the session leads again; a deleted pick is dropped
        st.session_state[anchor] = preferred
    labels = {run.id: run_label(run) + (SESSION_MARK if run.id == preferred else "") for run in candidates}
    chosen = st.selectbox(label, ids, index=ids.index(default_run(candidates, preferred).id), format_func=labels.get,
                          key=key, help=help)
    return candidates[ids.index(chosen)]
