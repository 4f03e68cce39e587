"""Every recipe the README and docs name exists and parses, with options its methods accept;
recipes/lenet300-prune.toml is the default compress job written out."""
import dataclasses
import re

import pytest

from conftest import REPO
from slimkit.cli import _read_recipe
from slimkit.pipeline import RunConfig
from slimkit.plugins import get_registry
from slimkit.sweep import expand, read_grid

CITED = re.compile(r"recipes/[\w.-]+\.toml")


def cited_recipes() -> list[str]:
    texts = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    return sorted({name for path in texts for name in CITED.findall(path.read_text())})


def test_the_docs_cite_recipes():
    assert "recipes/lenet300-prune.toml" in cited_recipes()


@pytest.mark.parametrize("name", sorted(set(cited_recipes()) | {f"recipes/{p.name}"
                                                                   for p in (REPO / "recipes").glob("*.toml")}))
def test_every_cited_recipe_exists_and_parses(name):
    path = REPO / name
    assert path.is_file(), f"{name} is cited but does not exist"
    registry = get_registry()
    if "methods" in path.read_text() and "[[stage]]" not in path.read_text():  # a sweep grid
        assert expand(read_grid(path))
        return
    recipe = _read_recipe(path)
    assert recipe["stage"], f"{name} has no [[stage]]"
    for stage in recipe["stage"]:
        options = {k: v for k, v in stage.items() if k != "method"}
        registry.method(stage["method"]).parse_options(options)  # raises on an unknown key or bad value


def test_lenet300_prune_recipe_is_the_default_job():
    recipe = _read_recipe(REPO / "recipes" / "lenet300-prune.toml")
    defaults = RunConfig()
    for key, value in recipe.items():
        if key == "stage":
            continue
        expected = "runs/lenet300-prune" if key == "out" else getattr(defaults, key)  # the CLI's default --out
        assert value == expected, key
    assert [s["method"] for s in recipe["stage"]] == defaults.methods == ["prune"]
    prune = get_registry().method("prune")
    stage = {k: v for k, v in recipe["stage"][0].items() if k != "method"}
    assert prune.parse_options(stage) == prune.parse_options({})  # every option at its default
    assert {f.name for f in dataclasses.fields(RunConfig)} >= set(recipe) - {"stage"}
