"""Every Ansible module's docs are sound (library/*.py, at least the four of issue 11):
DOCUMENTATION, EXAMPLES and RETURN parse, the documented options are exactly the argument_spec
main() passes to AnsibleModule, the modern attributes block is there and honest, authors have
Ansible's form, examples use the FQCN, and ansible-doc itself accepts each module.

The argument_spec is not copied from the source text: a child process imports the module (with
`ansible.module_utils.runnerkeep` mapped to this repository's core, as the other module tests do),
replaces AnsibleModule with a recorder that stops at once, and calls main(). So the spec compared
is the very one main() uses, and nothing of the module runs past AnsibleModule().
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LIBRARY = os.path.join(ROOT, "library")
MODULES = sorted(n[:-3] for n in os.listdir(LIBRARY) if n.endswith(".py"))
FQCN_PREFIX = "runnerkeep.runner."

SUPPORT_LEVELS = {"full", "partial", "none", "N/A"}
AUTHOR = re.compile(r"^.+ \(@[A-Za-z0-9-]+\)$")
# The types validate-modules accepts for module options and return values.
OPTION_TYPES = {"bits", "bool", "bytes", "dict", "float", "int", "json", "jsonarg", "list"}
OPTION_TYPES |= {"path", "raw", "sid", "str"}
RETURN_TYPES = OPTION_TYPES | {"complex"}
# validate-modules asks for an explicit no_log on options whose names look secret.
SECRET_NAME = re.compile(r"(?:pass(?!ive)|secret|token|key)", re.I)
SPEC_KEYS = {"type", "default", "choices", "required", "elements", "aliases", "no_log", "options"}
DOC_OPTION_KEYS = {"description", "type", "default", "choices", "required", "elements"}
DOC_OPTION_KEYS |= {"aliases", "version_added", "suboptions"}

# Runs in a child: map the core under ansible.module_utils, import the module without running
# it, and record what main() gives AnsibleModule. Prints one JSON line.
RECORDER = """
import importlib, json, pkgutil, runpy, sys
import ansible.module_utils
import runnerkeep
# The whole core, so every module maps onto one copy of it, whatever it imports.
for found in pkgutil.walk_packages(runnerkeep.__path__, "runnerkeep."):
    importlib.import_module(found.name)
for name, mod in list(sys.modules.items()):
    if name == "runnerkeep" or name.startswith("runnerkeep."):
        sys.modules["ansible.module_utils." + name] = mod
ansible.module_utils.runnerkeep = runnerkeep
namespace = runpy.run_path(sys.argv[1], run_name="runnerkeep_docs_probe")

class Stop(Exception):
    pass

calls = []

def recorder(**kwargs):
    calls.append(kwargs)
    raise Stop()

namespace["main"].__globals__["AnsibleModule"] = recorder
try:
    namespace["main"]()
except Stop:
    pass
print(json.dumps({
    "import_error": namespace.get("IMPORT_ERROR"),
    "calls": calls,
    "DOCUMENTATION": namespace.get("DOCUMENTATION"),
    "EXAMPLES": namespace.get("EXAMPLES"),
    "RETURN": namespace.get("RETURN"),
}))
"""

_PROBES: dict[str, dict] = {}


def probe(name: str) -> dict:
    """The module's doc strings and the keyword arguments its main() gives AnsibleModule."""
    if name not in _PROBES:
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "module_utils"))
        done = subprocess.run(
            [sys.executable, "-c", RECORDER, os.path.join(LIBRARY, f"{name}.py")],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        _PROBES[name] = json.loads(done.stdout)
    return _PROBES[name]


def documentation(name: str) -> dict:
    return yaml.safe_load(probe(name)["DOCUMENTATION"])


def argument_spec(name: str) -> dict:
    calls = probe(name)["calls"]
    assert len(calls) == 1, f"{name}: main() must build one AnsibleModule first, got {calls}"
    return calls[0]["argument_spec"]


# --- the checks, as functions of plain data so the tests below can prove each one fails -------


def option_mismatches(doc_options: dict, spec: dict) -> list[str]:
    """Every difference between the documented options and the argument_spec."""
    problems = []
    doc_options = doc_options or {}
    for missing in sorted(set(spec) - set(doc_options)):
        problems.append(f"{missing}: in argument_spec, not documented")
    for extra in sorted(set(doc_options) - set(spec)):
        problems.append(f"{extra}: documented, not in argument_spec")
    for name in sorted(set(spec) & set(doc_options)):
        problems += [f"{name}: {p}" for p in _one_option(doc_options[name], spec[name], name)]
    return problems


def _one_option(doc: dict, spec: dict, name: str) -> list[str]:
    problems = []
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        problems.append(f"argument_spec keys this test does not compare: {sorted(unknown)}")
    if set(doc) - DOC_OPTION_KEYS:
        problems.append(f"unexpected doc keys {sorted(set(doc) - DOC_OPTION_KEYS)}")
    if not doc.get("description"):
        problems.append("no description")
    # Ansible's default type is str; both sides must say it, so a reader never guesses.
    if "type" not in spec or doc.get("type") != spec["type"]:
        problems.append(f"type: doc {doc.get('type')!r}, spec {spec.get('type')!r}")
    if doc.get("type") not in OPTION_TYPES:
        problems.append(f"type {doc.get('type')!r} is not an option type")
    if (spec.get("default") is not None) != ("default" in doc) or doc.get("default") != spec.get(
        "default"
    ):
        problems.append(f"default: doc {doc.get('default')!r}, spec {spec.get('default')!r}")
    if doc.get("choices") != spec.get("choices"):
        problems.append(f"choices: doc {doc.get('choices')!r}, spec {spec.get('choices')!r}")
    if bool(doc.get("required", False)) != bool(spec.get("required", False)):
        problems.append(f"required: doc {doc.get('required')!r}, spec {spec.get('required')!r}")
    if doc.get("elements") != spec.get("elements"):
        problems.append(f"elements: doc {doc.get('elements')!r}, spec {spec.get('elements')!r}")
    if (spec.get("type") == "list") != ("elements" in spec):
        problems.append("a list option needs elements (and only a list option has them)")
    if sorted(doc.get("aliases") or []) != sorted(spec.get("aliases") or []):
        problems.append(f"aliases: doc {doc.get('aliases')!r}, spec {spec.get('aliases')!r}")
    secret_looking = [n for n in [name, *(spec.get("aliases") or [])] if SECRET_NAME.search(n)]
    if secret_looking and not isinstance(spec.get("no_log"), bool):
        problems.append("name looks secret: argument_spec must set no_log to true or false")
    if "no_log" in spec and not isinstance(spec["no_log"], bool):
        problems.append(f"no_log must be a bool, got {spec['no_log']!r}")
    # The options of a list of dicts (or a dict) are documented as its suboptions.
    if ("options" in spec) != ("suboptions" in doc):
        problems.append("options in argument_spec need suboptions in the doc (and only they)")
    elif "options" in spec:
        problems += option_mismatches(doc["suboptions"], spec["options"])
    return problems


def attribute_problems(doc: dict, supports_check_mode: bool, source: str) -> list[str]:
    """The attributes block: check_mode, diff_mode, platform, valid and consistent with the code."""
    attributes = doc.get("attributes") or {}
    problems = []
    for name in ("check_mode", "diff_mode", "platform"):
        if name not in attributes:
            problems.append(f"attributes.{name} missing")
    for name, body in attributes.items():
        if not isinstance(body, dict) or not body.get("description"):
            problems.append(f"attributes.{name}: no description")
            continue
        if body.get("support") not in SUPPORT_LEVELS:
            problems.append(f"attributes.{name}: support {body.get('support')!r} is not valid")
    platform = attributes.get("platform") or {}
    if platform.get("platforms") != "posix":
        problems.append(f"attributes.platform.platforms: {platform.get('platforms')!r}, not posix")
    check = (attributes.get("check_mode") or {}).get("support")
    if (check in ("full", "partial")) != supports_check_mode:
        problems.append(f"check_mode support {check!r}, supports_check_mode={supports_check_mode}")
    diff = (attributes.get("diff_mode") or {}).get("support")
    # A module that returns a diff reads module._diff; one that says it does not, never does.
    if (diff in ("full", "partial")) != ("module._diff" in source):
        problems.append(f"diff_mode support {diff!r}, but the code's diff says otherwise")
    return problems


def author_problems(doc: dict) -> list[str]:
    authors = doc.get("author")
    authors = [authors] if isinstance(authors, str) else authors or []
    if not authors:
        return ["no author"]
    return [f"author {a!r} is not 'Name (@handle)'" for a in authors if not AUTHOR.match(str(a))]


def example_problems(examples, name: str, known_options: set[str]) -> list[str]:
    """EXAMPLES: a task list that calls the module by FQCN with options it has."""
    if not isinstance(examples, list) or not examples:
        return ["EXAMPLES is not a non-empty list of tasks"]
    problems = []
    used = 0
    for task in examples:
        if not isinstance(task, dict) or not task.get("name"):
            problems.append(f"not a named task: {task!r}")
            continue
        if name in task:
            problems.append(f"task {task['name']!r} calls {name} without the FQCN")
        for key, args in task.items():
            if not key.startswith(FQCN_PREFIX):
                continue
            if key != FQCN_PREFIX + name:
                problems.append(f"task {task['name']!r} calls another module, {key}")
                continue
            used += 1
            for option in sorted(set(args or {}) - known_options):
                problems.append(f"task {task['name']!r} uses unknown option {option!r}")
    if not used:
        problems.append(f"no example calls {FQCN_PREFIX}{name}")
    return problems


def return_problems(returned, path: str = "") -> list[str]:
    """RETURN: each value has a description, a type ansible-doc accepts and 'returned'."""
    if not isinstance(returned, dict) or not returned:
        return [f"{path or 'RETURN'}: not a non-empty mapping"]
    problems = []
    for key, body in returned.items():
        where = f"{path}{key}"
        if not isinstance(body, dict):
            problems.append(f"{where}: not a mapping")
            continue
        if not body.get("description"):
            problems.append(f"{where}: no description")
        if not body.get("returned"):
            problems.append(f"{where}: no 'returned'")
        if body.get("type") not in RETURN_TYPES:
            problems.append(f"{where}: type {body.get('type')!r} is not a return type")
        if "elements" in body and body.get("type") != "list":
            problems.append(f"{where}: elements on a {body.get('type')!r}")
        if "elements" in body and body["elements"] not in RETURN_TYPES:
            problems.append(f"{where}: elements {body['elements']!r} is not a return type")
        if "contains" in body:
            problems += return_problems(body["contains"], where + ".")
    return problems


MARKUP = re.compile(r"\b(O|RV)\(([^)=]+)(?:=[^)]*)?\)")


def markup_problems(texts: str, options: set[str], returned: dict) -> list[str]:
    """O(x) names an option, RV(x) a return value: ansible-doc links them."""
    problems = []
    for kind, target in MARKUP.findall(texts):
        first = target.split(".")[0].split("[")[0]
        if kind == "O" and first not in options:
            problems.append(f"O({target}) names no option")
        if kind == "RV" and first not in returned:
            problems.append(f"RV({target}) names no return value")
    return problems


# --- the modules ------------------------------------------------------------------------------


def test_every_module_of_the_library_is_checked():
    assert {"runner_cleanup", "image_cache", "disk_budget", "disk_facts"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_the_module_imports_its_core_and_builds_ansible_module_first(name):
    assert probe(name)["import_error"] is None
    call = probe(name)["calls"]
    assert len(call) == 1
    assert call[0]["supports_check_mode"] is True


@pytest.mark.parametrize("name", MODULES)
def test_documentation_examples_and_return_are_yaml(name):
    for part in ("DOCUMENTATION", "EXAMPLES", "RETURN"):
        text = probe(name)[part]
        assert isinstance(text, str) and text.strip(), part
        assert yaml.safe_load(text), part
    assert documentation(name)["module"] == name


@pytest.mark.parametrize("name", MODULES)
def test_documented_options_are_the_argument_spec(name):
    assert option_mismatches(documentation(name).get("options"), argument_spec(name)) == []


@pytest.mark.parametrize("name", MODULES)
def test_attributes_are_there_and_match_the_code(name):
    with open(os.path.join(LIBRARY, f"{name}.py"), encoding="utf-8") as handle:
        source = handle.read()
    supports = probe(name)["calls"][0].get("supports_check_mode", False)
    assert attribute_problems(documentation(name), supports, source) == []


@pytest.mark.parametrize("name", MODULES)
def test_authors_have_the_ansible_form(name):
    assert author_problems(documentation(name)) == []


@pytest.mark.parametrize("name", MODULES)
def test_examples_are_tasks_calling_the_module_by_fqcn(name):
    spec = argument_spec(name)
    known = set(spec) | {alias for body in spec.values() for alias in body.get("aliases") or []}
    examples = yaml.safe_load(probe(name)["EXAMPLES"])
    assert example_problems(examples, name, known) == []


@pytest.mark.parametrize("name", MODULES)
def test_return_values_have_accepted_types(name):
    assert return_problems(yaml.safe_load(probe(name)["RETURN"])) == []


@pytest.mark.parametrize("name", MODULES)
def test_option_and_return_value_references_resolve(name):
    returned = yaml.safe_load(probe(name)["RETURN"])
    texts = probe(name)["DOCUMENTATION"] + probe(name)["RETURN"]
    assert markup_problems(texts, set(argument_spec(name)), returned) == []


# The modules that read the host's config (fleet_report runs on the controller and reads none).
HOST_MODULES = ("runner_cleanup", "image_cache", "disk_budget", "disk_facts")


def common_option_problems(specs: dict, docs: dict, common: dict) -> list[str]:
    """Each module takes the frame's common options as the frame defines them, and documents
    each the same way as the others (a reader of one module's docs knows the others')."""
    problems = []
    for option, settings in common.items():
        for name, spec in specs.items():
            if spec.get(option) != settings:
                problems.append(f"{name}: {option} is {spec.get(option)!r}, not the frame's")
        texts = {name: json.dumps(doc.get(option), sort_keys=True) for name, doc in docs.items()}
        if len(set(texts.values())) > 1:
            problems.append(f"{option} is documented differently: {sorted(texts)}")
    return problems


def test_the_host_modules_share_the_frames_common_options():
    from runnerkeep.module_frame import COMMON_OPTIONS

    specs = {name: argument_spec(name) for name in HOST_MODULES}
    docs = {name: documentation(name)["options"] for name in HOST_MODULES}
    assert common_option_problems(specs, docs, COMMON_OPTIONS) == []


def test_the_common_option_check_fails_on_a_stray_copy():
    common = {"config_file": {"type": "path"}}
    doc = {"config_file": {"description": "The config.", "type": "path"}}
    other = {"config_file": {"description": "Another text.", "type": "path"}}
    specs = {"a": dict(common), "b": {"config_file": {"type": "str"}}}
    problems = common_option_problems(specs, {"a": doc, "b": other}, common)
    assert problems == [
        "b: config_file is {'type': 'str'}, not the frame's",
        "config_file is documented differently: ['a', 'b']",
    ]


def ansible_doc() -> str:
    """ansible-doc of the running interpreter's environment (the unit session installs it)."""
    beside = os.path.join(os.path.dirname(sys.executable), "ansible-doc")
    found = beside if os.access(beside, os.X_OK) else shutil.which("ansible-doc")
    assert found, "ansible-doc not found beside the interpreter or on PATH: install ansible-core"
    return found


@pytest.mark.parametrize("name", MODULES)
def test_ansible_doc_accepts_the_module(name, tmp_path):
    # An empty config of its own: neither the repo's ansible.cfg nor the user's takes part.
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    env = dict(os.environ, ANSIBLE_HOME=str(tmp_path), ANSIBLE_CONFIG=str(tmp_path / "ansible.cfg"))
    env.pop("ANSIBLE_LIBRARY", None)
    done = subprocess.run(
        [ansible_doc(), "-M", LIBRARY, name, "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "[WARNING]" not in done.stderr and "[ERROR]" not in done.stderr, done.stderr
    shown = json.loads(done.stdout)[name]
    assert shown["doc"]["module"] == name
    assert set(shown["doc"]["options"]) == set(argument_spec(name))
    assert {"check_mode", "diff_mode", "platform"} <= set(shown["doc"]["attributes"])
    assert shown["return"], "ansible-doc shows no return values"


# --- each check fails on a bad doc -------------------------------------------------------------

GOOD_SPEC = {
    "state": {"type": "str", "default": "on", "choices": ["on", "off"]},
    "paths": {"type": "list", "elements": "path", "aliases": ["path"]},
    "key": {"type": "str", "no_log": False},
    "name": {"type": "str", "required": True},
}
GOOD_OPTIONS = {
    "state": {"description": "d", "type": "str", "default": "on", "choices": ["on", "off"]},
    "paths": {"description": "d", "type": "list", "elements": "path", "aliases": ["path"]},
    "key": {"description": "d", "type": "str"},
    "name": {"description": "d", "type": "str", "required": True},
}


def test_the_option_check_passes_a_matching_pair():
    assert option_mismatches(GOOD_OPTIONS, GOOD_SPEC) == []


@pytest.mark.parametrize(
    ("option", "change", "expected"),
    [
        ("state", {"type": "int"}, "state: type"),
        ("state", {"default": "off"}, "state: default"),
        ("state", {"default": None}, "state: default"),
        ("state", {"choices": ["on"]}, "state: choices"),
        ("name", {"required": False}, "name: required"),
        ("paths", {"elements": "str"}, "paths: elements"),
        ("paths", {"aliases": []}, "paths: aliases"),
        ("key", {"description": ""}, "key: no description"),
        ("key", {"type": "string"}, "key: type"),
        ("key", {"sub_options": {}}, "key: unexpected doc keys"),
        ("key", {"suboptions": {}}, "key: options in argument_spec need suboptions"),
    ],
)
def test_the_option_check_fails_on_a_bad_doc(option, change, expected):
    options = {k: dict(v) for k, v in GOOD_OPTIONS.items()}
    options[option].update(change)
    options[option] = {k: v for k, v in options[option].items() if v is not None}
    assert any(p.startswith(expected) for p in option_mismatches(options, GOOD_SPEC))


@pytest.mark.parametrize(
    ("option", "change", "expected"),
    [
        ("key", {"no_log": None}, "key: name looks secret"),
        ("key", {"no_log": "no"}, "key: no_log must be a bool"),
        ("paths", {"elements": None}, "paths: a list option needs elements"),
        ("state", {"type": None}, "state: type"),
        ("name", {"fallback": (None, [])}, "name: argument_spec keys"),
    ],
)
def test_the_option_check_fails_on_a_spec_the_doc_cannot_vouch_for(option, change, expected):
    spec = {k: dict(v) for k, v in GOOD_SPEC.items()}
    spec[option].update(change)
    spec[option] = {k: v for k, v in spec[option].items() if v is not None}
    assert any(p.startswith(expected) for p in option_mismatches(GOOD_OPTIONS, spec))


def test_the_option_check_fails_on_a_missing_or_extra_option():
    options = dict(GOOD_OPTIONS)
    del options["key"]
    options["other"] = {"description": "d", "type": "str"}
    problems = option_mismatches(options, GOOD_SPEC)
    assert "key: in argument_spec, not documented" in problems
    assert "other: documented, not in argument_spec" in problems


GOOD_ATTRIBUTES = {
    "attributes": {
        "check_mode": {"description": "d", "support": "full"},
        "diff_mode": {"description": "d", "support": "none"},
        "platform": {"description": "d", "support": "full", "platforms": "posix"},
    }
}


def test_the_attribute_check_passes_a_sound_block():
    assert attribute_problems(GOOD_ATTRIBUTES, True, "no diff here") == []


@pytest.mark.parametrize(
    ("attribute", "change", "supports", "source", "expected"),
    [
        ("check_mode", None, True, "", "attributes.check_mode missing"),
        ("platform", None, True, "", "attributes.platform missing"),
        ("diff_mode", {"support": "yes"}, True, "", "attributes.diff_mode: support"),
        ("diff_mode", {"description": ""}, True, "", "attributes.diff_mode: no description"),
        ("platform", {"platforms": "windows"}, True, "", "attributes.platform.platforms"),
        ("check_mode", {}, False, "", "check_mode support 'full'"),
        ("check_mode", {"support": "none"}, True, "", "check_mode support 'none'"),
        ("diff_mode", {}, True, "if module._diff:", "diff_mode support 'none'"),
        ("diff_mode", {"support": "full"}, True, "", "diff_mode support 'full'"),
    ],
)
def test_the_attribute_check_fails_on_a_bad_block(attribute, change, supports, source, expected):
    doc = {"attributes": {k: dict(v) for k, v in GOOD_ATTRIBUTES["attributes"].items()}}
    if change is None:
        del doc["attributes"][attribute]
    else:
        doc["attributes"][attribute].update(change)
    assert any(p.startswith(expected) for p in attribute_problems(doc, supports, source))


@pytest.mark.parametrize(
    "author", ["runnerkeep contributors", "Jane Doe", "Jane Doe (@)", "(@jane)", "Jane (@jane.doe)"]
)
def test_the_author_check_fails_on_a_bad_author(author):
    assert author_problems({"author": author})
    assert author_problems({"author": ["Jane Doe (@jane-doe)", author]})
    assert author_problems({"author": ["Jane Doe (@jane-doe)"]}) == []
    assert author_problems({"author": []}) == ["no author"]


@pytest.mark.parametrize(
    ("examples", "expected"),
    [
        ("- name: x\n  disk_facts:\n", "task 'x' calls disk_facts without the FQCN"),
        ("- name: x\n  runnerkeep.runner.disk_budget:\n", "task 'x' calls another module"),
        ("- name: x\n  runnerkeep.runner.disk_facts:\n    nope: 1\n", "task 'x' uses unknown"),
        ("- runnerkeep.runner.disk_facts:\n", "not a named task"),
        ("- name: x\n  ansible.builtin.debug:\n", "no example calls"),
        ("disk_facts: {}\n", "EXAMPLES is not"),
    ],
)
def test_the_example_check_fails_on_bad_examples(examples, expected):
    problems = example_problems(yaml.safe_load(examples), "disk_facts", {"disk"})
    assert any(p.startswith(expected) for p in problems), problems
    good = "- name: x\n  runnerkeep.runner.disk_facts:\n    disk: {}\n"
    assert example_problems(yaml.safe_load(good), "disk_facts", {"disk"}) == []


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        ({"a": {"description": "d", "returned": "always", "type": "integer"}}, "a: type"),
        ({"a": {"description": "d", "returned": "always"}}, "a: type"),
        ({"a": {"returned": "always", "type": "int"}}, "a: no description"),
        ({"a": {"description": "d", "type": "int"}}, "a: no 'returned'"),
        (
            {"a": {"description": "d", "returned": "x", "type": "str", "elements": "str"}},
            "a: elements on",
        ),
        (
            {
                "a": {
                    "description": "d",
                    "returned": "x",
                    "type": "dict",
                    "contains": {"b": {"description": "d", "returned": "x", "type": "boolean"}},
                }
            },
            "a.b: type",
        ),
    ],
)
def test_the_return_check_fails_on_a_bad_return(returned, expected):
    assert any(p.startswith(expected) for p in return_problems(returned))
    good = {"a": {"description": "d", "returned": "x", "type": "list", "elements": "str"}}
    assert return_problems(good) == []


def test_the_markup_check_fails_on_a_dangling_reference():
    returned = {"hit": {}}
    assert markup_problems("O(state=saved) and RV(hit=true)", {"state"}, returned) == []
    assert markup_problems("O(stat=saved)", {"state"}, returned) == ["O(stat) names no option"]
    assert markup_problems("RV(miss)", {"state"}, returned) == ["RV(miss) names no return value"]


def test_a_doc_that_is_not_yaml_fails_the_yaml_check():
    # The shape runner_cleanup's DOCUMENTATION had: a plain list item holding ': '.
    broken = "description:\n  - Runs one stage, like C(x):\n    the stage's cleaners run\n"
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(broken)
