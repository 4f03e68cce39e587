"""slimkit.nn: the model-surgery helpers, and files that name layers by where they lived before."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune

from slimkit import storage
from slimkit.nn import (MaskedConv2d, MaskedLinear, SparseConv2d, SparseLinear, effective_weight, replace_layer,
                        to_masked, type_name)
from slimkit.plugins import get_registry

FIXTURES = Path(__file__).parent / "fixtures"


def test_effective_weight_is_weight_times_mask_for_every_kind_of_mask():
    torch.manual_seed(0)
    masked = MaskedLinear(6, 4)
    mask = (torch.rand(4, 6) > 0.5).float()
    masked.weight_mask.copy_(mask)  # a mask set by hand: the weights under it are not zero yet
    assert torch.equal(effective_weight(masked), masked.weight * mask)
    assert int((effective_weight(masked) == 0).sum()) == int((mask == 0).sum())
    plain = nn.Conv2d(2, 3, 3)
    assert effective_weight(plain) is plain.weight
    pruned = nn.Linear(5, 5)  # torch.nn.utils.prune: weight_orig + weight_mask
    torch_prune.random_unstructured(pruned, "weight", amount=0.6)
    assert torch.equal(effective_weight(pruned), pruned.weight_orig * pruned.weight_mask)
    odd = nn.Linear(3, 2)
    odd.register_buffer("weight_mask", torch.ones(2))  # not the weight's shape: not a mask of it
    assert effective_weight(odd) is odd.weight
    # differentiable: the gradient is zero under the mask
    effective_weight(masked).sum().backward()
    assert torch.equal(masked.weight.grad, mask)


def test_replace_layer_keeps_position_and_refuses_unknown_names():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 2)), nn.Softmax(1))
    new = nn.Linear(4, 2, bias=False)
    replace_layer(model, "1.1", new)
    assert model[1][1] is new and list(dict(model.named_children())) == ["0", "1", "2"]
    top = nn.Identity()
    replace_layer(model, "0", top)
    assert model[0] is top
    with pytest.raises(AttributeError):
        replace_layer(model, "1.7", nn.ReLU())
    assert len(model[1]) == 2


def test_masked_conv_of_to_masked_copies_weights_exactly():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    weights = [m.weight.detach().clone() for m in (model[0], model[2])]
    to_masked(model)
    assert isinstance(model[0], MaskedConv2d) and isinstance(model[2], MaskedLinear)
    assert all(torch.equal(effective_weight(m), w) for m, w in zip((model[0], model[2]), weights))


def test_sparse_inference_file_of_release_0_1_0_loads_and_computes_the_same():
    """A LeNet-5 saved with --sparse-inference layers by slimkit 0.1.0, when they were
    slimkit.ops.conv.SparseConv2d and slimkit.ops.linear.SparseLinear."""
    path = FIXTURES / "sparse_inference_v0.1.0.slim"
    expected = json.loads(path.with_suffix(".json").read_text())
    assert b"slimkit.ops.conv.SparseConv2d" in path.read_bytes()
    loaded = storage.load_model(path, get_registry())
    kinds = [type(m) for m in loaded.model.modules() if isinstance(m, (SparseConv2d, SparseLinear))]
    assert kinds == [SparseConv2d, SparseConv2d, SparseLinear, SparseLinear, SparseLinear]
    x = torch.tensor(expected["input"])
    with torch.no_grad():
        got = loaded.model.eval()(x)
    torch.testing.assert_close(got, torch.tensor(expected["logits"]), rtol=1e-5, atol=1e-5)
    # the layers' own arithmetic, against the dense weight they stand for
    conv = loaded.model.features.conv1
    with torch.no_grad():
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.sparse_weight.to_dense(), conv.bias, conv.stride,
                                                     conv.padding, conv.dilation), rtol=1e-5, atol=1e-5)
    # written again, the file names the types where they live now
    spec = get_registry().modules.spec(loaded.model)
    names = {n["type"] for n in spec["children"]["features"]["children"].values()}
    assert type_name(SparseConv2d) == "slimkit.nn.sparse.SparseConv2d" and type_name(SparseConv2d) in names
