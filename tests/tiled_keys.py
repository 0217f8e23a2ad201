"""The API key of the test suite's Tiled servers, for tests that connect on their own.

A module of its own because ``conftest`` is not importable by name once test folders
have conftest files of their own.
"""

API_KEY = "smartlabtestkey0123"
