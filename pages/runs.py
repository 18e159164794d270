"""Runs (coming next)."""
import streamlit as st

st.title("Runs")
st.info("Coming next: compare runs and export models.", icon=":material/construction:")
