"""The GPT-style classifier (§4.7, Fig. 6): the head reads each sequence's last real token, so a right-padded batch
scores every sequence as it is scored alone, for every position encoding."""

import pytest
import torch

from roformer.data.padding import right_pad
from roformer.models.decoder import DecoderConfig, DecoderForSequenceClassification, DecoderLM
from roformer.position import POSITIONS


@pytest.mark.parametrize("position", POSITIONS)
def test_a_padded_batch_scores_each_sequence_as_alone(position):
    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, position=position,
                           max_positions=16, dropout=0.0)
    model = DecoderForSequenceClassification(config, num_labels=3).double().eval()
    sequences = [[int(t) for t in torch.randint(1, 50, (n,))] for n in (3, 11, 7, 1)]
    batch = right_pad(sequences, 0)
    mask = right_pad([[1] * len(s) for s in sequences], 0)
    labels = torch.tensor([0, 2, 1, 1])
    out = model(batch, mask, labels)
    for i, s in enumerate(sequences):
        alone = model(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)).logits[0]
        torch.testing.assert_close(out.logits[i], alone, rtol=1e-12, atol=1e-12)
    # the logits are the head on the decoder's final state of the last real token
    hidden = DecoderLM.hidden_states(model.decoder, batch)
    last = torch.stack([hidden[i, len(s) - 1] for i, s in enumerate(sequences)])
    torch.testing.assert_close(out.logits, last @ model.score.weight.T + model.score.bias, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))


def test_the_language_model_reads_the_same_hidden_states():
    torch.manual_seed(0)
    lm = DecoderLM(DecoderConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, dropout=0.0)).double()
    ids = torch.randint(0, 50, (2, 9))
    torch.testing.assert_close(lm(ids).logits, lm.hidden_states(ids) @ lm.embed.weight.T, rtol=1e-12, atol=1e-12)


def test_a_mask_of_another_shape_is_one_clear_error():
    model = DecoderForSequenceClassification(DecoderConfig(vocab_size=50, hidden_size=32, num_layers=1,
                                                           num_heads=4), num_labels=2)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\), the input ids \(2, 5\)"):
        model(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))
