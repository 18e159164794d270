"""Model (coming next)."""
import streamlit as st

st.title("Model")
st.info("Coming next: the backbone, its new head, which layers are frozen and how many parameters will train.", icon=":material/construction:")
