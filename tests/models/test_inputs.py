"""Each model's forward pass refuses ids outside its vocabulary, a mask that does not fit, and empty input, with
one error naming the argument, where it was an IndexError from the embedding (a device-side assert on CUDA)."""

import pytest
import torch

from roformer.errors import InvalidArgument
from roformer.models import (
    RoFormerConfig,
    RoFormerForCausalLM,
    RoFormerForMaskedLM,
    RoFormerForQuestionAnswering,
    RoFormerForSequenceClassification,
    RoFormerForTokenClassification,
)
from roformer.models.decoder import DecoderConfig, DecoderLM
from roformer.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

V = 50
ENCODERS = [RoFormerForMaskedLM, RoFormerForCausalLM, RoFormerForSequenceClassification,
            RoFormerForTokenClassification, RoFormerForQuestionAnswering]


def encoder(cls):
    return cls(RoFormerConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, is_decoder=cls is RoFormerForCausalLM)).eval()


@pytest.mark.parametrize("cls", ENCODERS, ids=lambda c: c.__name__)
def test_encoder_heads_check_their_inputs(cls):
    model, ids = encoder(cls), torch.randint(V, (2, 5))
    model(ids)  # fine
    for bad in (torch.full((2, 5), V), torch.full((2, 5), -1)):
        with pytest.raises(InvalidArgument, match=f"input_ids holds token id -?{V if bad[0, 0] > 0 else 1}.*"
                                                  f"vocabulary of {V}"):
            model(bad)
    with pytest.raises(InvalidArgument, match=r"attention_mask must be \(batch, seq\) = \(2, 5\).*\(3, 5\)"):
        model(ids, attention_mask=torch.ones(3, 5, dtype=torch.long))
    with pytest.raises(InvalidArgument, match="input_ids is empty"):
        model(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(InvalidArgument, match="token_type_ids holds token id 7"):
        model(ids, token_type_ids=torch.full((2, 5), 7))
    with pytest.raises(InvalidArgument, match="integer tensor"):
        model(ids.float())


def test_the_decoder_and_the_encoder_decoder_check_their_inputs():
    lm = DecoderLM(DecoderConfig(vocab_size=V, hidden_size=16, num_layers=1, num_heads=2))
    with pytest.raises(InvalidArgument, match=f"input_ids holds token id {V + 3}"):
        lm(torch.full((1, 4), V + 3))
    with pytest.raises(InvalidArgument, match="input_ids is empty"):
        lm(torch.zeros(1, 0, dtype=torch.long))
    mt = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=V, hidden_size=16, encoder_layers=1, decoder_layers=1,
                                          num_heads=2, intermediate_size=32))
    src, tgt = torch.randint(V, (2, 6)), torch.randint(V, (2, 3))
    mt(src, tgt)
    with pytest.raises(InvalidArgument, match="src_ids holds token id -5"):
        mt(torch.full((2, 6), -5), tgt)
    with pytest.raises(InvalidArgument, match="tgt_ids holds token id"):
        mt(src, torch.full((2, 3), V))
    with pytest.raises(InvalidArgument, match=r"src_mask must be \(batch, seq\) = \(2, 6\)"):
        mt(src, tgt, src_mask=torch.ones(2, 7, dtype=torch.long))


def test_the_checks_do_not_stop_compilation():
    model, ids = encoder(RoFormerForMaskedLM), torch.randint(V, (2, 5))
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(ids).logits, model(ids).logits)
