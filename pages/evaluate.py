"""Evaluate (coming next)."""
import streamlit as st

st.title("Evaluate")
st.info("Coming next: test accuracy, confusion matrix and a gallery of predictions.", icon=":material/construction:")
