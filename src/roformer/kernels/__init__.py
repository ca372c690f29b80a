"""Fused operations behind :mod:`roformer.rope`: the rotation of Eq. 34 as a ``torch.library`` op
(:mod:`roformer.kernels.rotary`) with a compiled CPU loop (:mod:`roformer.kernels.cpu`)."""
