"""Pure Keras/TensorFlow logic of the transfer-learning dashboard (no Streamlit)."""
