"""RoPE, encoder, causal-LM training and generation speed against HuggingFace ``transformers``, measured side by
side in one run.

    python benchmarks/bench_rope_encoder.py            # batch 8 x 512 tokens, base size (as in the README)
    python benchmarks/bench_rope_encoder.py --quick    # fewer layers and repeats, for a quick look

Candidates run interleaved on the same tensors and weights, round after round in a shuffled order, each
timed after one untimed call; each row reports the median time over rounds and the median over rounds of each
round's ratio, so load from other processes hits both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import tempfile
import time

import torch
import transformers
from transformers.models.roformer import modeling_roformer as hf_roformer

import roformer
from roformer import apply_rotary


def timed(fn, repeats: int) -> float:
    """Mean seconds of one call over ``repeats`` calls that follow one untimed call: the first call after
    another candidate pays for the memory that candidate freed or evicted (page faults of fresh allocations,
    cold caches), which belongs to neither."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def race(candidates: dict, rounds: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each candidate in each of ``rounds`` interleaved rounds, in an order shuffled each
    round (HuggingFace's temporaries fault in fresh pages on every call, and whatever always ran after them
    would start cold)."""
    samples = {name: [] for name in candidates}
    order, rng = list(candidates), random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            samples[name].append(timed(candidates[name], repeats))
    return samples


def ratio(samples: dict, a: str, b: str) -> float:
    """Median over rounds of a's time over b's in the same round: load that comes and goes within a run hits
    both sides of each ratio alike, where a ratio of medians would mix rounds. Samples from separate races
    (the bf16-vs-fp32 row) have no rounds in common and are compared by their medians."""
    if len(samples[a]) != len(samples[b]):
        return statistics.median(samples[a]) / statistics.median(samples[b])
    return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))


def rope_rows(args) -> list[tuple]:
    """Both pairings, three modes: forward under inference_mode, forward with grad mode on (a training forward,
    inputs requiring grad), and forward + backward. References: HuggingFace RoFormer's
    apply_rotary_position_embeddings (interleaved) and LLaMA's apply_rotary_pos_emb (half split)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    b, h, s, d = args.batch, 12, args.seq, 64
    torch.manual_seed(0)
    q, k = torch.randn(2, b, h, s, d).unbind(0)
    q, k = q.contiguous(), k.contiguous()
    table = hf_roformer.RoFormerSinusoidalPositionalEmbedding(s, d)
    table.weight.data = table.create_weight()
    sinusoidal_pos = table((b, s))[None, None]  # as HuggingFace's encoder builds it once per forward
    hf_interleaved = hf_roformer.RoFormerSelfAttention.apply_rotary_position_embeddings
    theta = 10000.0 ** (-torch.arange(0, d, 2).float() / d)
    angles = torch.arange(s).float()[:, None] * theta
    llama_cos, llama_sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    references = {
        "interleaved": lambda a, c: hf_interleaved(sinusoidal_pos, a, c),
        "half": lambda a, c: apply_rotary_pos_emb(a, c, llama_cos[None], llama_sin[None]),
    }
    qg, kg = q.clone().requires_grad_(), k.clone().requires_grad_()
    grads = (torch.randn_like(q), torch.randn_like(k))

    def backward_of(fn):
        def step():
            qg.grad = kg.grad = None  # no accumulation pass: time the rotation's own backward
            torch.autograd.backward(fn(qg, kg), grads)
        return step

    def copy(a, c):
        return a.clone(), c.clone()

    def layout_rows(layout: str, rope, hf) -> list[tuple]:
        with torch.inference_mode():
            inference = race({"roformer": lambda: rope(q, k), "huggingface": lambda: hf(q, k),
                              "copy of q, k": lambda: copy(q, k)}, args.rounds, args.repeats)
        training = race({"roformer": lambda: rope(qg, kg), "huggingface": lambda: hf(qg, kg),
                         "copy of q, k": lambda: copy(qg, kg)}, args.rounds, args.repeats)
        both = race({"roformer": backward_of(rope), "huggingface": backward_of(hf), "copy of q, k": backward_of(copy)},
                    args.rounds, args.repeats)
        return [(f"RoPE {layout}: forward, inference_mode", inference),
                (f"RoPE {layout}: forward, grad mode (training)", training),
                (f"RoPE {layout}: forward + backward", both)]

    rows = []
    for layout in ("interleaved", "half"):
        rows += layout_rows(layout, roformer.RotaryEmbedding(d, interleaved=layout == "interleaved"),
                            references[layout])
    return rows


def form_rows(args) -> list[tuple]:
    """Every other position form and shape, each against a copy of its own inputs (forward under inference_mode,
    and forward + backward): (batch,) offsets, (batch, seq) position ids, varlen cu_seqlens (the batch packed along
    one axis of b * s tokens), a packed (b, s, 3, h, d) qkv, and in-place rotation of q and k. The per-token forms
    are timed twice: with the angles formed in the call (``rope(q, k, position_ids=...)``), and per layer, with
    cos/sin formed once per forward pass and shared by the layers (``apply_rotary(q, cos, sin)``, what the models
    do): their float64 angles cost about as much as a copy of one head's worth of q."""
    b, h, s, d = args.batch, 12, args.seq, 64
    torch.manual_seed(0)
    q, k = torch.randn(2, b, h, s, d).unbind(0)
    q, k = q.contiguous(), k.contiguous()
    offsets = torch.randint(0, 4096, (b,))
    position_ids = torch.randint(0, 4096, (b, s))
    cu = torch.arange(0, b * s + 1, s, dtype=torch.int32)
    tq, tk = (t.transpose(1, 2).reshape(b * s, h, d).contiguous() for t in (q, k))  # (total, heads, dim)
    qkv = torch.randn(b, s, 3, h, d)

    def cases_for(rope: roformer.RotaryEmbedding, interleaved: bool) -> dict:
        per_token = rope.cos_sin(s, position_ids=position_ids, dtype=q.dtype)
        per_packed = rope.cos_sin(b * s, cu_seqlens=cu, dtype=q.dtype)
        return {
            "(batch,) offsets": ((q, k), lambda a, c: rope(a, c, offset=offsets)),
            "(batch, seq) position_ids": ((q, k), lambda a, c: rope(a, c, position_ids=position_ids)),
            "(batch, seq) position_ids, per layer": (
                (q, k), lambda a, c: (apply_rotary(a, *per_token, interleaved), apply_rotary(c, *per_token,
                                                                                            interleaved))),
            "varlen cu_seqlens": ((tq, tk), lambda a, c: rope(a, c, cu_seqlens=cu)),
            "varlen cu_seqlens, per layer": (
                (tq, tk), lambda a, c: (apply_rotary(a, *per_packed, interleaved), apply_rotary(c, *per_packed,
                                                                                               interleaved))),
            "packed qkv": ((qkv,), lambda a: rope.rotate_qkv(a)),
        }

    rows = []
    for layout in ("interleaved", "half"):
        rope = roformer.RotaryEmbedding(d, interleaved=layout == "interleaved")
        for name, (inputs, fn) in cases_for(rope, layout == "interleaved").items():
            def copy(*a):
                return tuple(t.clone() for t in a)

            with torch.inference_mode():
                forward = race({"roformer": lambda fn=fn, i=inputs: fn(*i), "copy of q, k": lambda i=inputs: copy(*i)},
                               args.rounds, args.repeats)
            grad_inputs = [t.clone().requires_grad_() for t in inputs]
            grads = [torch.randn_like(t) for t in inputs]

            def backward_of(f, grad_inputs=grad_inputs, grads=grads):
                def step():
                    for t in grad_inputs:
                        t.grad = None
                    out = f(*grad_inputs)
                    torch.autograd.backward(out if isinstance(out, tuple) else (out,), grads[: len(grad_inputs)]
                                            if isinstance(out, tuple) else grads[:1])
                return step

            both = race({"roformer": backward_of(fn), "copy of q, k": backward_of(copy)}, args.rounds, args.repeats)
            rows += [(f"RoPE {layout}, {name}: forward, inference_mode", forward),
                     (f"RoPE {layout}, {name}: forward + backward", both)]
        # in place: q and k rotated where they are, against a copy of them (the least any out-of-place call writes)
        with torch.inference_mode():
            a, c = q.clone(), k.clone()
            inplace = race({"roformer": lambda a=a, c=c, rope=rope: rope(a, c, inplace=True),
                            "copy of q, k": lambda: (q.clone(), k.clone())}, args.rounds, args.repeats)
        rows.append((f"RoPE {layout}, in place: forward, inference_mode", inplace))
    return rows


def encoder_rows(args) -> list[tuple]:
    config = transformers.RoFormerConfig(
        vocab_size=30000, hidden_size=768, num_hidden_layers=args.layers, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=max(args.seq, 512),
    )
    torch.manual_seed(0)
    hf = transformers.RoFormerModel(config).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = roformer.RoFormerModel.from_pretrained(d).eval()
    ids = torch.randint(1, config.vocab_size, (args.batch, args.seq))
    mask = torch.ones_like(ids)
    mask[-1, args.seq // 2 :] = 0  # one padded sequence, so both build a real attention mask
    rows = []
    with torch.inference_mode():
        torch.testing.assert_close(ours(ids, mask).last_hidden_state,
                                   hf(input_ids=ids, attention_mask=mask).last_hidden_state,
                                   rtol=1e-4, atol=1e-4)
        fp32 = race(
            {"roformer": lambda: ours(ids, mask), "huggingface": lambda: hf(input_ids=ids, attention_mask=mask)},
            args.encoder_rounds,
            1,
        )
        rows.append(("encoder forward fp32", fp32))
        if not args.skip_bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = race(
                    {"roformer": lambda: ours(ids, mask),
                     "huggingface": lambda: hf(input_ids=ids, attention_mask=mask)},
                    max(1, args.encoder_rounds - 3),
                    1,
                )
            rows.append(("encoder forward bf16 autocast", bf16))
            rows.append(("ours bf16 autocast vs HF fp32",
                         {"roformer": bf16["roformer"], "huggingface": fp32["huggingface"]}))
    return rows


def lm_rows(args) -> list[tuple]:
    """A training step (forward, backward, AdamW) of a 4-layer causal LM and greedy generation with a KV cache,
    ours and transformers' RoFormerForCausalLM with the same weights."""
    config = transformers.RoFormerConfig(
        vocab_size=30000, hidden_size=768, num_hidden_layers=4, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=max(args.seq, 512), is_decoder=True, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    hf = transformers.RoFormerForCausalLM(config)
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = roformer.RoFormerForCausalLM.from_pretrained(d)
    ids = torch.randint(1, config.vocab_size, (args.lm_batch, args.seq))
    optimizers = {m: torch.optim.AdamW(m.parameters(), lr=1e-6) for m in (ours, hf)}

    def step(model):
        def run():
            model.train()
            optimizers[model].zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()
            optimizers[model].step()
        return run

    rows = [("causal LM training step fp32 (4 layers)",
             race({"roformer": step(ours), "huggingface": step(hf)}, args.encoder_rounds, 1))]
    prompt = ids[:, :32]
    ours.eval(), hf.eval()
    with torch.inference_mode():
        a = ours.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False)
        b = hf.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False)
        assert torch.equal(a, b), "greedy generation differs from transformers'"
        rows.append((f"greedy generate {args.new_tokens} tokens (4 layers)",
                     race({"roformer": lambda: ours.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False),
                           "huggingface": lambda: hf.generate(prompt, max_new_tokens=args.new_tokens,
                                                              do_sample=False)},
                          args.encoder_rounds, 1)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (base: 12)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--encoder-rounds", type=int, default=5)
    parser.add_argument("--skip-bf16", action="store_true")
    parser.add_argument("--lm-batch", type=int, default=4, help="batch of the causal LM rows")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated in the generation row")
    parser.add_argument("--quick", action="store_true", help="2 layers, fewer rounds")
    parser.add_argument("--rope-only", action="store_true", help="the RoPE rows only, no encoder")
    parser.add_argument("--models-only", action="store_true", help="the encoder and causal-LM rows only")
    parser.add_argument("--lm-only", action="store_true", help="the causal-LM rows only (training step, generate)")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.rounds, args.repeats, args.encoder_rounds = 2, 3, 5, 3

    flags = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in open("/proc/cpuinfo").read()] \
        if platform.system() == "Linux" else []
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, CPU flags of note: {', '.join(flags) or 'none (AVX2)'}")
    print(f"shapes: q, k = ({args.batch}, 12, {args.seq}, 64); encoder: base width, {args.layers} layers, "
          f"batch {args.batch} x {args.seq} tokens\n")
    rows = [] if args.models_only or args.lm_only else rope_rows(args) + form_rows(args)
    rows += [] if args.rope_only or args.lm_only else encoder_rows(args)
    rows += [] if args.rope_only else lm_rows(args)
    print("| measurement | roformer | huggingface | copy of the inputs | HF / roformer | roformer / copy |")
    print("|---|---|---|---|---|---|")
    for name, t in rows:
        def ms(key, t=t):
            return f"{statistics.median(t[key]) * 1e3:.2f} ms" if key in t else ""
        vs_copy = f"{ratio(t, 'roformer', 'copy of q, k'):.2f}x" if "copy of q, k" in t else ""
        vs_hf = f"{ratio(t, 'huggingface', 'roformer'):.2f}x" if "huggingface" in t else ""
        print(f"| {name} | {ms('roformer')} | {ms('huggingface')} | {ms('copy of q, k')} | {vs_hf} | {vs_copy} |")


if __name__ == "__main__":
    main()
