"""The RoFormer classes under transformers' own clients, as a transformers user drives them: the Auto classes and
stock transformers on our checkpoints (which never load wrongly), ``Trainer`` (loss kwargs with gradient
accumulation, checkpoints with tied weights, bit-exact resume, ``save_model``), ``generate`` (equal to stock
transformers, left padding, sampling options, streamers, the cache-less rope types), peft's LoRA with
HuggingFace's module names, and the pipelines on saved directories with ``AutoTokenizer``."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import roformer
from roformer import (
    RoFormerConfig,
    RoFormerForCausalLM,
    RoFormerForMaskedLM,
    RoFormerForMultipleChoice,
    RoFormerForQuestionAnswering,
    RoFormerForSequenceClassification,
    RoFormerForTokenClassification,
    RoFormerModel,
)

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
LONGROPE = {"short_factor": [1.0, 1.1, 1.2, 1.3], "long_factor": [1.0, 2.0, 3.0, 4.0], "factor": 4.0}

# every setting stock transformers.RoFormer* does not compute: each is saved as "roformer-variant"
VARIANTS = {
    "rope_theta": {"rope_theta": 500000.0},
    "linear": {"rope_parameters": {"rope_type": "linear", "factor": 2.0}},
    "dynamic": {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}},
    "yarn": {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}},
    "llama3": {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16}},
    "longrope": {"rope_parameters": {"rope_type": "longrope", **LONGROPE, "original_max_position_embeddings": 16}},
    "proportional": {"rope_parameters": {"rope_type": "proportional", "partial_rotary_factor": 0.5}},
    "partial": {"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}},
    **{f"position-{p}": {"position": p} for p in ("none", "learned", "sinusoidal", "shaw", "t5", "alibi")},
}
# which variant covers each config field stock RoFormerConfig lacks
COVERS = {"rope_theta": "rope_theta", "rope_parameters": "linear", "position": "position-learned"}


def config(**overrides) -> RoFormerConfig:
    return RoFormerConfig(**{**SMALL, **overrides})


def ids(batch=2, seq=9, seed=0):
    return torch.randint(1, SMALL["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------
# checkpoints never load wrongly
# ---------------------------------------------------------------------------------------------------------


def test_every_field_stock_roformer_lacks_has_a_variant_case():
    ours = set(RoFormerConfig.__annotations__)
    stock = {f.name for f in dataclasses.fields(transformers.RoFormerConfig)}
    assert ours - stock == set(COVERS), "a new config field: add a VARIANTS case that sets it and list it in COVERS"
    for field, case in COVERS.items():
        assert field in VARIANTS[case]


def test_variants_are_refused_by_stock_transformers_and_loaded_exactly_by_the_auto_classes(tmp_path):
    x = ids()
    expected = {}
    for name, overrides in VARIANTS.items():
        torch.manual_seed(0)
        model = RoFormerForMaskedLM(config(**overrides)).eval()
        model.save_pretrained(tmp_path / name)
        assert json.loads((tmp_path / name / "config.json").read_text())["model_type"] == "roformer-variant", name
        with torch.no_grad():
            expected[name] = model(x).logits
        # after `import roformer`, the Auto classes build our class, which computes the variant exactly
        auto = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / name).eval()
        assert isinstance(auto, RoFormerForMaskedLM), name
        with torch.no_grad():
            torch.testing.assert_close(auto(x).logits, expected[name], rtol=0, atol=0)
    # plain transformers (no `import roformer`) refuses every one of them with its usual error
    script = ("import sys, json, transformers\nout = {}\nfor d in sys.argv[1:]:\n    try:\n"
              "        transformers.AutoModelForMaskedLM.from_pretrained(d)\n        out[d] = 'loaded'\n"
              "    except (ValueError, KeyError) as e:\n        out[d] = str(e)\nprint(json.dumps(out))\n")
    dirs = [str(tmp_path / name) for name in VARIANTS]
    result = subprocess.run([sys.executable, "-c", script, *dirs], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    for d in dirs:
        assert "roformer-variant" in outcome[d], (d, outcome[d])


def test_a_plain_rope_model_is_saved_for_stock_transformers_both_ways(tmp_path):
    torch.manual_seed(0)
    ours = RoFormerForMaskedLM(config(rope_parameters={"rope_type": "default"})).eval()
    ours.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "roformer"
    stock = transformers.RoFormerForMaskedLM.from_pretrained(tmp_path / "ours").eval()
    assert type(stock).__module__.startswith("transformers.")
    x = ids(3, 40)
    with torch.no_grad():
        torch.testing.assert_close(stock(input_ids=x).logits, ours(x).logits, rtol=1e-5, atol=1e-5)
    stock.save_pretrained(tmp_path / "stock")
    back = RoFormerForMaskedLM.from_pretrained(tmp_path / "stock").eval()
    for (name, a), (_, b) in zip(sorted(back.state_dict().items()), sorted(ours.state_dict().items()), strict=True):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------------------------------------
# transformers.Trainer
# ---------------------------------------------------------------------------------------------------------


def _examples(head: str, n: int = 8, seq: int = 12):
    g = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(n):
        x = torch.randint(1, SMALL["vocab_size"], (seq,), generator=g)
        row = {"input_ids": x, "attention_mask": torch.ones_like(x)}
        if head in ("mlm", "causal"):
            labels = x.clone()
            if head == "mlm":
                labels[torch.rand(seq, generator=g) < 0.6] = -100  # an uneven count of scored tokens per row
            row["labels"] = labels
        elif head == "seq":
            row["labels"] = torch.randint(0, 2, (), generator=g)
        elif head == "token":
            row["labels"] = torch.randint(0, 2, (seq,), generator=g).masked_fill(torch.rand(seq, generator=g) < .3,
                                                                                   -100)
        elif head == "qa":
            row["start_positions"] = torch.randint(0, seq, (), generator=g)
            row["end_positions"] = torch.randint(0, seq, (), generator=g)
        elif head == "choice":
            row = {"input_ids": torch.randint(1, SMALL["vocab_size"], (2, seq), generator=g),
                   "labels": torch.randint(0, 2, (), generator=g)}
        rows.append(row)
    return rows


HEADS = {"mlm": RoFormerForMaskedLM, "causal": RoFormerForCausalLM, "seq": RoFormerForSequenceClassification,
         "token": RoFormerForTokenClassification, "qa": RoFormerForQuestionAnswering,
         "choice": RoFormerForMultipleChoice}
STOCK = {"mlm": "RoFormerForMaskedLM", "causal": "RoFormerForCausalLM", "seq": "RoFormerForSequenceClassification",
         "token": "RoFormerForTokenClassification", "qa": "RoFormerForQuestionAnswering",
         "choice": "RoFormerForMultipleChoice"}


def _trainer(model, head, out, batch=4, accumulation=1, steps=2, save_steps=None):
    args = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
        max_steps=steps, learning_rate=1e-2, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        logging_steps=1, save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        report_to=[], use_cpu=True, seed=0, data_seed=0, dataloader_num_workers=0, disable_tqdm=True)
    return transformers.Trainer(model=model, args=args, train_dataset=_examples(head))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("head", list(HEADS))
def test_trainer_trains_every_head_and_save_model_loads_in_both_libraries(tmp_path, head):
    torch.manual_seed(0)
    model = HEADS[head](config())
    before = _state(model)
    trainer = _trainer(model, head, tmp_path / "run")
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    trainer.save_model(str(tmp_path / "saved"))
    model.eval()
    x = _examples(head, 2)
    inputs = {"input_ids": torch.stack([r["input_ids"] for r in x])}
    with torch.no_grad():
        expected = model(**inputs)
        ours = HEADS[head].from_pretrained(tmp_path / "saved").eval()(**inputs)
        stock = getattr(transformers, STOCK[head]).from_pretrained(tmp_path / "saved").eval()(**inputs)
    name = "start_logits" if head == "qa" else "logits"
    torch.testing.assert_close(getattr(ours, name), getattr(expected, name), rtol=0, atol=0)
    torch.testing.assert_close(getattr(stock, name), getattr(expected, name), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head", ["mlm", "token", "seq", "causal"])
def test_gradient_accumulation_equals_the_whole_batch(tmp_path, head):
    """Trainer passes num_items_in_batch to heads whose loss is a sum over tokens, and divides the others' mean
    loss by the accumulation steps: either way two micro-batches of 2 make the update one batch of 4 makes."""
    runs = []
    for batch, accumulation in ((4, 1), (2, 2)):
        torch.manual_seed(0)
        model = HEADS[head](config()).double()
        _trainer(model, head, tmp_path / f"{batch}", batch=batch, accumulation=accumulation, steps=1).train()
        runs.append(_state(model))
    for k in runs[0]:
        torch.testing.assert_close(runs[0][k], runs[1][k], rtol=1e-9, atol=1e-12, msg=k)


def test_trainer_checkpoints_with_tied_weights_resume_bit_exactly(tmp_path):
    torch.manual_seed(0)
    whole = RoFormerForMaskedLM(config())
    _trainer(whole, "mlm", tmp_path / "whole", batch=2, steps=4).train()
    torch.manual_seed(0)
    first = RoFormerForMaskedLM(config())
    _trainer(first, "mlm", tmp_path / "split", batch=2, steps=4, save_steps=2).train()
    checkpoint = tmp_path / "split" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file()
    torch.manual_seed(123)  # a fresh model: every weight must come from the checkpoint
    resumed = RoFormerForMaskedLM(config())
    _trainer(resumed, "mlm", tmp_path / "split", batch=2, steps=4, save_steps=2).train(
        resume_from_checkpoint=str(checkpoint))
    for k, v in _state(whole).items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert resumed.cls.predictions.decoder.weight is resumed.roformer.embeddings.word_embeddings.weight


# ---------------------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def causal_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("causal")
    torch.manual_seed(0)
    ours = RoFormerForCausalLM(config(hidden_dropout_prob=0.1)).eval()
    ours.save_pretrained(d)
    return ours, transformers.RoFormerForCausalLM.from_pretrained(d).eval()


@pytest.mark.parametrize("options", [{}, {"num_beams": 3}, {"num_beams": 3, "length_penalty": 0.5},
                                     {"repetition_penalty": 1.5}, {"min_new_tokens": 6, "eos_token_id": 7},
                                     {"no_repeat_ngram_size": 2}])
def test_greedy_and_beam_search_equal_stock_transformers(causal_pair, options):
    ours, stock = causal_pair
    x = ids(3, 5)
    got = ours.generate(x, max_new_tokens=10, **options)
    assert torch.equal(got, stock.generate(x, max_new_tokens=10, **options))
    assert got.shape[1] > 5


def test_generate_defaults_to_greedy_and_the_cache_changes_nothing(causal_pair):
    ours, _ = causal_pair
    x = ids(2, 6)
    greedy = ours.generate(x, max_new_tokens=8)
    assert torch.equal(greedy, ours.generate(x, max_new_tokens=8))
    assert torch.equal(greedy, ours.generate(x, max_new_tokens=8, use_cache=False))
    step = x  # greedy by hand, one full forward per token
    for _ in range(8):
        step = torch.cat([step, ours(step).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(greedy, step)


def test_left_padding_gives_each_row_its_unpadded_continuation(causal_pair):
    ours, _ = causal_pair
    a, b = ids(1, 7, seed=1)[0], ids(1, 4, seed=2)[0]
    padded = torch.stack([a, torch.cat([torch.zeros(3, dtype=torch.long), b])])
    mask = torch.tensor([[1] * 7, [0] * 3 + [1] * 4])
    out = ours.generate(padded, attention_mask=mask, max_new_tokens=6, pad_token_id=0)
    assert torch.equal(out[0, 7:], ours.generate(a[None], max_new_tokens=6)[0, 7:])
    assert torch.equal(out[1, 7:], ours.generate(b[None], max_new_tokens=6)[0, 4:])


def test_sampling_options_and_a_streamer(causal_pair):
    ours, _ = causal_pair
    x = ids(1, 4)

    class Collect(transformers.generation.streamers.BaseStreamer):
        def __init__(self):
            self.seen = []

        def put(self, value):
            self.seen.append(value.clone())

        def end(self):
            self.seen.append("end")

    streamer = Collect()
    torch.manual_seed(3)
    out = ours.generate(x, do_sample=True, temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=5,
                        streamer=streamer)
    torch.manual_seed(3)
    assert torch.equal(out, ours.generate(x, do_sample=True, temperature=0.7, top_k=20, top_p=0.9,
                                          max_new_tokens=5))
    assert streamer.seen[-1] == "end" and torch.equal(streamer.seen[0], x)
    assert torch.equal(torch.cat([s.reshape(1, -1) for s in streamer.seen[1:-1]], 1), out[:, 4:])


@pytest.mark.parametrize("parameters", [{"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 6},
                                        {"rope_type": "longrope", **LONGROPE, "original_max_position_embeddings": 6}])
def test_length_dependent_rope_types_decode_as_a_full_forward_pass(parameters):
    """Dynamic NTK and LongRoPE change every position's angles as the text grows past the original length: a KV
    cache would hold keys rotated with stale angles, so generate runs without one, and equals full passes."""
    torch.manual_seed(0)
    model = RoFormerForCausalLM(config(rope_parameters=parameters)).eval()
    x = ids(2, 4)
    out = model.generate(x, max_new_tokens=8)
    step = x
    for _ in range(8):
        step = torch.cat([step, model(step).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, step)
    with pytest.raises(ValueError, match="cache"):
        model(x, cache=transformers.DynamicCache(config=model.config), use_cache=True)


# ---------------------------------------------------------------------------------------------------------
# peft
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", [["query"], ["value"], ["query", "key", "value", "dense"]])
def test_lora_with_huggingface_module_names(tmp_path, targets):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = RoFormerForSequenceClassification(config(num_labels=3))
    base.save_pretrained(tmp_path / "base")
    lora = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", target_modules=targets, r=4,
                                                     lora_alpha=8, init_lora_weights=False))
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in lora.named_parameters() if ".lora_A" in n}
    assert adapted == set(targets)
    x = ids(4, 10)
    labels = torch.tensor([0, 1, 2, 1])
    optimizer = torch.optim.SGD([p for p in lora.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        lora(input_ids=x, labels=labels).loss.backward()
        optimizer.step()
    lora.eval()
    with torch.no_grad():
        expected = lora(input_ids=x).logits
    lora.save_pretrained(tmp_path / "adapter")
    fresh = RoFormerForSequenceClassification.from_pretrained(tmp_path / "base")
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=x).logits, expected, rtol=1e-5, atol=1e-5)
    merged = reloaded.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    with torch.no_grad():
        ours = RoFormerForSequenceClassification.from_pretrained(tmp_path / "merged").eval()(x).logits
        stock = transformers.RoFormerForSequenceClassification.from_pretrained(tmp_path / "merged").eval()(
            input_ids=x).logits
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stock, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# pipelines and AutoTokenizer on the directories we save
# ---------------------------------------------------------------------------------------------------------

TEXT = ["the cat sat on the mat", "a dog ran in the park", "the sun is hot today", "we read a book at night"] * 5


@pytest.fixture(scope="module")
def tokenizer():
    from roformer.data.tokenizer import train_wordpiece

    return train_wordpiece(TEXT, 61)


def _saved(tmp_path, cls, tokenizer, **overrides):
    from roformer.data.tokenizer import save_with_tokenizer

    torch.manual_seed(0)
    model = cls(config(vocab_size=tokenizer.get_vocab_size(), **overrides)).eval()
    save_with_tokenizer(model, tokenizer, tmp_path)
    return model


@pytest.mark.parametrize("variant", [{}, {"rope_theta": 500000.0}])
@pytest.mark.parametrize("task, cls, kwargs", [
    ("fill-mask", RoFormerForMaskedLM, {"inputs": "the cat [MASK] on the mat"}),
    ("text-classification", RoFormerForSequenceClassification, {"inputs": "the sun is hot"}),
    ("token-classification", RoFormerForTokenClassification, {"inputs": "a dog ran in the park"}),
    ("text-generation", RoFormerForCausalLM, {"text_inputs": "the cat", "max_new_tokens": 4, "do_sample": False}),
])
def test_pipelines_on_a_saved_directory(tmp_path, tokenizer, variant, task, cls, kwargs):
    """transformers 5 has no question-answering pipeline any more; the QA head is run by Trainer above."""
    model = _saved(tmp_path, cls, tokenizer, **variant)
    assert isinstance(transformers.AutoTokenizer.from_pretrained(tmp_path), transformers.PreTrainedTokenizerBase)
    by_path = transformers.pipeline(task, model=str(tmp_path), device="cpu")
    ours = transformers.pipeline(task, model=model, tokenizer=transformers.AutoTokenizer.from_pretrained(tmp_path),
                                 device="cpu")
    got, expected = by_path(**kwargs), ours(**kwargs)
    assert json.dumps(got, default=str) == json.dumps(expected, default=str) or _close(got, expected)
    if variant:  # stock transformers cannot compute it: the path must have built our class
        assert isinstance(by_path.model, cls)


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | np.floating):
        return abs(float(a) - float(b)) < 1e-4
    return a == b


def test_auto_tokenizer_reads_every_tokenizer_we_save_without_rjieba(tmp_path, tokenizer):
    from roformer.data.tokenizer import byte_tokenizer, load_tokenizer, save_with_tokenizer

    for name, tok in (("wordpiece", tokenizer), ("bytes", byte_tokenizer())):
        model = RoFormerModel(config(vocab_size=tok.get_vocab_size()))
        save_with_tokenizer(model, tok, tmp_path / name)
        auto = transformers.AutoTokenizer.from_pretrained(tmp_path / name)
        assert auto("the cat sat")["input_ids"] == tok.encode("the cat sat").ids
        assert load_tokenizer(tmp_path / name).encode("the cat sat").ids == tok.encode("the cat sat").ids


def test_roformer_alone_needs_no_transformers():
    """An engineer who wants RoPE alone: roformer.rope, rope_scaling, attention and linear_attention import with
    transformers hidden."""
    script = ("import sys\nclass Hide:\n    def find_spec(self, name, path=None, target=None):\n"
              "        if name == 'transformers' or name.startswith('transformers.'):\n"
              "            raise ImportError('hidden: ' + name)\n"
              "sys.meta_path.insert(0, Hide())\n"
              "import roformer.rope, roformer.rope_scaling, roformer.attention, roformer.linear_attention\n"
              "import torch\nq = torch.randn(1, 2, 5, 8)\nprint(roformer.rope.RotaryEmbedding(8)(q, q)[0].shape)\n"
              "assert not any(m.startswith('transformers') for m in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert roformer.models.RoFormerConfig is RoFormerConfig


def test_directories_saved_by_the_earlier_version_still_load(tmp_path):
    """Before the port, a baseline position encoding was saved as model_type "roformer-<p>-positions"."""
    torch.manual_seed(0)
    model = RoFormerForMaskedLM(config(position="learned")).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "model_type": "roformer-learned-positions"}))
    again = RoFormerForMaskedLM.from_pretrained(tmp_path).eval()
    x = ids()
    with torch.no_grad():
        assert torch.equal(again(x).logits, model(x).logits)


# values the project's classes drew at seed 0 before they were transformers models (read off that version, commit
# 6b75508): the last three of a few weights of a 2-layer, 32-wide model
BEFORE_THE_PORT = {
    "roformer.embeddings.word_embeddings.weight": [-0.0154591, -0.006673, -0.0063482],
    "roformer.encoder.layer.1.attention.self.value.weight": [-0.0068296, 0.0393963, 0.0050931],
    "cls.predictions.transform.dense.weight": [0.040513, 0.0129022, 0.0013538],
    "classifier.out_proj.weight": [0.0069987, 0.0175182, 0.0228629],
}


def test_a_seed_draws_the_model_it_drew_before_the_port(tmp_path):
    """So that the committed runs (mlm, glue, chinese, optimizers) retrain from a fresh clone to their records:
    a new model draws its weights in the project's old order, and a fine-tuning start (from_pretrained_as_new)
    gives the head a new model of the seed would have, and the encoder the checkpoint's weights."""
    small = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=32)
    torch.manual_seed(0)
    mlm = RoFormerForMaskedLM(RoFormerConfig(**small)).state_dict()
    torch.manual_seed(0)
    fresh = RoFormerForSequenceClassification(RoFormerConfig(**small, num_labels=3))
    drawn = {**mlm, "classifier.out_proj.weight": fresh.state_dict()["classifier.out_proj.weight"]}
    for name, values in BEFORE_THE_PORT.items():
        torch.testing.assert_close(drawn[name].flatten()[-3:], torch.tensor(values), rtol=0, atol=5e-8, msg=name)
    after_fresh = torch.rand(3)
    torch.manual_seed(1)
    encoder = RoFormerForMaskedLM(RoFormerConfig(**small))
    encoder.save_pretrained(tmp_path)
    torch.manual_seed(0)
    start = RoFormerForSequenceClassification.from_pretrained_as_new(tmp_path, num_labels=3)
    assert torch.equal(torch.rand(3), after_fresh)  # the RNG is where building the new model left it
    for name, tensor in start.state_dict().items():
        source = encoder.state_dict() if name.startswith("roformer.") else fresh.state_dict()
        assert torch.equal(tensor, source[name]), (name, (tensor - source[name]).abs().max())
