"""Masked-language-model training pieces shared by the MLM recipes (§4.2 English, §4.5 Chinese): packed
sequences and the trainer's batch, loss and evaluation functions."""

from __future__ import annotations

import torch

from ..data.mlm import mask_tokens, pack_documents
from ..data.padding import right_pad
from .lm import step_generator
from .trainer import TrainConfig

__all__ = ["document_ids", "packed_sequences", "masked_lm_functions"]


def document_ids(tok, docs: list[str]) -> list[list[int]]:
    """Each document's token ids (no special tokens): tokenize once, pack at as many lengths as needed."""
    return [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]


def packed_sequences(tok, doc_ids: list[list[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[CLS] doc [SEP] doc [SEP] ...`` sequences of at most ``max_len`` tokens, right-padded with [PAD], and
    their attention mask."""
    cls, sep, pad = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    sequences = pack_documents(doc_ids, max_len, cls, sep)
    ids = right_pad(sequences, pad, max_len)
    return ids, (ids != pad).long()


def masked_lm_functions(tok, train: tuple[torch.Tensor, torch.Tensor], valid: tuple[torch.Tensor, torch.Tensor],
                        batch_size: int, config: TrainConfig):
    """``(batch_fn, loss_fn, eval_fn)`` for :class:`Trainer`: batches of ``batch_size`` packed sequences drawn
    with the step-seeded generator and masked by the 80/10/10 rule; evaluation on the validation sequences
    under one fixed masking, reporting the masked-token loss, accuracy and mean reciprocal rank (MRR: the mean of
    1 / rank of the true token among the vocabulary's logits; ties rank against the true token)."""
    special_ids = [tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]")]
    mask_id, vocab = tok.token_to_id("[MASK]"), tok.get_vocab_size()
    train_ids, train_mask = train
    valid_ids, valid_mask = valid
    valid_inputs, valid_labels = mask_tokens(valid_ids, mask_id, vocab, special_ids,
                                             torch.Generator().manual_seed(12345))

    def batch_fn(step: int, micro: int) -> dict:
        g = step_generator(config.seed, step, micro, config.grad_accum)
        rows = torch.randint(len(train_ids), (batch_size // config.grad_accum,), generator=g)
        inputs, labels = mask_tokens(train_ids[rows], mask_id, vocab, special_ids, g)
        return {"input_ids": inputs, "attention_mask": train_mask[rows], "labels": labels}

    def loss_fn(net, batch):
        return net(**batch).loss, (batch["labels"] != -100).sum()

    def eval_fn(net) -> dict:
        loss_sum, correct, reciprocal_ranks, count = 0.0, 0, 0.0, 0
        device = next(net.parameters()).device
        for s in range(0, len(valid_inputs), 32):
            labels = valid_labels[s : s + 32].to(device)
            logits = net(valid_inputs[s : s + 32].to(device), valid_mask[s : s + 32].to(device)).logits.float()
            chosen = labels != -100
            logits, labels = logits[chosen], labels[chosen]  # the masked positions only
            loss_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(-1) == labels).sum().item()
            true_logit = logits.gather(-1, labels[:, None])
            reciprocal_ranks += (1.0 / (logits >= true_logit).sum(-1).double()).sum().item()
            count += len(labels)
        return {"loss": loss_sum / count, "accuracy": correct / count, "mrr": reciprocal_ranks / count}

    return batch_fn, loss_fn, eval_fn
