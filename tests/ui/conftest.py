"""The AppTest fixture for every view test."""

from tests.ui.apptest import app_config  # noqa: F401 - a fixture, found by pytest here
