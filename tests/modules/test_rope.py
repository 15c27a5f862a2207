import math

import torch

from genrecon.modules.rope import apply_rope, grid_coords, rope_frequencies, rope_phases


def test_frequencies_and_identity_padding_at_head_dim_128() -> None:
    freqs = rope_frequencies(128)
    assert freqs.shape == (21,)
    torch.testing.assert_close(freqs, 1e4 ** (-torch.arange(21) / 21))
    phases = rope_phases(torch.tensor([[3, 5, 7]]), 128)
    assert phases.shape == (1, 64) and phases.dtype == torch.complex64
    # Axis-major blocks of 21 rotations, then one identity pair.
    angles = torch.cat([3 * freqs, 5 * freqs, 7 * freqs, torch.zeros(1)])
    torch.testing.assert_close(phases[0], torch.polar(torch.ones(64), angles))


def test_generalised_head_dims() -> None:
    assert rope_phases(torch.zeros(2, 3), 64).shape == (2, 32)  # 10 per axis + 2 identity
    ph = rope_phases(torch.tensor([[1, 1, 1]]), 32)  # 5 per axis + 1 identity
    assert ph.shape == (1, 16)
    assert ph[0, 15] == 1


def test_rotation_is_relative_and_norm_preserving() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 4, 64).unbind(0)  # [L=1, H=4, D]
    a, b = torch.tensor([[2, 9, 4]]), torch.tensor([[7, 1, 3]])
    shift = torch.tensor([[5, -2, 11]])
    dot = (apply_rope(q, rope_phases(a, 64)) * apply_rope(k, rope_phases(b, 64))).sum(-1)
    dot_shifted = (apply_rope(q, rope_phases(a + shift, 64)) * apply_rope(k, rope_phases(b + shift, 64))).sum(
        -1
    )
    torch.testing.assert_close(dot, dot_shifted, atol=1e-4, rtol=1e-4)
    rotated = apply_rope(q, rope_phases(a, 64))
    torch.testing.assert_close(rotated.norm(dim=-1), q.norm(dim=-1))
    # Zero coordinates are the identity.
    torch.testing.assert_close(apply_rope(q, rope_phases(torch.zeros(1, 3), 64)), q)


def test_pairs_are_adjacent_channels() -> None:
    x = torch.zeros(1, 1, 6)
    x[..., 0] = 1.0  # the first complex pair (0, 1) of the x-axis block
    out = apply_rope(x, rope_phases(torch.tensor([[1, 0, 0]]), 6))
    torch.testing.assert_close(out[0, 0, :2], torch.tensor([math.cos(1.0), math.sin(1.0)]))


def test_grid_coords_order_is_ij_flattening() -> None:
    r = 3
    coords = grid_coords(r)
    index = coords[:, 0] * r * r + coords[:, 1] * r + coords[:, 2]
    assert torch.equal(index, torch.arange(r**3))


def test_real_rotation_of_compiled_code_equals_the_complex_one() -> None:
    from genrecon.modules.rope import rotate_pairs

    g = torch.Generator().manual_seed(0)
    coords = torch.randint(0, 64, (37, 3), generator=g)
    phases = rope_phases(coords, 64)
    x = torch.randn(37, 4, 64, generator=g)
    torch.testing.assert_close(rotate_pairs(x, phases), apply_rope(x, phases), atol=1e-6, rtol=1e-6)
    xb = x.to(torch.bfloat16)
    assert rotate_pairs(xb, phases).dtype == torch.bfloat16
    # Compiled, apply_rope takes the real path (inductor has no complex kernels) and still agrees.
    compiled = torch.compile(apply_rope, dynamic=True)
    torch.testing.assert_close(compiled(x, phases), apply_rope(x, phases), atol=1e-6, rtol=1e-6)
