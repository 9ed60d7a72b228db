"""Shared test setup: offline Hugging Face, quiet local Ray, fixtures by area."""
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Servers started by tests read local models and data from pytest's temporary directories
# (service/config.py: the allowed roots default to $LLC_ALLOWED_ROOTS, else the working directory).
os.environ.setdefault("LLC_ALLOWED_ROOTS", os.pathsep.join([tempfile.gettempdir(), os.getcwd()]))

# Each area keeps its fixtures in tests/fixtures/<area>.py.
pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.ray",
    "tests.fixtures.ray_nodes",
    "tests.fixtures.service",
    "tests.fixtures.hub",
]
