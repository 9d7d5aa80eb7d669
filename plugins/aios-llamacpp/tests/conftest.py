"""Fixtures of the llamacpp backend tests: the anyio backend and a tiny GGUF model."""

from __future__ import annotations

from pathlib import Path

import pytest
from llamacpp_tiny_gguf import write_tiny_llama


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight llama GGUF (about 3 MB), written once per test session."""
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")
