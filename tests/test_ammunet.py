"""AMMUNet: parameter count, attention map merging against explicitly built attention maps,
relative-position tables on larger grids, no full-resolution map, memory at 1024."""

import json
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from landcover.engine.models import create_model, load_encoder_weights, to_deploy
from landcover.engine.models.ammunet import GlobalAttention, GranularAttention
from landcover.engine.models.resnet import ResNetEncoder

SMALL = {"encoder_depth": 18, "encoder_width": 8, "decoder_channels": 16}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count():
    model = create_model("ammunet", num_classes=6)
    assert _count(model.encoder) == 23_508_032  # torchvision's ResNet-50 without fc
    assert _count(model.decoder) == 7_492_248
    assert _count(model.aux_head) == 256 * 256 * 9 + 2 * 256 + 6 * 256
    assert _count(model) == 31_592_152  # the paper: about 32M (see the module docstring)
    assert _count(to_deploy(model)) == 31_592_152 - _count(model.aux_head)


# --------------------------------------------------------------------------- merging


def _qkv(attn, x: torch.Tensor) -> torch.Tensor:
    """q, k, v of the first image as ``(3, heads, tokens, d)``, tokens row-major."""
    _, c, h, w = x.shape
    return attn.qkv(x)[0].reshape(3, attn.num_heads, c // attn.num_heads, h * w).transpose(-2, -1)


def _project(attn, out: torch.Tensor, h: int, w: int) -> torch.Tensor:
    heads, _, d = out.shape
    return attn.proj(out.transpose(1, 2).reshape(1, heads * d, h, w))


def _deep_map(attn: GlobalAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(s q k^T + T[dy + g - 1, dx + g - 1]), the table read token pair by pair."""
    q, k, v = _qkv(attn, x)
    h, w = x.shape[-2:]
    g = attn.base_grid
    table = attn.relative_position_bias_table
    cells = [(y, x_) for y in range(h) for x_ in range(w)]
    bias = torch.stack(
        [
            torch.stack(
                [table[(yi - yj + g - 1) * (2 * g - 1) + xi - xj + g - 1] for yj, xj in cells]
            )
            for yi, xi in cells
        ]
    ).permute(2, 0, 1)
    return (attn.scale * q @ k.transpose(-2, -1) + bias).softmax(dim=-1), v


def _merged_map(attn: GranularAttention, x: torch.Tensor, passed: torch.Tensor):
    """The level's full map, built entry by entry: local softmax inside each 2x2 granule
    (3x3 table), the coarser passed map / 4 between granules."""
    q, k, v = _qkv(attn, x)
    h, w = x.shape[-2:]
    cells = [(y, x_) for y in range(h) for x_ in range(w)]
    granule = [(y // 2) * (w // 2) + x_ // 2 for y, x_ in cells]  # coarse token index
    table = attn.relative_position_bias_table
    merged = torch.zeros(attn.num_heads, h * w, h * w, dtype=x.dtype)
    for i, (yi, xi) in enumerate(cells):
        members = [j for j in range(h * w) if granule[j] == granule[i]]
        scores = torch.stack(
            [
                attn.scale * (q[:, i] * k[:, j]).sum(-1)
                + table[(yi - cells[j][0] + 1) * 3 + xi - cells[j][1] + 1]
                for j in members
            ],
            dim=-1,
        )
        merged[:, i, members] = scores.softmax(dim=-1)
        for j in range(h * w):
            if granule[j] != granule[i]:
                merged[:, i, j] = passed[:, granule[i], granule[j]] / 4
    return merged, v


def _masked(attn_map: torch.Tensor) -> torch.Tensor:
    return attn_map * (1 - torch.eye(attn_map.shape[-1], dtype=attn_map.dtype))


def test_attention_map_merging_matches_the_explicit_maps():
    torch.manual_seed(0)
    dim, heads = 16, 2
    deep = GlobalAttention(dim, heads, base_grid=4).double()
    middle, fine = GranularAttention(dim, heads).double(), GranularAttention(dim, heads).double()
    for attn in (deep, middle, fine):
        torch.nn.init.normal_(attn.relative_position_bias_table)
    grids = [(2, 3), (4, 6), (8, 12)]
    x4, x3, x2 = (torch.randn(1, dim, *grid, dtype=torch.double) for grid in grids)

    out4, maps = deep(x4, [])
    out3, maps = middle(x3, maps)
    out2, maps = fine(x2, maps)

    m4, v4 = _deep_map(deep, x4)
    m3, v3 = _merged_map(middle, x3, _masked(m4))
    m2, v2 = _merged_map(fine, x2, _masked(m3))
    torch.testing.assert_close(out4, _project(deep, m4 @ v4, *grids[0]))
    torch.testing.assert_close(out3, _project(middle, m3 @ v3, *grids[1]))
    torch.testing.assert_close(out2, _project(fine, m2 @ v2, *grids[2]))
    # rows: 1 from the local softmax + the coarser passed map's row (its self part masked)
    for fine_map, coarse_map, (h, w) in ((m3, m4, grids[1]), (m2, m3, grids[2])):
        granule = [(y // 2) * (w // 2) + x_ // 2 for y in range(h) for x_ in range(w)]
        expected = 1 + _masked(coarse_map).sum(-1)[:, granule]
        torch.testing.assert_close(fine_map.sum(-1), expected)
    # what is passed on: the deepest map masked, then one masked local map per level
    assert [tuple(m.shape) for m in maps] == [(1, 2, 6, 6), (1, 2, 2, 3, 4, 4), (1, 2, 4, 6, 4, 4)]
    torch.testing.assert_close(maps[0][0], _masked(m4))


def test_merging_gradients_flow_to_every_level():
    torch.manual_seed(0)
    deep, fine = GlobalAttention(8, 2, base_grid=2), GranularAttention(8, 2)
    x4 = torch.randn(1, 8, 2, 2, requires_grad=True)
    _, maps = deep(x4, [])
    out3, _ = fine(torch.randn(1, 8, 4, 4), maps)
    (grad,) = torch.autograd.grad(out3.square().sum(), x4)
    assert torch.any(grad != 0)  # the fine level reads the deep level's map


# --------------------------------------------------------------------------- larger grids


def test_relative_position_table_is_interpolated_for_a_larger_grid():
    """A 512-pixel crop gives a 16 x 16 deepest grid (the table's), a 1024 tile 32 x 32."""
    torch.manual_seed(0)
    attn = GlobalAttention(16, 2, base_grid=16)
    table = attn.relative_position_bias_table.detach().clone()
    grid = table.t().reshape(2, 31, 31)  # (heads, dy + 15, dx + 15)
    small = attn.relative_position_bias(16, 16).detach()
    assert torch.equal(small[:, 0, 16 * 16 - 1], grid[:, 0, 0])  # offset (-15, -15)
    large = attn.relative_position_bias(32, 32).detach()
    assert large.shape == (2, 1024, 1024)
    # corners aligned: zero offset and the extreme offsets keep their learned values
    assert torch.allclose(large[:, 0, 0], grid[:, 15, 15], atol=1e-6)
    assert torch.allclose(large[:, 0, 1023], grid[:, 0, 0], atol=1e-6)  # (-31, -31) -> (-15, -15)
    assert torch.allclose(large[:, 1023, 0], grid[:, 30, 30], atol=1e-6)
    assert torch.allclose(large[:, 0, 31], grid[:, 15, 0], atol=1e-6)  # (0, -31) -> (0, -15)
    # in between: offset 2 on the large grid sits between offsets 0 and 1 of the table
    between = large[:, 0, 2]  # (0, -2) -> (0, -2 * 15 / 31)
    assert not torch.allclose(between, grid[:, 15, 14]) and not torch.allclose(
        between, grid[:, 15, 15]
    )
    assert torch.equal(attn.relative_position_bias_table.detach(), table)  # not re-initialised
    # a smaller grid reads the table's centre
    tiny = attn.relative_position_bias(2, 2).detach()
    torch.testing.assert_close(tiny[:, 0, 3], grid[:, 14, 14])


def test_model_grows_to_larger_inputs_without_new_parameters():
    """The same at model level, scaled down: a table for 64-pixel crops (2 x 2 grid) on a
    128-pixel input (4 x 4 grid)."""
    torch.manual_seed(0)
    model = create_model("ammunet", num_classes=3, base_grid=2, **SMALL).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attn = model.decoder.blocks[0].attn
    with torch.no_grad():
        for size in (64, 128):
            logits = model(torch.randn(1, 3, size, size))
            assert logits.shape == (1, 3, size, size) and torch.isfinite(logits).all()
        assert attn.relative_position_bias(4, 4).shape == (8, 16, 16)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


class _LargestOutput(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_no_full_resolution_attention_map_is_built():
    model = create_model("ammunet", num_classes=3, **SMALL).eval()
    x = torch.randn(1, 3, 256, 256)
    recorder = _LargestOutput()
    with torch.no_grad(), recorder:
        model(x)
    heads, stride16_tokens = 8, (256 // 16) ** 2
    # a full stride-16 map would be 8 x 256 x 256 = 524k values (stride 8: 8.4M); the
    # largest tensor is the logits (3 x 256 x 256)
    assert recorder.largest < heads * stride16_tokens**2
    assert recorder.largest == 3 * 256 * 256


_PEAK_SCRIPT = """
import json, resource, torch
from landcover.engine.models import create_model
model = create_model("ammunet", num_classes=6, aux_head=False).eval()
x = torch.randn(1, 3, 1024, 1024)
idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.inference_mode():
    model(x)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"idle_kib": idle, "peak_kib": peak}))
"""


@pytest.mark.slow
def test_cpu_peak_memory_at_1024():
    """One 1 x 3 x 1024 x 1024 forward in eval, in a fresh process: its whole peak resident
    memory (torch itself included) stays under 2 GB (measured: about 1.1 GB)."""
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, check=True
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["peak_kib"] * 1024 < 2e9, figures


# --------------------------------------------------------------------------- encoder weights


def test_loads_a_torchvision_resnet(tmp_path):
    torch.manual_seed(1)
    state = dict(ResNetEncoder(18, in_channels=3).state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(state, tmp_path / "resnet18.pth")
    model = create_model("ammunet", num_classes=6, encoder_depth=18, decoder_channels=16)
    assert load_encoder_weights(model, tmp_path / "resnet18.pth") is model
    assert torch.equal(
        model.encoder.layer3[0].downsample[1].running_mean,
        state["layer3.0.downsample.1.running_mean"],
    )
