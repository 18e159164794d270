"""Transfer Learning Studio: entry point.

`st.navigation` over one page per workflow step; the sidebar shows the current
choices and where the user is in the workflow.
"""
import os

# The server trains nothing (jobs run in worker processes); where it touches TensorFlow
# (Model page counts, Evaluate) it must not take a GPU's whole memory from the workers.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

import streamlit as st  # noqa: E402

from pages import _common, _server, _sidebar  # noqa: E402

st.set_page_config(page_title="Transfer Learning Studio", page_icon=":material/model_training:", layout="wide")

PAGES = [
    st.Page("pages/data.py", title="Data", icon=":material/photo_library:", default=True),
    st.Page("pages/augmentation.py", title="Augmentation", icon=":material/auto_fix_high:"),
    st.Page("pages/model.py", title="Model", icon=":material/account_tree:"),
    st.Page("pages/train_head.py", title="Train head", icon=":material/play_arrow:"),
    st.Page("pages/fine_tune.py", title="Fine-tune", icon=":material/tune:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/fact_check:"),
    st.Page("pages/labels.py", title="Label issues", icon=":material/rule:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
]

page = st.navigation(PAGES)
_common.sync_url()  # a reload or a shared link (?run=<id>) reopens the run it names
sidebar = st.sidebar.container()
try:
    page.run()
finally:  # after the page, so the sidebar shows the choices this run just made
    _server.freeze_imported_modules()  # so the collections after each poll skip TensorFlow's modules
    _sidebar.render(sidebar)
