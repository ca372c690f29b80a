import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# tests and CI read real data from the shared mirror beside the repository unless told otherwise
os.environ.setdefault("ROFORMER_DATA_DIR", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("ROFORMER_CACHE", str(REPO / ".pytest_cache" / "roformer-cache"))
# no test reaches the hub: a name that is not a directory fails at once instead of after the network's timeouts
# (the hub tests lay out a hub cache and load from it offline)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def mirror() -> Path:
    return Path(os.environ["ROFORMER_DATA_DIR"])


def require_data(name: str) -> None:
    from roformer.data import available

    ok, why = available(name)
    if not ok:
        pytest.skip(f"data set {name!r} is not available: {why}")


def tiny_encoder_dir(path, tok, vocab_size: int | None = None) -> Path:
    """A randomly initialised one-layer RoFormer masked-LM saved with ``tok`` at ``path``: an encoder directory
    as ``mlm`` writes it (``vocab_size`` below the tokenizer's makes a mismatched one)."""
    from roformer.data.tokenizer import save_tokenizer
    from roformer.models import RoFormerConfig, RoFormerForMaskedLM

    config = RoFormerConfig(vocab_size=vocab_size or tok.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=64)
    RoFormerForMaskedLM(config).save_pretrained(path)
    save_tokenizer(tok, path)
    return Path(path)
