"""Models of the user's own classes saved as a torch.fx graph (slimkit.nn.graphspec): exact
round trips, structured pruning of the rebuilt GraphModule, the allowlist on save and on load,
and the whole CLI in a fresh process that cannot import the model's module."""
import json
import os
import textwrap

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import cli, run_slimkit
from depgraph_corpus import CORPUS
from test_depgraph import prepared, random_half
from slimkit import storage
from slimkit.errors import UserError
from slimkit.nn import MaskedConv2d, to_masked
from slimkit.nn.channels import remove_channels
from slimkit.nn.depgraph import build_graph
from slimkit.nn.graphspec import GRAPH_TYPE, function_name, resolve_function
from slimkit.plugins import get_registry

INFO = {"input_shape": [1, 8, 8], "num_classes": 10}


class Gate(nn.Module):
    """Squeeze-excitation with a learned temperature and a buffer, used through get_attr."""

    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, c // 2), nn.Linear(c // 2, c)
        self.temperature = nn.Parameter(torch.full((1,), 2.0))
        self.register_buffer("offset", torch.linspace(-0.1, 0.1, c))

    def forward(self, x):
        s = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))) / self.temperature + self.offset
        return x * torch.sigmoid(s).view(x.shape[0], -1, 1, 1)


class Mixed(nn.Module):
    """Slicing, getattr, dtypes, tensor constants, operator.*, cat, flatten, an inlined LayerNorm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.gate = Gate(8)
        self.side = nn.Conv2d(1, 4, 1)
        self.norm = nn.LayerNorm(12 * 16)
        self.fc = nn.Linear(12 * 16, 10)
        self.dropout_p = 0.25

    def forward(self, x):
        y = self.gate(F.relu(self.conv(x)))
        z = torch.cat([y, self.side(x)], dim=1)[:, :, ::2, 1::2]
        z = torch.flatten(z, 1).to(torch.float32)
        z = F.dropout(self.norm(z), self.dropout_p, self.training)
        return self.fc(z) * torch.tensor([1.5]) - x.size(1) / 2


def _round_trip(model, tmp_path, x, name="m.slim"):
    reg = get_registry()
    model.eval()
    want = model(x)
    path = tmp_path / name
    storage.save_model(path, model, reg, info=INFO)
    loaded = storage.load_model(path, reg)
    assert loaded.header["architecture"]["type"] == GRAPH_TYPE
    assert isinstance(loaded.model, fx.GraphModule)
    assert torch.equal(loaded.model(x), want)
    return loaded


def test_mixed_model_round_trips_exactly_and_names_no_user_code(tmp_path):
    torch.manual_seed(0)
    model = Mixed()
    x = torch.randn(5, 1, 8, 8)
    loaded = _round_trip(model, tmp_path, x)
    text = json.dumps(loaded.header)
    assert __name__ not in text and "Gate" not in text and "Mixed" not in text
    # every used parameter and buffer is stored with the model's own name, and the constant fx made
    assert set(loaded.model.state_dict()) == set(model.state_dict()) | {"_tensor_constant0"}
    assert torch.equal(loaded.model._tensor_constant0, torch.tensor([1.5]))
    # the rebuilt model trains: inlined code is fixed to eval mode, modules still switch
    loaded.model.train()
    assert loaded.model.gate.fc1.training
    loaded.model(x).sum().backward()
    assert loaded.model.gate.temperature.grad is not None


def test_zoo_and_builtin_models_keep_the_spec_tree(tmp_path):
    reg = get_registry()
    model = reg.build_model("lenet5", (1, 8, 8), 10)
    storage.save_model(tmp_path / "z.slim", model, reg, info=INFO)
    assert storage.read_header(tmp_path / "z.slim")["architecture"]["type"] == "slimkit.models.lenet.LeNet5"


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_round_trips_and_the_rebuilt_graph_prunes_exactly(name, tmp_path):
    factory, shape = CORPUS[name]
    model, x = prepared(factory(), shape)
    model, x = model.float(), x.float()
    loaded = _round_trip(model, tmp_path, x)
    # filter pruning (slimkit.nn.depgraph) traces the rebuilt GraphModule again
    graph = build_graph(loaded.model, x)
    pruned = remove_channels(loaded.model, graph, random_half(graph), x)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in loaded.model.parameters())
    _round_trip(pruned, tmp_path, x, "pruned.slim")


def test_masked_layers_stay_layers_of_the_graph(tmp_path):
    torch.manual_seed(1)
    model = Mixed()
    to_masked(model)
    with torch.no_grad():
        model.conv.weight_mask[:4] = 0
        model.conv.weight.mul_(model.conv.weight_mask)
    loaded = _round_trip(model, tmp_path, torch.randn(3, 1, 8, 8))
    assert isinstance(loaded.model.conv, MaskedConv2d)
    assert int((loaded.model.conv.weight == 0).sum()) == 4 * 9
    assert loaded.header["tensors"]["conv.weight"]["codec"] == "masked"


def odd_gate(x):
    return x * (x > 0)


torch.fx.wrap("odd_gate")


class Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(odd_gate(torch.flatten(x, 1)))


def test_a_function_off_the_allowlist_is_refused_naming_the_node_before_writing(tmp_path):
    with pytest.raises(UserError) as err:
        storage.save_model(tmp_path / "w.slim", Wrapped(), get_registry(), info=INFO)
    message = str(err.value)
    assert "\n" not in message
    assert "fx node 'odd_gate' (call_function odd_gate)" in message
    assert f"{__name__}.odd_gate" in message and "allowlist" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_compress_refuses_an_unsavable_python_model_before_training(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli("compress", "--model", f"python:{__name__}:Wrapped", "--data", "digits", "--method", "prune",
               "--epochs", "1", "--out", out)
    assert code == 2 and not out.exists()
    assert "fx node 'odd_gate' (call_function odd_gate)" in capsys.readouterr().err


class Branchy(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_an_untraceable_model_is_one_line():
    with pytest.raises(UserError, match="tracing failed") as err:
        storage.save_model("/nonexistent/never.slim", Branchy(), get_registry(), info=INFO)
    assert "\n" not in str(err.value)


def test_allowlist_names_and_resolves_only_its_own_functions():
    assert function_name(torch.cat) == "torch.cat" and resolve_function("torch.cat") is torch.cat
    assert resolve_function(function_name(F.relu)) is F.relu
    assert resolve_function("operator.add") is not None and resolve_function("builtins.getattr") is getattr
    for name in ("builtins.eval", "builtins.exec", "builtins.__import__", "os.system", "torch.load", "torch.save",
                 "torch.from_file", "operator.methodcaller", "operator.call", "torch.manual_seed", "torch.Tensor.apply_",
                 "torch.set_default_dtype", "subprocess.run", "torch.nn.functional.torch", "torch._C",
                 "torch.import_ir_module", "torch.get_file_path", "torch.prepare_multiprocessing_environment"):
        assert resolve_function(name) is None, name
    assert function_name(print) is None and function_name(odd_gate) is None


def _rewrite_header(src, dst, change):
    with safe_open(str(src), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = json.loads(f.metadata()["slimkit"])
    change(header)
    save_file(tensors, str(dst), metadata={"slimkit": json.dumps(header)})


@pytest.mark.parametrize("edit, why", [
    (lambda n: n.update(target="builtins.eval"), "allowlist"),
    (lambda n: n.update(target="os.system"), "allowlist"),
    (lambda n: n.update(op="call_method", target="apply_"), "not an allowed torch.Tensor method"),
    (lambda n: n.update(op="get_attr", target="fc.__class__"), "not a submodule path"),
    (lambda n: n.update(args=[{"node": "later"}]), "before it is defined"),
    (lambda n: n.update(name="import os"), "not a fresh identifier"),
])
def test_a_hostile_graph_is_refused_on_load(tmp_path, edit, why):
    good = tmp_path / "g.slim"
    storage.save_model(good, Mixed(), get_registry(), info=INFO)

    def change(header):
        nodes = header["architecture"]["graph"]["nodes"]
        edit(next(n for n in nodes if n["op"] == "call_function"))

    bad = tmp_path / "bad.slim"
    _rewrite_header(good, bad, change)
    with pytest.raises(UserError, match=why) as err:
        storage.load_model(bad, get_registry())
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_a_graph_attribute_of_another_shape_is_refused_before_loading(tmp_path):
    good, bad = tmp_path / "g.slim", tmp_path / "bad.slim"
    storage.save_model(good, Mixed(), get_registry(), info=INFO)
    _rewrite_header(good, bad, lambda h: h["architecture"]["graph"]["attrs"]["gate.temperature"].update(shape=[7]))
    with pytest.raises(UserError, match="gate.temperature has shape"):
        storage.load_model(bad, get_registry())


MODULE = textwrap.dedent('''
    import operator
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    class SqueezeExcite(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(c, c // 4), nn.Linear(c // 4, c)

        def forward(self, x):
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
            return x * s.view(s.size(0), -1, 1, 1)


    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.se = SqueezeExcite(c)

        def forward(self, x):
            y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(operator.add(self.se(y), x))


    class SENet(nn.Module):
        def __init__(self, input_shape, num_classes):
            super().__init__()
            self.stem = nn.Conv2d(input_shape[0], 16, 3, padding=1)
            self.side = nn.Conv2d(input_shape[0], 8, 1)
            self.blocks = nn.Sequential(Block(24), Block(24))
            self.fc = nn.Linear(24, num_classes)

        def forward(self, x):
            x = torch.cat([F.relu(self.stem(x)), F.relu(self.side(x))], dim=1)
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(x), 1), 1))


    def se_net(input_shape, num_classes):
        return SENet(input_shape, num_classes)
''')


def _json(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["prune", "filter-prune"])
def test_cli_user_model_without_plugin_saves_and_evaluates_in_a_fresh_process(tmp_path, method):
    site = tmp_path / "site"
    site.mkdir()
    (site / "my_senet_models.py").write_text(MODULE)
    out = tmp_path / "out"
    env = {"PYTHONPATH": os.pathsep.join([*filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)), str(site)])}
    run = run_slimkit("compress", "--model", "python:my_senet_models:se_net", "--data", "digits", "--method", method,
                      "--epochs", "1", "--quiet", "--out", out, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "report.json").read_text())
    model = out / "model.slim"
    assert storage.read_header(model)["architecture"]["type"] == GRAPH_TYPE
    # the module is gone: the fresh processes cannot import it
    (site / "my_senet_models.py").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evaluated = _json(run_slimkit("evaluate", model, "--json", cwd=elsewhere))
    assert evaluated["accuracy"] == report["final"]["accuracy"]
    info = _json(run_slimkit("info", model, "--json", cwd=elsewhere))
    assert info["params"] == report["final"]["params"] and info["integrity"].startswith("crc32")
    chained = tmp_path / "chained"
    again = run_slimkit("compress", "--model", model, "--data", "digits", "--method",
                        "filter-prune" if method == "prune" else "prune", "--epochs", "1", "--quiet",
                        "--out", chained, cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    chained_report = json.loads((chained / "report.json").read_text())
    assert _json(run_slimkit("evaluate", chained / "model.slim", "--json", cwd=elsewhere))["accuracy"] == \
        chained_report["final"]["accuracy"]
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    exported = run_slimkit("export", model, "--format", "onnx", "--out", tmp_path / "m.onnx", "--json", cwd=elsewhere)
    assert _json(exported)["max_abs_diff"] < 1e-4
