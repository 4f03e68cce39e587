"""slimkit.api: the options every method has (epochs, lr), declared once by the engine."""
import json
import re

import pytest

from slimkit.api import COMMON_OPTIONS, Method, Option
from slimkit.errors import UserError
from slimkit.pipeline import assign_options
from slimkit.plugins import get_registry

from conftest import cli

COMMON = [o.name for o in COMMON_OPTIONS]


class Bare(Method):
    """A third-party method that declares nothing about training."""

    name = "bare"
    options = [Option("factor", float, 0.5, "scale", min=0.0, max=1.0)]


class OwnRate(Method):
    name = "own-rate"
    common_defaults = {"lr": 5e-4}


class OwnEpochs(Method):
    name = "own-epochs"
    options = [Option("epochs", int, 3, "epochs of this method's own schedule", min=1)]


def test_common_options_are_declared_once_and_every_method_gets_them():
    assert COMMON == ["epochs", "lr"]
    assert [o.name for o in Bare.all_options()] == ["factor", "epochs", "lr"]
    opts = Bare().parse_options({})
    assert opts == {"factor": 0.5, "epochs": None, "lr": None}  # None: the run's value
    assert Bare().parse_options({"epochs": "4", "lr": "0.01"}) == {"factor": 0.5, "epochs": 4, "lr": 0.01}
    # validated like the method's own options, with the method's name in the message
    with pytest.raises(UserError, match=r"option bare\.epochs='-1' is out of range: expected an int >= 0"):
        Bare().parse_options({"epochs": "-1"})
    with pytest.raises(UserError, match=r"option bare\.lr='fast' is invalid: expected a float >= 0.0"):
        Bare().parse_options({"lr": "fast"})
    with pytest.raises(UserError, match="its options are: epochs, factor, lr"):
        Bare().parse_options({"epoch": 2})


def test_a_method_gives_a_common_option_its_own_default_or_declaration():
    assert OwnRate().parse_options({}) == {"epochs": None, "lr": 5e-4}
    rate = next(o for o in OwnRate().describe()["options"] if o["name"] == "lr")
    assert rate["default"] == 5e-4 and rate["common"] and "unset" not in rate["help"]
    assert COMMON_OPTIONS[1].default is None  # the engine's declaration is not changed by a method
    # a method that declares one itself keeps its declaration (and its bounds)
    assert OwnEpochs().parse_options({}) == {"epochs": 3, "lr": None}
    with pytest.raises(UserError, match="out of range"):
        OwnEpochs().parse_options({"epochs": 0})
    rows = {o["name"]: o["common"] for o in OwnEpochs().describe()["options"]}
    assert rows == {"epochs": False, "lr": True}
    with pytest.raises(TypeError, match="common_defaults names no common option: epoch"):
        type("Typo", (Method,), {"name": "typo", "common_defaults": {"epoch": 2}})


def test_set_routes_a_common_option_of_a_one_method_chain_and_refuses_an_ambiguous_one():
    registry = get_registry()
    assert assign_options(["lowrank"], registry, [("epochs", "2")]) == {"lowrank": {"epochs": "2"}}
    with pytest.raises(UserError, match="ambiguous: prune, quantize all have 'lr'"):
        assign_options(["prune", "quantize"], registry, [("lr", "0.1")])
    assert assign_options(["prune", "quantize"], registry, [("quantize.lr", "0.1")])["quantize"] == {"lr": "0.1"}


def test_methods_lists_the_common_options_for_every_method(capsys):
    assert cli("methods", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) >= 8
    for row in rows:
        common = [o["name"] for o in row["options"] if o["common"]]
        names = [o["name"] for o in row["options"]]
        assert set(COMMON) <= set(names), row["name"]
        if row["name"] != "filter-prune":  # still declares its own epochs/lr (being rewritten elsewhere)
            assert common == COMMON and names[-2:] == COMMON, row["name"]
    sws = next(r for r in rows if r["name"] == "sws")
    assert next(o for o in sws["options"] if o["name"] == "lr")["default"] == 5e-4
    assert cli("methods") == 0
    text = capsys.readouterr().out
    assert len(re.findall(r"^\s+epochs\s", text, re.M)) == len(re.findall(r"^\s+lr\s", text, re.M)) == len(rows)
