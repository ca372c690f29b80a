import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# tests and CI read real data from the shared mirror beside the repository unless told otherwise
os.environ.setdefault("ROFORMER_DATA_DIR", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("ROFORMER_CACHE", str(REPO / ".pytest_cache" / "roformer-cache"))


@pytest.fixture
def mirror() -> Path:
    return Path(os.environ["ROFORMER_DATA_DIR"])


def require_data(name: str) -> None:
    from roformer.data import available

    ok, why = available(name)
    if not ok:
        pytest.skip(f"data set {name!r} is not available: {why}")
