"""Placeholder until this step is built."""

import streamlit as st

st.warning("This step is not built yet.")
