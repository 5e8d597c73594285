"""Placeholder replaced below."""
import streamlit as st


def insight_view(settings, choice, catalog, controls) -> None:
    st.info("Insight view: coming with the metrics module.")
