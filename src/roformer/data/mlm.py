"""Masked-language-model data (BERT's recipe, used for RoFormer in §4.2): documents packed into sequences of
up to ``max_len`` tokens, and 15% of the ordinary tokens chosen for prediction, of which 80% become [MASK],
10% a random token and 10% stay as they are."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InvalidArgument

__all__ = ["pack_documents", "mask_tokens"]


def pack_documents(documents: list[list[int]], max_len: int, cls_id: int, sep_id: int) -> list[list[int]]:
    """Greedily fill sequences ``[CLS] tokens... [SEP]`` of at most ``max_len`` tokens with consecutive
    documents (each followed by [SEP]); a document longer than a sequence is cut into sequence-sized pieces."""
    if max_len < 3:
        raise InvalidArgument(f"max_len must leave room for [CLS], a token and [SEP]; got {max_len}")
    room = max_len - 1  # after [CLS]
    sequences, current = [], [cls_id]
    for doc in documents:
        pieces = [doc[i : i + room - 1] for i in range(0, len(doc), room - 1)]
        for piece in pieces:
            if len(current) + len(piece) + 1 > max_len:
                sequences.append(current)
                current = [cls_id]
            current.extend(piece)
            current.append(sep_id)
    if len(current) > 1:
        sequences.append(current)
    return sequences


def mask_tokens(ids: Tensor, mask_id: int, vocab_size: int, special_ids: list[int], generator: torch.Generator,
                probability: float = 0.15) -> tuple[Tensor, Tensor]:
    """(inputs, labels): labels are the original ids at the chosen positions and -100 elsewhere; special
    tokens ([CLS], [SEP], [PAD]) are never chosen."""
    labels = ids.clone()
    candidates = ~torch.isin(ids, torch.tensor(special_ids, device=ids.device))
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & candidates
    labels[~chosen] = -100
    inputs = ids.clone()
    roll = torch.rand(ids.shape, generator=generator)
    inputs[chosen & (roll < 0.8)] = mask_id
    random_tokens = torch.randint(vocab_size, ids.shape, generator=generator)
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = random_tokens[swap]
    return inputs, labels
