"""Fixtures of the scale-out tests."""

from pathlib import Path

import pytest

from tests.scale.helpers import write_uneven_shards


@pytest.fixture(scope="session")
def uneven_shards(tmp_path_factory) -> Path:
    """7 training samples in 3 shards (3, 3, 1) and 3 validation samples: uneven over 2 ranks."""
    return write_uneven_shards(tmp_path_factory.mktemp("uneven_shards"))
