"""The DEQ-Transformer blocks (iqa.variants.deq) against a hand-written composition of the same ops.

The reference below recomputes f(z; x) from the layer's parameters by another path for each
part: attention by torch's own ``nn.MultiheadAttention`` forward (the layer writes its ops out
over the same module's weights), LayerNorm and the MLP by plain tensor algebra (the layer calls
``nn.LayerNorm`` and ``nn.Linear``). Every
parameter (LayerNorm gains and biases, MLP biases) is drawn at random first, so a module
used in the wrong place shows. ``test_reference_catches_injected_bugs`` keeps the proof that
the comparison fails on the bugs it guards against.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iqa.variants import resolve
from iqa.variants.deq import DEQBlock, PostLNDEQBlock, PreLNDEQBlock

FORMS = {"post": PostLNDEQBlock, "pre": PreLNDEQBlock}
SHAPES = [(4, 2, 3), (6, 2, 5), (8, 4, 4), (6, 3, 2), (4, 1, 1)]  # (D, heads, N)


def randomized(cls: type[DEQBlock], dim: int, heads: int, seed: int) -> DEQBlock:
    """A block with every parameter drawn from N(0, 1/fan) (gains around 1), float64."""
    layer = cls(dim, heads=heads).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if name.startswith("norm") and name.endswith("weight"):
                p.copy_(1 + 0.5 * noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[-1]))
    return layer


def reference_attention(layer: DEQBlock, h: Tensor, mask: Tensor | None) -> Tensor:
    """torch's own nn.MultiheadAttention forward, on the module that holds the layer's attention weights."""
    out, _ = layer.attn(h, h, h, key_padding_mask=mask, need_weights=True)
    return out


def reference_norm(norm: nn.LayerNorm, v: Tensor) -> Tensor:
    """(v - mean) / sqrt(var + eps) * gain + bias over the last dimension (biased variance)."""
    centred = v - v.mean(dim=-1, keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(dim=-1, keepdim=True) + norm.eps) * norm.weight + norm.bias


def reference_mlp(layer: DEQBlock, u: Tensor) -> Tensor:
    hidden = torch.clamp(u @ layer.mlp_in.weight.T + layer.mlp_in.bias, min=0)
    return hidden @ layer.mlp_out.weight.T + layer.mlp_out.bias


def reference_step(form: str, layer: DEQBlock, z: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """The docstring formulas of iqa.variants.deq, written out."""
    inj = x @ layer.inject.weight.T
    if form == "post":
        u = reference_norm(layer.norm1, z + reference_attention(layer, z + inj, mask))
        return reference_norm(layer.norm2, u + reference_mlp(layer, u))
    u = z + reference_attention(layer, reference_norm(layer.norm1, z) + inj, mask)
    return u + reference_mlp(layer, reference_norm(layer.norm2, u))


def tolerance(dim: int, *terms: Tensor) -> float:
    """Both sides sum the same products in different orders (dot products of length <= 4D, about six
    stages); each stage rounds to ~ sqrt(4D) eps of the largest magnitude in play. 4 D eps times that
    magnitude is about 4x the worst difference seen over these shapes, seeds and masks."""
    scale = max(1.0, *(float(t.abs().max()) for t in terms))
    return 4 * dim * torch.finfo(torch.float64).eps * scale


def max_difference(form: str, layer: DEQBlock, seed: int, tokens: int, masked: bool = False) -> tuple[float, float]:
    dim = layer.embed_dim
    g = torch.Generator().manual_seed(10_000 + seed)
    x = torch.randn(2, tokens, dim, generator=g, dtype=torch.float64)
    z = torch.randn(2, tokens, dim, generator=g, dtype=torch.float64)
    mask = None
    if masked:
        mask = torch.zeros(2, tokens, dtype=torch.bool)
        mask[0, -1] = tokens > 1  # pad the last token of the first element (a lone token stays unpadded)
    with torch.no_grad():
        got = layer.fixed_point_map(x) if mask is None else layer.fixed_point_map(x, key_padding_mask=mask)
        out = got(z)
        want = reference_step(form, layer, z, x, mask)
    return float((out - want).abs().max()), tolerance(dim, z, x, want)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("dim", "heads", "tokens"), SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_block_equals_hand_written_composition(form: str, dim: int, heads: int, tokens: int, masked: bool) -> None:
    for seed in range(3):
        layer = randomized(FORMS[form], dim, heads, seed)
        diff, tol = max_difference(form, layer, seed, tokens, masked)
        assert diff <= tol, (
            f"{form}-LN D={dim} heads={heads} N={tokens} seed={seed}: |f - reference| = {diff:.2e} > {tol:.2e}"
        )


class _ResidualDropped(PostLNDEQBlock):
    def step(self, z: Tensor, injection: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        u = self.norm1(self.attend(z + injection, key_padding_mask))
        return self.norm2(u + self.mlp(u))


class _NormsSwapped(PostLNDEQBlock):
    def step(self, z: Tensor, injection: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        u = self.norm2(z + self.attend(z + injection, key_padding_mask))
        return self.norm1(u + self.mlp(u))


class _InjectionInsideNorm(PreLNDEQBlock):
    def step(self, z: Tensor, injection: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        u = z + self.attend(self.norm1(z + injection), key_padding_mask)
        return u + self.mlp(self.norm2(u))


class _HeadsMixedUp(PreLNDEQBlock):
    """Claims ``heads`` heads but attends with one (in_proj_weight has the same shape either way)."""

    def __init__(self, embed_dim: int, n_iters: int = 10, **options: Any) -> None:
        super().__init__(embed_dim, n_iters, **options)
        self.attn = nn.MultiheadAttention(embed_dim, 1, bias=False, batch_first=True)


class _ScoresUnscaled(PostLNDEQBlock):
    """Attention without the 1/sqrt(d) temperature (d = 2 here, so the scores are off by sqrt(2))."""

    def attend(self, h: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        d = self.embed_dim // self.heads
        return super().attend(h * d**0.25, key_padding_mask) / d**0.25  # q.k scaled by sqrt(d); v, W_O linear


class _MaskIgnored(PostLNDEQBlock):
    def attend(self, h: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        return super().attend(h, None)


class _ReluForGelu(PostLNDEQBlock):
    def mlp(self, u: Tensor) -> Tensor:
        return self.mlp_out(F.gelu(self.mlp_in(u)))


BUGS: dict[str, tuple[str, type[DEQBlock], bool]] = {
    "residual-dropped": ("post", _ResidualDropped, False),
    "norms-swapped": ("post", _NormsSwapped, False),
    "injection-inside-norm": ("pre", _InjectionInsideNorm, False),
    "heads-mixed-up": ("pre", _HeadsMixedUp, False),
    "scores-unscaled": ("post", _ScoresUnscaled, False),
    "mask-ignored": ("post", _MaskIgnored, True),
    "gelu-for-relu": ("post", _ReluForGelu, False),
}


@pytest.mark.parametrize("bug", BUGS)
def test_reference_catches_injected_bugs(bug: str) -> None:
    """Each bug, at D = 4 with 2 heads and N = 3, puts the block beyond the comparison's tolerance."""
    form, cls, masked = BUGS[bug]
    layer = randomized(cls, 4, 2, seed=0)
    diff, tol = max_difference(form, layer, 0, 3, masked)
    assert diff > tol, f"bug {bug!r} not caught: |f - reference| = {diff:.2e} <= {tol:.2e}"


@pytest.mark.parametrize("form", FORMS)
def test_starts_from_zeros_and_zero_steps_return_them(form: str) -> None:
    layer = FORMS[form](4, n_iters=0).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    assert torch.equal(layer.initial_point(x), torch.zeros_like(x))
    assert torch.equal(layer(x), torch.zeros_like(x))


@pytest.mark.parametrize(("dim", "heads"), [(6, 4), (5, 2), (4, 0)])
def test_bad_heads_are_a_clear_error(dim: int, heads: int) -> None:
    with pytest.raises(ValueError, match="heads"):
        PostLNDEQBlock(dim, heads=heads)


def test_roles_name_only_what_has_its_own_parameter() -> None:
    """q, k and v live fused in in_proj_weight: only the output projection is a role."""
    layer = PostLNDEQBlock(4)
    roles = layer.weight_roles()
    assert set(roles) == {"output"}
    assert roles["output"] is layer.attn.out_proj.weight


@pytest.mark.parametrize("name", ["deq-post", "deq-pre"])
def test_weight_scale_reaches_the_attention_and_leaves_vectors(name: str) -> None:
    """The default factory: every weight matrix (in_proj_weight included) scales, LayerNorm gains and biases
    and the MLP biases keep their seeded init. Same seed, scales 1 and 2: matrices exactly double."""
    variant = resolve(name)
    one, two = (dict(variant.make(4, scale=s, seed=5).named_parameters()) for s in (1.0, 2.0))
    matrices = {"attn.in_proj_weight", "attn.out_proj.weight", "inject.weight", "mlp_in.weight", "mlp_out.weight"}
    assert matrices <= set(one)
    for key, p in one.items():
        if key in matrices:
            assert torch.equal(two[key], 2 * p), key
        else:
            assert p.dim() == 1 and torch.equal(two[key], p), key
    assert torch.equal(one["norm1.weight"], torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_domain_excludes_degenerate_and_odd_widths(dim: int) -> None:
    """D <= 2 (LayerNorm is piecewise constant) and D not a multiple of the 2 heads are outside the domain."""
    with pytest.raises(ValueError, match="outside its domain"):
        resolve("deq-post").make(dim)


@pytest.mark.parametrize("form", FORMS)
def test_padded_tokens_change_no_unpadded_output(form: str) -> None:
    """With a key-padding mask, new content in the padded tokens (x and z) leaves the unpadded rows of f
    bitwise equal: their keys get softmax weight exactly 0, and LayerNorm and the MLP act per token."""
    layer = randomized(FORMS[form], 4, 2, seed=1)
    g = torch.Generator().manual_seed(7)
    x, z = (torch.randn(2, 5, 4, generator=g, dtype=torch.float64) for _ in range(2))
    mask = torch.tensor([[False, False, True, False, True], [False, True, False, False, False]])
    x2, z2 = x.clone(), z.clone()
    x2[mask] = 100 * torch.randn(int(mask.sum()), 4, generator=g, dtype=torch.float64)
    z2[mask] = -x2[mask]
    with torch.no_grad():
        out = layer.fixed_point_map(x, key_padding_mask=mask)(z)
        out2 = layer.fixed_point_map(x2, key_padding_mask=mask)(z2)
    assert torch.equal(out[~mask], out2[~mask])
    assert not torch.equal(out[mask], out2[mask])  # the padded rows themselves did change: the test moved them
