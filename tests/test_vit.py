"""The zoo's small vision transformer: shapes, options, saving, and filter-prune removing whole heads."""
import json

import pytest
import torch

from slimkit.errors import UserError
from slimkit.models import zoo
from slimkit.models.vit import default_patch
from slimkit.nn import ModuleRegistry
from slimkit_plugins import filter_prune as fp


def registry():
    reg = ModuleRegistry()
    zoo.register_modules(reg.register)
    return reg


def rebuilt(model):
    reg = registry()
    out = reg.build(json.loads(json.dumps(reg.spec(model))))
    out.load_state_dict(model.state_dict(), strict=True)
    return out.eval()


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_builds_for_every_input_size(shape):
    model = zoo.MODELS["vit"][0](shape, 10, dim=16, depth=1, heads=2, seed=0).eval()
    assert model(torch.randn(2, *shape)).shape == (2, 10)
    assert model.pos_embed.shape == (1, 17, 16)  # the default patch gives a 4x4 grid plus the class token


def test_default_patch_and_bad_options():
    assert (default_patch(8, 8), default_patch(28, 28), default_patch(32, 32)) == (2, 7, 8)
    with pytest.raises(UserError, match="divide"):
        zoo.MODELS["vit"][0]((1, 28, 28), 10, patch=5)
    with pytest.raises(UserError, match="divisible"):
        zoo.MODELS["vit"][0]((1, 8, 8), 10, dim=10, heads=4)


def test_filter_prune_removes_whole_heads_and_mlp_units_and_the_result_saves():
    model = zoo.MODELS["vit"][0]((1, 8, 8), 10, dim=32, depth=2, heads=4, seed=0).eval()
    out = fp.prune_channels(model, (1, 8, 8), ratio=0.5).eval()
    for block in out.blocks:
        attn = block.attn
        assert attn.q.out_features == attn.k.out_features == attn.v.out_features == attn.proj.in_features == 16
        assert block.fc1.out_features == 32 and block.fc2.in_features == 32
        assert block.fc2.out_features == 32 and attn.proj.out_features == 32  # the LayerNorm'd width stays
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(out)(x), out(x), rtol=0, atol=0)
