"""Tokenizers, all as HuggingFace ``tokenizers`` objects saved as ``tokenizer.json`` beside the weights, so
a saved model directory is self-contained.

- byte level: one token per byte, id = byte value (character-level LMs on enwik8);
- byte-level BPE (translation, GPT-style LMs) and WordPiece (BERT/RoFormer MLM), trained on a corpus.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

__all__ = ["byte_tokenizer", "train_bpe", "train_wordpiece", "save_tokenizer", "load_tokenizer", "check_tokenizer"]

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def byte_tokenizer() -> Tokenizer:
    """256 tokens, one per byte value, with id == byte value; decodes back to the exact bytes (as text)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (the ByteLevel pre-tokenizer's alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str] | None = None) -> Tokenizer:
    """Byte-level BPE (GPT-2 style) trained on ``texts``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens or [],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = True) -> Tokenizer:
    """BERT-style WordPiece with [PAD] [UNK] [CLS] [SEP] [MASK] (ids 0-4) and [CLS] A [SEP] (B [SEP])."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = _bert_template(tok)
    return tok


def save_tokenizer(tok: Tokenizer, directory: str | Path) -> None:
    from ..io import atomic_write

    atomic_write(Path(directory) / "tokenizer.json", lambda tmp: tok.save(tmp))


def _bert_template(tok: Tokenizer) -> processors.TemplateProcessing:
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    return processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """``tokenizer.json`` from a model directory; for a HuggingFace directory with only a BERT ``vocab.txt``,
    the equivalent WordPiece tokenizer (lower-cased unless ``tokenizer_config.json`` says otherwise)."""
    import json

    directory = Path(directory)
    path, vocab = directory / "tokenizer.json", directory / "vocab.txt"
    if path.is_file():
        return Tokenizer.from_file(str(path))
    if vocab.is_file():
        settings = directory / "tokenizer_config.json"
        lowercase = json.loads(settings.read_text()).get("do_lower_case", True) if settings.is_file() else True
        tok = Tokenizer(models.WordPiece.from_file(str(vocab), unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.post_processor = _bert_template(tok)
        return tok
    raise FileNotFoundError(f"no tokenizer.json (or vocab.txt) in {directory}: save the tokenizer beside the model")


def check_tokenizer(tok: Tokenizer, vocab_size: int, pad_token_id: int | None, where: str | Path,
                    required: tuple[str, ...] = ()) -> None:
    """Raise a clear error when a tokenizer cannot drive a model: ids beyond the model's embedding table, a
    different padding id, or a special token the task needs that the vocabulary lacks."""
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(f"{where}: the tokenizer has {tok.get_vocab_size()} tokens but the model's vocabulary only "
                         f"{vocab_size}; they do not belong together")
    pad = tok.token_to_id("[PAD]")
    if pad is not None and pad_token_id is not None and pad != pad_token_id:
        raise ValueError(f"{where}: the tokenizer pads with id {pad} but the model with {pad_token_id}")
    missing = [t for t in required if tok.token_to_id(t) is None]
    if missing:
        raise ValueError(f"{where}: the tokenizer has no {', '.join(missing)}")
