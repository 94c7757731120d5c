"""Pytest plugins shared by the test suite (enable them with `pytest_plugins`)."""
