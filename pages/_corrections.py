"""The session's data settings follow the label corrections marked for their dataset."""
import streamlit as st

from core.data import corrections
from pages._common import state, update, user_errors


def use_marked_corrections() -> None:
    """Put the corrections marked for the current dataset (its corrections file) into the
    session's data settings, so the next run uses and records them, and say how many apply."""
    with user_errors():
        marked = corrections.read(state("data_config"))
        if marked != state("data_config").corrections:
            update("data_config", corrections=marked)
        if marked:
            st.caption(f":material/rule: {len(marked)} label correction(s) marked on the Label issues page "
                       "apply to this dataset; the next run uses them and records them in its config.json.")
