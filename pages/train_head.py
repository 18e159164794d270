"""Train head (coming next)."""
import streamlit as st

st.title("Train head")
st.info("Coming next: train the new head on top of the frozen backbone, with live curves.", icon=":material/construction:")
