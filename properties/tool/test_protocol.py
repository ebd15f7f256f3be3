"""The variant protocol's own machinery: shape domains, the weight scale's reach, seeded starts,
readouts, key-padding masks, and the strategies drawing inside a variant's domain."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from torch import Tensor, nn

from iqa import Domain, FixedPointLayer, Tag, Variant
from iqa.solvers import Map
from iqa.variants import resolve, scaled_parameters
from properties.strategies import Case, active_domain, cases, use_domain


class SlotToy(FixedPointLayer):
    """K slots of width D attend over N tokens; softmax over the slots; a noise start; readout = slot mean."""

    domain = Domain(dim_multiple=2, min_dim=2, slots=(1, 3))

    def __init__(self, embed_dim: int, n_iters: int = 10, slots: int = 2, **options: object) -> None:
        super().__init__(embed_dim, n_iters, **options)  # type: ignore[arg-type]
        self.slots = slots
        self.to_q = nn.Linear(embed_dim, embed_dim, bias=False)
        self.to_k = nn.Linear(embed_dim, embed_dim, bias=True)
        self.gru = nn.GRUCell(embed_dim, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)
        self.mixer = nn.Parameter(torch.randn(embed_dim, embed_dim))
        self.mu = nn.Parameter(torch.randn(1, 1, embed_dim))

    def initial_point(self, x: Tensor) -> Tensor:
        noise = torch.randn(
            (x.shape[0], self.slots, self.embed_dim), generator=self.start_generator(x), dtype=x.dtype, device=x.device
        )
        return self.mu + noise

    def fixed_point_map(self, x: Tensor) -> Map:
        k = self.to_k(self.norm(x))

        def f(y: Tensor) -> Tensor:
            attn = torch.softmax(self.to_q(y) @ k.transpose(-2, -1), dim=-2)  # over slots
            return (attn / attn.sum(-1, keepdim=True)) @ x

        return f

    def readout(self, y: Tensor, x: Tensor) -> Tensor:
        return y.mean(dim=1)


SLOT_TOY = Variant.from_layer(SlotToy, name="slot-toy", tags={Tag.DETERMINISTIC})


def test_domain_describes_and_checks_its_shapes() -> None:
    domain = Domain(dim_multiple=4, min_dim=4, max_dim=12, min_tokens=2, slots=(2, 5))
    assert domain.describe() == "D multiple of 4, 4 <= D <= 12; N >= 2; K in [2, 5] slots"
    assert domain.dims(1, 100) == [4, 8, 12]
    assert domain.dims(5, 7) == []
    assert domain.tokens(1, 6) == (2, 6) and domain.tokens(1, 1) is None
    assert domain.contains(3, 8, slots=2) and not domain.contains(3, 6, slots=2) and not domain.contains(3, 8)
    assert Domain().describe() == "any D; N >= 1; K = N"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim_multiple": 0}, "dim_multiple"),
        ({"min_dim": 4, "max_dim": 2}, "max_dim=2 is below min_dim=4"),
        ({"dim_multiple": 8, "min_dim": 1, "max_dim": 7}, "no multiple of 8"),
        ({"slots": (3, 1)}, "slots"),
        ({"slots": 3}, "slots"),
    ],
)
def test_bad_domains_are_errors_that_name_the_problem(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Domain(**kwargs)  # type: ignore[arg-type]


def test_make_refuses_a_width_outside_the_domain() -> None:
    with pytest.raises(ValueError, match=r"embed_dim=3 is outside its domain \(D multiple of 2, D >= 2"):
        SLOT_TOY.make(3)


def test_the_weight_scale_reaches_every_weight_matrix_and_no_vector() -> None:
    one, three = SLOT_TOY.make(4, scale=1.0, seed=5), SLOT_TOY.make(4, scale=3.0, seed=5)
    reached = {name for name, _ in scaled_parameters(one)}
    assert reached == {"to_q.weight", "to_k.weight", "gru.weight_ih", "gru.weight_hh", "mixer"}
    params1, params3 = dict(one.named_parameters()), dict(three.named_parameters())
    for name, p in params1.items():
        expected = 3 * p if name in reached else p
        assert torch.allclose(params3[name], expected, rtol=1e-6, atol=0), name  # only a product with 3 apart
    assert torch.equal(params1["norm.weight"], torch.ones(4))  # LayerNorm gain at its init


def test_a_variant_excludes_a_parameter_by_name_and_a_misspelt_name_is_an_error() -> None:
    variant = Variant.from_layer(SlotToy, name="slot-toy-unscaled", unscaled={"mixer"})
    one, three = variant.make(4, scale=1.0, seed=5), variant.make(4, scale=3.0, seed=5)
    assert torch.equal(one.mixer, three.mixer)
    wrong = Variant.from_layer(SlotToy, name="slot-toy-typo", unscaled={"mixr"})
    with pytest.raises(ValueError, match="'mixr', which are not parameters of SlotToy"):
        wrong.make(4)


def test_the_builtins_draw_their_linear_weights_as_before() -> None:
    """The default factory redraws nn.Linear weights from the generator, in module order (also at D = 1)."""
    layer = resolve("injection").make(1, scale=2.0, seed=9)
    generator = torch.Generator().manual_seed(9)
    for linear in (layer.Omega_Q, layer.W_K, layer.W_V):
        expected = nn.init.kaiming_uniform_(torch.empty(1, 1), a=5**0.5, generator=generator)  # float32, then cast
        assert torch.equal(linear.weight, (2.0 * expected).double())


def test_a_noise_start_is_seeded_by_the_variant_seed() -> None:
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    a, b, c = (SLOT_TOY.make(4, seed=s, slots=3) for s in (1, 1, 2))
    assert torch.equal(a.initial_point(x), a.initial_point(x))  # the same layer: the same start every time
    assert torch.equal(a.initial_point(x), b.initial_point(x))
    assert not torch.equal(a.initial_point(x), c.initial_point(x))
    assert a.initial_point(x).shape == (2, 3, 4)


def test_forward_returns_the_readout_of_the_state_and_n_iters_zero_the_start() -> None:
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    layer = SLOT_TOY.make(4, seed=3, slots=3, n_iters=0)
    assert torch.equal(layer.solve_state(x), layer.initial_point(x))
    assert torch.equal(layer(x), layer.initial_point(x).mean(dim=1))
    layer = SLOT_TOY.make(4, seed=3, slots=3, solver="picard", tol=1e-10, max_iter=500)
    y, iterates = layer(x, track=True)
    state = layer.solve_state(x)
    assert state.shape == (2, 3, 4) and y.shape == (2, 4) and iterates[0].shape == (2, 3, 4)
    assert torch.equal(y, state.mean(dim=1))


class Masked(FixedPointLayer):
    def __init__(self, embed_dim: int, n_iters: int = 10, **options: object) -> None:
        super().__init__(embed_dim, n_iters, **options)  # type: ignore[arg-type]
        self.W = nn.Linear(embed_dim, embed_dim, bias=False)

    def fixed_point_map(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Map:
        bias = torch.zeros(x.shape[:2], dtype=x.dtype)
        if key_padding_mask is not None:
            bias = bias.masked_fill(key_padding_mask, -torch.inf)

        def f(y: Tensor) -> Tensor:
            return torch.softmax(self.W(y) @ x.transpose(-2, -1) + bias[:, None, :], dim=-1) @ x

        return f


def test_a_key_padding_mask_reaches_the_map_and_bad_masks_are_errors() -> None:
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    mask = torch.tensor([[False, False, True, True], [False, True, False, True]])
    layer = Variant.from_layer(Masked).make(3)
    padded = x.clone()
    padded[mask] = 1e3
    assert torch.equal(layer(x, key_padding_mask=mask)[~mask], layer(padded, key_padding_mask=mask)[~mask])
    with pytest.raises(TypeError, match=r"dtype torch\.bool"):
        layer(x, key_padding_mask=mask.double())
    with pytest.raises(ValueError, match=r"shape \(2, 3\), expected \[B, N\] = \(2, 4\)"):
        layer(x, key_padding_mask=mask[:, :3])
    with pytest.raises(ValueError, match=r"pads every token of batch element\(s\) \[1\]"):
        layer(x, key_padding_mask=torch.tensor([[False] * 4, [True] * 4]))
    with pytest.raises(TypeError, match="SlotToy takes no key_padding_mask"):
        SLOT_TOY.make(4)(torch.randn(2, 4, 4, dtype=torch.float64), key_padding_mask=mask)


def test_the_contractive_tag_needs_its_scales() -> None:
    with pytest.raises(ValueError, match="contractive tag and contractive_scales go together"):
        Variant.from_layer(Masked, tags={Tag.CONTRACTIVE})
    with pytest.raises(ValueError, match="contractive_scales must be a pair"):
        Variant.from_layer(Masked, tags={Tag.CONTRACTIVE}, contractive_scales=(1.0, 0.5))
    ok = Variant.from_layer(Masked, tags={Tag.CONTRACTIVE}, contractive_scales=(0.1, 0.5))
    assert ok.contractive_scales == (0.1, 0.5)


@settings(max_examples=40, derandomize=True)
@given(case=cases(tokens=(1, 6), dim=(1, 9)))
def test_cases_draw_inside_the_active_domain(case: Case) -> None:
    domain = active_domain()
    assert domain.contains(case.tokens, case.dim, case.slots)


def test_cases_draw_only_inside_a_variant_domain() -> None:
    with use_domain(SLOT_TOY.domain):
        test_cases_draw_inside_the_active_domain()
        seen = []

        @settings(max_examples=40, derandomize=True)
        @given(case=cases(tokens=(1, 6), dim=(1, 9)))
        def record(case: Case) -> None:
            seen.append(case)

        record()
    assert {c.dim for c in seen} <= {2, 4, 6, 8} and {c.slots for c in seen} <= {1, 2, 3}
    assert len({c.dim for c in seen}) > 1 and len({c.slots for c in seen}) > 1


def test_a_property_whose_shapes_miss_the_domain_is_not_applicable() -> None:
    @settings(max_examples=5)
    @given(case=cases(tokens=(1, 1), dim=(1, 1)))
    def one_dimensional(case: Case) -> None:
        raise AssertionError("never drawn")

    with use_domain(SLOT_TOY.domain), pytest.raises(pytest.skip.Exception, match="outside the variant's domain"):
        one_dimensional()


def test_the_seed_layer_names_its_key_and_query_and_the_norm_of_their_product() -> None:
    """The roles the invariance properties read (a layer naming none is skipped there, so a misnamed role would
    silently drop those properties): W_K is the key, Omega_Q the query, and ||W_K^T Omega_Q||_2 is the spectral
    norm (svdvals), not another norm; the base layer declares none."""
    from iqa import ImplicitQueryAttention

    layer = ImplicitQueryAttention(5).to(torch.float64)
    roles = layer.weight_roles()
    assert set(roles) == {"key", "query"}
    assert roles["key"] is layer.W_K.weight and roles["query"] is layer.Omega_Q.weight
    M = layer.W_K.weight.T @ layer.Omega_Q.weight
    # ord=2 and svdvals both take the top singular value of the same 5 x 5 product by LAPACK: a few eps apart
    assert torch.allclose(layer.score_weight_norm(), torch.linalg.svdvals(M)[0], rtol=1e-14, atol=0)
    assert FixedPointLayer.weight_roles(layer) == {}
