"""The Ansible modules' DOCUMENTATION matches their argument_spec; RETURN and EXAMPLES parse."""

from __future__ import annotations

import ast
import os

import pytest
from runnerkeep.module_frame import COMMON_OPTIONS

yaml = pytest.importorskip("yaml")

LIBRARY = os.path.join(os.path.dirname(__file__), "..", "..", "..", "library")


def _module_parts(name):
    with open(os.path.join(LIBRARY, f"{name}.py"), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    strings = {}
    spec = None
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in ("DOCUMENTATION", "EXAMPLES", "RETURN")
        ):
            strings[node.targets[0].id] = node.value.value
        if isinstance(node, ast.keyword) and node.arg == "argument_spec":
            spec = {
                kw.arg: {k.arg: ast.literal_eval(k.value) for k in call.keywords}
                for kw, call in zip(node.value.keywords, (k.value for k in node.value.keywords))
            }
            # module_frame.module_options(...) adds the options every module shares.
            if getattr(node.value.func, "id", None) == "module_options":
                spec.update(COMMON_OPTIONS)
        if isinstance(node, ast.keyword) and node.arg == "supports_check_mode":
            strings["check_mode"] = ast.literal_eval(node.value)
    return strings, spec


@pytest.mark.parametrize("name", ["disk_facts", "disk_budget"])
def test_documentation_matches_argument_spec(name):
    strings, spec = _module_parts(name)
    doc = yaml.safe_load(strings["DOCUMENTATION"])
    assert doc["module"] == name
    options = doc["options"]
    assert set(options) == set(spec)
    for option, settings in spec.items():
        assert options[option]["type"] == settings["type"], option
        if "default" in settings:
            assert options[option].get("default") == settings["default"], option
        else:
            assert "default" not in options[option], option
    assert strings["check_mode"] is True
    examples = yaml.safe_load(strings["EXAMPLES"])
    assert any(f"runnerkeep.runner.{name}" in task for task in examples)
    returned = yaml.safe_load(strings["RETURN"])
    assert returned
