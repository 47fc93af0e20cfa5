"""library/host_layout.py: its DOCUMENTATION options, down to every suboption, are its
ARGUMENT_SPEC; its EXAMPLES use only options it has; its RETURN covers what apply_layout returns;
each O(...) reference names a real option. (tests/unit/core/test_module_docs.py checks every
module's top level; host_layout's options are lists of dicts, so this walks the suboptions.)"""

from __future__ import annotations

import os
import re
import runpy

import pytest
import yaml
from provisiontest_helpers import FakeRun
from runnerkeep.provision import layout
from runnerkeep.provision.layout import apply_layout

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MODULE = os.path.join(ROOT, "library", "host_layout.py")
COMPARED = ("type", "elements", "choices")


@pytest.fixture(scope="module")
def module():
    # Imports ansible.module_utils.basic only; the core import fails here and is only recorded
    # (IMPORT_ERROR), so nothing of the module runs.
    return runpy.run_path(MODULE, run_name="host_layout_docs_probe")


def mismatches(doc: dict, spec: dict, where: str = "") -> list[str]:
    """Every difference between documented options and an argument_spec, suboptions included."""
    problems = []
    for name in sorted(set(spec) - set(doc)):
        problems.append(f"{where}{name}: in ARGUMENT_SPEC, not documented")
    for name in sorted(set(doc) - set(spec)):
        problems.append(f"{where}{name}: documented, not in ARGUMENT_SPEC")
    for name in sorted(set(doc) & set(spec)):
        problems += _one(doc[name], spec[name], f"{where}{name}")
    return problems


def _one(doc: dict, spec: dict, where: str) -> list[str]:
    problems = []
    if not doc.get("description"):
        problems.append(f"{where}: no description")
    if "type" not in spec:
        problems.append(f"{where}: ARGUMENT_SPEC gives no type")
    for key in COMPARED:
        if doc.get(key) != spec.get(key):
            problems.append(f"{where}: {key} doc {doc.get(key)!r}, spec {spec.get(key)!r}")
    if bool(doc.get("required")) != bool(spec.get("required")):
        problems.append(
            f"{where}: required doc {doc.get('required')!r}, spec {spec.get('required')!r}"
        )
    if ("default" in doc) != (spec.get("default") is not None) or doc.get("default") != spec.get(
        "default"
    ):
        problems.append(
            f"{where}: default doc {doc.get('default')!r}, spec {spec.get('default')!r}"
        )
    if ("suboptions" in doc) != ("options" in spec):
        problems.append(f"{where}: suboptions documented {'suboptions' in doc}, spec has options")
    elif "options" in spec:
        problems += mismatches(doc["suboptions"], spec["options"], f"{where}[].")
    return problems


def unknown_example_options(args: dict, spec: dict, where: str = "") -> list[str]:
    problems = []
    for name, value in (args or {}).items():
        if name not in spec:
            problems.append(f"{where}{name}")
        elif "options" in spec[name] and isinstance(value, list):
            for item in value:
                problems += unknown_example_options(item, spec[name]["options"], f"{name}[].")
    return problems


def option_exists(reference: str, spec: dict) -> bool:
    """O(files[].systemd) names suboption systemd of option files."""
    options = spec
    for part in reference.split("."):
        name = part[:-2] if part.endswith("[]") else part
        if name not in options:
            return False
        options = options[name].get("options") or {}
    return True


def test_main_hands_ansible_module_the_argument_spec():
    with open(MODULE, encoding="utf-8") as handle:
        source = handle.read()
    assert "AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)" in source


def test_documented_options_are_the_argument_spec_down_to_every_suboption(module):
    doc = yaml.safe_load(module["DOCUMENTATION"])
    assert doc["module"] == "host_layout"
    assert mismatches(doc["options"], module["ARGUMENT_SPEC"]) == []


def test_a_secret_files_content_is_never_logged_and_a_files_content_is(module):
    # Not a doc key: ansible-doc has no no_log, so the spec alone is checked.
    spec = module["ARGUMENT_SPEC"]
    assert spec["secret_files"]["options"]["content"]["no_log"] is True
    assert spec["files"]["options"]["content"]["no_log"] is False


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["files"]["suboptions"].pop("systemd"), "files[].systemd: in ARGUMENT_SPEC"),
        (lambda d: d["units"]["suboptions"]["state"].update(choices=["started"]), "units[].state"),
        (lambda d: d["users"]["suboptions"]["shell"].update(default="/bin/sh"), "users[].shell"),
        (lambda d: d["lines"]["suboptions"]["lines"].pop("required"), "lines[].lines: required"),
        (lambda d: d["absent"].update(elements="str"), "absent: elements"),
        (lambda d: d["reclaim"].pop("suboptions"), "reclaim: suboptions"),
        (lambda d: d.update(extra={"description": "x", "type": "str"}), "extra: documented"),
    ],
)
def test_the_comparison_fails_on_a_wrong_doc(module, change, expected):
    doc = yaml.safe_load(module["DOCUMENTATION"])["options"]
    change(doc)
    problems = mismatches(doc, module["ARGUMENT_SPEC"])
    assert any(p.startswith(expected) for p in problems), problems


def test_examples_use_only_options_the_module_has(module):
    spec = module["ARGUMENT_SPEC"]
    tasks = yaml.safe_load(module["EXAMPLES"])
    calls = [
        t["runnerkeep.runner.host_layout"] for t in tasks if "runnerkeep.runner.host_layout" in t
    ]
    assert calls
    for args in calls:
        assert unknown_example_options(args, spec) == []
    assert unknown_example_options({"files": [{"path": "/x", "owner_id": 0}]}, spec) == [
        "files[].owner_id"
    ]


def test_every_option_reference_names_an_option(module):
    spec = module["ARGUMENT_SPEC"]
    texts = module["DOCUMENTATION"] + module["RETURN"]
    references = re.findall(r"\bO\(([^)=]+)(?:=[^)]*)?\)", texts)
    assert "files[].systemd" in references
    assert [r for r in references if not option_exists(r, spec)] == []
    assert not option_exists("files[].nope", spec)


def test_return_documents_what_apply_layout_returns(module, monkeypatch, tmp_path):
    monkeypatch.setattr(layout, "systemd_runs", lambda: False)
    monkeypatch.setattr(layout, "LOCK_PATH", str(tmp_path / "host-layout.lock"))
    result = apply_layout({}, True, False, FakeRun())
    documented = set(yaml.safe_load(module["RETURN"]))
    # changed and diff are Ansible's own return values.
    assert set(result) - {"changed", "diff"} <= documented
    assert documented <= set(result)
