"""Fine-tune (coming next)."""
import streamlit as st

st.title("Fine-tune")
st.info("Coming next: unfreeze the top of the backbone and continue at a low learning rate.", icon=":material/construction:")
