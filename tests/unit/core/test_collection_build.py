"""tools/build_collection.py: the collection runnerkeep.runner built from this repository.

Builds the tarball once into a temp dir, checks what it holds, that it builds to the same bytes
again, and that installed into a place of its own (nothing of this repository configured) its
modules load the core through the collection and its docs parse.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest
import yaml
from runnerkeep import __version__

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TOOL = os.path.join(ROOT, "tools", "build_collection.py")
TARBALL = f"runnerkeep-runner-{__version__}.tar.gz"
# Every module of library/ ships; these four at least (issue 11).
MODULES = tuple(
    sorted(n[:-3] for n in os.listdir(os.path.join(ROOT, "library")) if n.endswith(".py"))
)
ROLES = ("disk_monitor", "image_cache", "runner_base", "runner_maintenance")
PLAYBOOKS = ("cache_restore", "cache_save", "maintain", "provision")
BIN = os.path.dirname(sys.executable)


def build(output_dir, tool: str = TOOL) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, tool, "--output-dir", str(output_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("collection")
    done = build(out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"changed {out / TARBALL}"
    return out / TARBALL


@pytest.fixture(scope="module")
def members(built):
    with tarfile.open(built, "r:gz") as archive:
        return {
            info.name: (archive.extractfile(info).read() if info.isfile() else None)
            for info in archive.getmembers()
        }


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("build_collection", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_four_modules_are_in_library():
    assert {"disk_budget", "disk_facts", "image_cache", "runner_cleanup"} <= set(MODULES)


def test_galaxy_version_is_the_package_version():
    with open(os.path.join(ROOT, "galaxy.yml"), encoding="utf-8") as handle:
        galaxy = yaml.safe_load(handle)
    assert (galaxy["namespace"], galaxy["name"]) == ("runnerkeep", "runner")
    assert galaxy["version"] == __version__
    assert galaxy["license"] == ["Apache-2.0"]
    assert all(re.fullmatch(r"[^()]+ \(@[\w-]+\)", author) for author in galaxy["authors"])


def test_manifest_names_the_collection_and_version(members):
    info = json.loads(members["MANIFEST.json"])["collection_info"]
    assert (info["namespace"], info["name"], info["version"]) == (
        "runnerkeep",
        "runner",
        __version__,
    )


def test_tarball_holds_modules_core_roles_playbooks_and_metadata(members):
    expected = {f"plugins/modules/{name}.py" for name in MODULES}
    expected |= {f"roles/{role}/tasks/main.yml" for role in ROLES}
    expected |= {f"roles/{role}/meta/argument_specs.yml" for role in ROLES}
    expected |= {f"playbooks/{name}.yml" for name in PLAYBOOKS}
    expected |= {"meta/runtime.yml", "LICENSE", "README.md", "CHANGELOG.md"}
    expected |= {"roles/runner_base/files/runnerkeep.pyz"}
    core = os.path.join(ROOT, "module_utils", "runnerkeep")
    for dirpath, dirnames, filenames in os.walk(core):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, name), core)
                expected.add(f"plugins/module_utils/runnerkeep/{rel}")
    assert sorted(expected - set(members)) == []
    assert not [name for name in members if "__pycache__" in name or name.endswith(".pyc")]
    # validate_image.yml needs tests/ from a checkout: it stays a repository tool.
    assert "playbooks/validate_image.yml" not in members


def test_core_is_shipped_unchanged(members):
    core = os.path.join(ROOT, "module_utils", "runnerkeep")
    prefix = "plugins/module_utils/runnerkeep/"
    shipped = [name for name in members if name.startswith(prefix) and name.endswith(".py")]
    assert shipped
    for name in shipped:
        with open(os.path.join(core, name[len(prefix) :]), "rb") as handle:
            assert members[name] == handle.read(), name


def test_sanity_ignores_travel_with_the_collection(members):
    sanity = os.path.join(ROOT, "tests", "sanity")
    ignores = [n for n in os.listdir(sanity) if re.fullmatch(r"ignore-[0-9.]+\.txt", n)]
    assert ignores
    for name in ignores:
        with open(os.path.join(sanity, name), "rb") as handle:
            assert members[f"tests/sanity/{name}"] == handle.read(), name


def imported_modules(source: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_modules_import_the_core_through_the_collection(members):
    for name in MODULES:
        source = members[f"plugins/modules/{name}.py"].decode()
        imports = imported_modules(source)
        assert "ansible.module_utils.runnerkeep" not in source, name
        assert not [i for i in imports if i.startswith("ansible.module_utils.runnerkeep")], name
        core = "ansible_collections.runnerkeep.runner.plugins.module_utils.runnerkeep."
        assert [i for i in imports if i.startswith(core)], name


def test_zipapp_inside_is_the_cli(members):
    pyz = members["roles/runner_base/files/runnerkeep.pyz"]
    assert pyz.startswith(b"#!")
    with zipfile.ZipFile(io.BytesIO(pyz)) as archive:
        names = archive.namelist()
    assert "__main__.py" in names
    assert "runnerkeep_cli/main.py" in names
    assert "runnerkeep/__init__.py" in names


def task_actions(tasks) -> list[str]:
    """Module or role names a task list calls, blocks included."""
    actions = []
    for task in tasks or []:
        for key in ("block", "rescue", "always"):
            actions += task_actions(task.get(key))
        actions += [key for key in task if key in MODULES or key.startswith("runnerkeep.")]
    return actions


def test_roles_and_playbooks_call_modules_and_roles_by_fqcn(members):
    seen = []
    for name, data in members.items():
        if data is None or not name.endswith(".yml"):
            continue
        doc = yaml.safe_load(data)
        if name.startswith("playbooks/"):
            for play in doc:
                for section in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                    seen += task_actions(play.get(section))
                for role in play.get("roles", []):
                    role_name = role["role"] if isinstance(role, dict) else role
                    assert role_name.startswith("runnerkeep.runner."), (name, role_name)
                    seen.append(role_name)
        elif "/tasks/" in name or "/handlers/" in name:
            seen += task_actions(doc)
    assert not [action for action in seen if action in MODULES]
    assert "runnerkeep.runner.disk_budget" in seen
    assert "runnerkeep.runner.runner_base" in seen


def test_files_json_checksums_match_the_members(members):
    files = json.loads(members["FILES.json"])["files"]
    manifest = json.loads(members["MANIFEST.json"])
    assert (
        manifest["file_manifest_file"]["chksum_sha256"]
        == hashlib.sha256(members["FILES.json"]).hexdigest()
    )
    listed = {entry["name"] for entry in files if entry["ftype"] == "file"}
    assert listed == {name for name, data in members.items() if data is not None} - {
        "MANIFEST.json",
        "FILES.json",
    }
    for entry in files:
        if entry["ftype"] == "file":
            assert hashlib.sha256(members[entry["name"]]).hexdigest() == entry["chksum_sha256"], (
                entry["name"]
            )


SNAPSHOT = ("library", "module_utils", "cli", "roles", "playbooks", "docs", "tools", "meta")
SNAPSHOT_FILES = ("galaxy.yml", "LICENSE", "README.md", "CHANGELOG.md")


def snapshot(dest) -> str:
    """A copy of what the build reads, so both builds see the same input."""
    for name in SNAPSHOT:
        shutil.copytree(
            os.path.join(ROOT, name),
            dest / name,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    shutil.copytree(os.path.join(ROOT, "tests", "sanity"), dest / "tests" / "sanity")
    for name in SNAPSHOT_FILES:
        shutil.copy2(os.path.join(ROOT, name), dest / name)
    return str(dest / "tools" / "build_collection.py")


def test_same_sources_build_the_same_bytes(tmp_path):
    tool = snapshot(tmp_path / "src")
    tarballs = []
    for out in ("one", "two"):
        done = build(tmp_path / out, tool)
        assert done.returncode == 0, done.stderr
        tarballs.append((tmp_path / out / TARBALL).read_bytes())
    assert tarballs[0] == tarballs[1]
    # Built into the same place again, the tarball is left alone.
    unchanged = build(tmp_path / "two", tool)
    assert unchanged.stdout.strip() == f"unchanged {tmp_path / 'two' / TARBALL}"


def isolated_env(tmp_path) -> dict[str, str]:
    """Ansible configured by an empty ansible.cfg: nothing of this repository on its paths."""
    cfg = tmp_path / "ansible.cfg"
    cfg.write_text("[defaults]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_CONFIG=str(cfg),
        ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
        ANSIBLE_NOCOLOR="1",
        HOME=str(tmp_path),
    )
    return env


def test_installed_collection_loads_the_core_and_its_docs(built, tmp_path):
    env = isolated_env(tmp_path)
    install = [os.path.join(BIN, "ansible-galaxy"), "collection", "install", str(built)]
    install += ["-p", str(tmp_path / "collections")]
    done = subprocess.run(
        install, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    names = [f"runnerkeep.runner.{name}" for name in MODULES]
    doc = subprocess.run(
        [os.path.join(BIN, "ansible-doc"), "--json", *names],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert doc.returncode == 0, doc.stderr
    docs = json.loads(doc.stdout)
    for name in names:
        where = docs[name]["doc"]["filename"]
        assert where.startswith(str(tmp_path / "collections" / "ansible_collections")), where
    # A module run on localhost gets past the core's import: the config error is the core's own.
    missing = tmp_path / "absent" / "config.json"
    adhoc = [os.path.join(BIN, "ansible"), "localhost", "-c", "local"]
    adhoc += ["-m", "runnerkeep.runner.disk_budget", "-a", f"config_file={missing}"]
    run = subprocess.run(
        adhoc,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert f"config file {missing} does not exist" in run.stdout
    assert "cannot import the runnerkeep core" not in run.stdout


def test_module_import_rewrite_refuses_a_form_it_cannot_rewrite(tool):
    rewritten = tool.rewrite_module(
        "from ansible.module_utils.runnerkeep.units import parse_size\n", "m.py"
    )
    assert rewritten.startswith(
        "from ansible_collections.runnerkeep.runner.plugins.module_utils.runnerkeep.units "
    )
    with pytest.raises(tool.BuildError, match="cannot rewrite the import"):
        tool.rewrite_module("from ansible.module_utils import runnerkeep\n", "m.py")


def test_absolute_core_import_is_refused(tool, tmp_path):
    (tmp_path / "good.py").write_text("from .errors import RunnerkeepError\n")
    tool.check_core_imports(str(tmp_path))
    (tmp_path / "bad.py").write_text(
        "def f():\n    from runnerkeep.errors import RunnerkeepError\n"
    )
    with pytest.raises(tool.BuildError, match=r"bad\.py:2: absolute import of runnerkeep\.errors"):
        tool.check_core_imports(str(tmp_path))


def test_version_mismatch_is_one_clear_line(tool, tmp_path, monkeypatch):
    (tmp_path / "module_utils" / "runnerkeep").mkdir(parents=True)
    (tmp_path / "module_utils" / "runnerkeep" / "__init__.py").write_text('__version__ = "1.2.3"\n')
    (tmp_path / "galaxy.yml").write_text("---\nnamespace: runnerkeep\nversion: 1.2.4\n")
    monkeypatch.setattr(tool, "ROOT", str(tmp_path))
    with pytest.raises(
        tool.BuildError,
        match=r"^galaxy.yml version 1.2.4 differs from runnerkeep.__version__ 1.2.3",
    ):
        tool.checked_version()


def test_dev_collection_presents_the_sources(tmp_path):
    """In the checkout ansible.cfg finds runnerkeep.runner in collections/: links to the sources."""
    dev = os.path.join(ROOT, "collections", "ansible_collections", "runnerkeep", "runner")
    links = {
        "plugins/modules": "library",
        "plugins/module_utils": "module_utils",
        "roles": "roles",
        "playbooks": "playbooks",
        "meta": "meta",
        "galaxy.yml": "galaxy.yml",
    }
    for link, source in links.items():
        path = os.path.join(dev, link)
        assert os.path.islink(path) and not os.path.isabs(os.readlink(path)), link
        assert os.path.realpath(path) == os.path.realpath(os.path.join(ROOT, source)), link
    zipapp = os.path.join(ROOT, "roles", "runner_base", "files", "runnerkeep.pyz")
    assert os.readlink(zipapp) == "../../../dist/runnerkeep.pyz"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), HOME=str(tmp_path))
    doc = subprocess.run(
        [os.path.join(BIN, "ansible-doc"), "--json", "runnerkeep.runner.runner_cleanup"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert doc.returncode == 0, doc.stderr
    where = json.loads(doc.stdout)["runnerkeep.runner.runner_cleanup"]["doc"]["filename"]
    assert where == os.path.join(dev, "plugins", "modules", "runner_cleanup.py")
