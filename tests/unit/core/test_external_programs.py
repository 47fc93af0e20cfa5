"""Every program the harness, the tools, the noxfile and the tests run on this machine is one a
clean Debian 12 with python3, pip and git has, or one the harness or a nox session installs.

The README promises its two commands work on such a machine. The list of programs is not kept by
hand: it is read from the sources (ast) - the first element of every subprocess call's command,
`shutil.which` arguments, `session.run` programs and helpers that wrap them (`docker_bin()`,
`run_streamed(cmd)`, `sh(*args)`), resolved through constants, local variables and return values.
A call whose program cannot be worked out statically must be listed in DYNAMIC_SITES with the
programs it runs. Programs run inside containers (`docker exec`, testinfra) do not count: the
controller only runs `docker` for them.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness import engine

ROOT = Path(__file__).resolve().parents[3]
SCANNED = ["noxfile.py", "tools/*.py", "tests/**/*.py"]
# Helpers defined here may be called from any scanned file (tests import them).
SHARED_HELPERS = ["tests/harness/*.py", "tools/*.py"]
# (object, function) -> what its first argument is: a whole command or a program.
CALL_KINDS = {
    **{("subprocess", f): "command" for f in ("run", "call", "check_call", "check_output")},
    ("subprocess", "Popen"): "command",
    **{("os", f): "command" for f in ("system", "execv", "execvp", "execve", "execvpe")},
    ("session", "run"): "program",
    ("shutil", "which"): "program",
}

# The README: "pip install nox && nox" on a machine with python3, pip and git.
README_REQUIRED = {"python3", "python", "pip", "git", "nox"}
# Part of every Debian 12 system (Essential: yes, or Priority: required); keep it short.
BASE_DEBIAN = {
    "apt-get": "apt",
    "du": "coreutils",
    "rm": "coreutils",
    "sync": "coreutils",
    "env": "coreutils",
    "find": "findutils",
    "ldd": "libc-bin",
    "sh": "dash",
}
# Console scripts of Python packages a nox session installs (checked against noxfile.py).
PIP_PROGRAMS = {
    "ansible-playbook": "ansible-core",
    "ansible-galaxy": "ansible-core",
    "ansible-doc": "ansible-core",
    "ansible-test": "ansible-core",
    "ansible-lint": "ansible-lint",
    "pytest": "pytest",
    "ruff": "ruff",
    "yamllint": "yamllint",
    "ansible": "ansible-core",
    "pipx": "pipx",
    # the package session builds this repository (python -m build) and installs the wheel
    "runnerkeep": "build",
}
# Programs used only when present, each call guarded by shutil.which (a clean machine just
# goes without what they add).
OPTIONAL_PROGRAMS = {
    "pyenv": "noxfile.py finds the supported Pythons through it when pyenv is installed",
}
# Calls that name the same program as their first argument.
PASS_THROUGH = {"shutil.which", "str", "os.fspath", "Path", "os.path.abspath", "os.path.realpath"}
# The controller Pythons the zipapp must build identically with (test_zipapp_reproducible.py
# runs those it finds and fails, saying how to install them, when fewer than two are there).
SUPPORTED_PYTHONS = {f"python3.{minor}" for minor in range(9, 14)}
# Calls whose program depends on run-time values, with every program they can run. Keyed by
# (file, enclosing function); an entry nothing matches any more fails the test (keep it true).
DYNAMIC_SITES: dict[tuple[str, str], set[str]] = {
    # consumer.run(TOOL, ...) runs BIN/TOOL for the tools of the consumer project
    ("tests/integration/test_collection_consumer.py", "run"): {
        "ansible-galaxy",
        "ansible-playbook",
    },
    # an ssh argv from host.ssh_command() with another key
    ("tests/integration/test_harness.py", "test_started_host"): {"ssh"},
    # noxfile: which supported Pythons answer (python3.9 ... python3.13)
    ("noxfile.py", "_runs"): set(SUPPORTED_PYTHONS),
    ("noxfile.py", "<module>"): set(SUPPORTED_PYTHONS),
    # the ansible-galaxy find_galaxy() found
    ("tools/build_collection.py", "galaxy_build"): {"ansible-galaxy"},
    # every supported interpreter found on this machine
    ("tools/run_sanity.py", "interpreter_dir"): SUPPORTED_PYTHONS,
    **{
        ("tests/unit/core/test_zipapp_reproducible.py", function): SUPPORTED_PYTHONS
        for function in (
            "_candidates",
            "find_interpreters",
            "test_same_bytes_from_every_supported_python",
            "test_archive_runs_with_every_supported_python",
        )
    },
}


@dataclass
class Scan:
    programs: dict[str, set[str]] = field(default_factory=dict)  # program -> "file:line" sites
    unresolved: set[tuple[str, str, int]] = field(default_factory=set)  # (file, function, line)

    def add(self, program: str, where: str) -> None:
        self.programs.setdefault(program, set()).add(where)


def scanned_files() -> list[Path]:
    files = {p for pattern in SCANNED for p in ROOT.glob(pattern)}
    return sorted(p for p in files if "__pycache__" not in p.parts and ".nox" not in p.parts)


FunctionNode = (ast.FunctionDef, ast.AsyncFunctionDef)


class Module:
    """One parsed file: its functions, imports, and what its names are assigned."""

    def __init__(self, path: Path, root: Path = ROOT) -> None:
        self.path = path
        self.root = root
        self.rel = str(path.relative_to(root))
        self.tree = ast.parse(path.read_text(), filename=str(path))
        self.functions: dict[str, ast.AST] = {}
        self.imports: dict[str, str] = {}  # local name -> dotted module it comes from
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
            if isinstance(node, FunctionNode):
                self.functions.setdefault(node.name, node)
            elif isinstance(node, ast.ImportFrom):
                source = "." * node.level + (node.module or "")
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = source

    def enclosing_function(self, node: ast.AST):
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, FunctionNode):
                return node
        return None

    def values_of(self, name: str, scope, at: ast.AST | None = None) -> list[ast.expr]:
        """Expressions name is bound to where `at` uses it: by the comprehension around it,
        else in the function (else at module level) by assignments and for loops."""
        node = at
        while node is not None and node is not scope and node in self.parents:
            node = self.parents[node]
            if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
                bound = [v for g in node.generators for v in _loop_values(g.target, g.iter, name)]
                if bound:
                    return bound
        found = _bound_in(scope, name) if scope is not None else []
        return found or _bound_in(self.tree, name, top_level=True)


def _bound_in(scope: ast.AST, name: str, top_level: bool = False) -> list[ast.expr]:
    nodes = scope.body if top_level else list(ast.walk(scope))  # type: ignore[attr-defined]
    values: list[ast.expr] = []
    for node in nodes:
        if isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                values.append(node.value)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            if isinstance(node.target, ast.Name) and node.target.id == name:
                values.append(node.value)
        elif isinstance(node, (ast.For, ast.comprehension)):
            values += _loop_values(node.target, node.iter, name)
    return values


def _loop_values(target: ast.expr, iterable: ast.expr, name: str) -> list[ast.expr]:
    """`for name in ("a", "b")`, `for name, x in {"a": 1}.items()`: the literal elements."""
    index = None
    if isinstance(target, ast.Name) and target.id == name:
        index = -1
    elif isinstance(target, ast.Tuple):
        names = [t.id if isinstance(t, ast.Name) else None for t in target.elts]
        index = names.index(name) if name in names else None
    if index is None:
        return []
    func = iterable.func if isinstance(iterable, ast.Call) else None
    method = func.attr if isinstance(func, ast.Attribute) else None
    if method in ("items", "keys"):
        # a dict's items are (key, value): element 0 is the key, as a plain loop gives
        keys_only = index in (-1, 0) or method == "keys"
        return [_LoopElement(func.value, -1)] if keys_only else []
    return [_LoopElement(iterable, index)]


class _LoopElement(ast.expr):
    """Stands for element `index` (-1: the whole item) of each item of `iterable`
    (a dict's items are its keys)."""

    def __init__(self, iterable: ast.expr, index: int) -> None:
        super().__init__()
        self.iterable = iterable
        self.index = index


def _parameters(function) -> list[str]:
    if function is None:
        return []
    args = function.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    return names + [a.arg for a in (args.vararg, args.kwarg) if a is not None]


def _program_name(text: str) -> str | None:
    words = text.strip().split()
    return (os.path.basename(words[0]) or None) if words else None


class Resolver:
    """Turns a command or program expression into program names (None: cannot tell)."""

    def __init__(self, modules: dict[str, Module]) -> None:
        self.modules = modules
        self._busy: set[tuple[str, int]] = set()
        self.call_sites: dict[int, list[tuple[Module, ast.Call]]] = {}  # id(def) -> its calls
        for module in modules.values():
            for node in ast.walk(module.tree):
                if isinstance(node, ast.Call):
                    found = self.callee(module, node)
                    if found is not None:
                        self.call_sites.setdefault(id(found[1]), []).append((module, node))

    def function(self, module: Module, name: str):
        """(module, def) a bare name calls: defined here, or imported from a scanned file."""
        if name in module.functions:
            return module, module.functions[name]
        source = module.imports.get(name)
        if source is None:
            return None
        if source.startswith("."):
            relative = module.path.parent / (source.lstrip(".").replace(".", "/") + ".py")
            wanted = str(relative.relative_to(module.root))
        else:
            wanted = source.replace(".", "/") + ".py"
        for rel, other in self.modules.items():
            if (rel == wanted or rel.endswith("/" + wanted)) and name in other.functions:
                return other, other.functions[name]
        return None

    def callee(self, module: Module, call: ast.Call):
        """The scanned function a call runs: a bare name, or a method called on self."""
        if isinstance(call.func, ast.Name):
            return self.function(module, call.func.id)
        method = call.func.attr if isinstance(call.func, ast.Attribute) else None
        if method in module.functions and ast.unparse(call.func.value) == "self":
            return module, module.functions[method]
        return None

    def program(self, module: Module, node: ast.expr, scope) -> set[str] | None:
        """What program a string expression (a path or a name) names."""
        return self._guarded(self._program, module, node, scope)

    def command(self, module: Module, node: ast.expr, scope) -> set[str] | None:
        """What program a command (argv list or shell string) runs."""
        return self._guarded(self._command, module, node, scope)

    def _guarded(self, resolve, module, node, scope):
        """Resolve once per (way, node) at a time: a name assigned from itself cannot loop."""
        key = (resolve.__name__, id(node))
        if key in self._busy:
            return None
        self._busy.add(key)
        try:
            return resolve(module, node, scope)
        finally:
            self._busy.discard(key)

    def _program(self, module: Module, node: ast.expr, scope) -> set[str] | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = _program_name(node.value)
            return {name} if name else None
        if isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.executable":
            return {"python3"}
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            return self.program(module, node.right, scope)  # Path(...) / "name"
        if isinstance(node, (ast.Name, _LoopElement)):
            return self._name(module, node, scope, self.program)
        if isinstance(node, ast.BoolOp):
            return self._union(module, node.values, scope, self.program)
        if isinstance(node, ast.IfExp):
            return self._union(module, [node.body, node.orelse], scope, self.program)
        if isinstance(node, ast.Call):
            return self._program_of_call(module, node, scope)
        return None

    def _program_of_call(self, module: Module, node: ast.Call, scope) -> set[str] | None:
        callee = ast.unparse(node.func)
        last = node.args[-1] if node.args else None
        if callee in PASS_THROUGH and node.args:
            return self.program(module, node.args[0], scope)
        if callee in ("os.environ.get", "os.getenv", "os.path.join") and len(node.args) >= 2:
            return self.program(module, last, scope)
        if isinstance(node.func, ast.Attribute) and node.func.attr == "with_name" and last:
            return self.program(module, last, scope)
        return self._returned(module, node, self.program)

    def _command(self, module: Module, node: ast.expr, scope) -> set[str] | None:
        if isinstance(node, (ast.List, ast.Tuple)):
            if not node.elts:
                return None
            first = node.elts[0]
            if isinstance(first, ast.Starred):
                return self.command(module, first.value, scope)
            return self.program(module, first, scope)
        if isinstance(node, (ast.Constant, ast.JoinedStr)):
            return self.program(module, node, scope)
        if isinstance(node, (ast.Name, _LoopElement)):
            return self._name(module, node, scope, self.command)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.command(module, node.left, scope)
        if isinstance(node, ast.Call):
            if ast.unparse(node.func) == "list" and node.args:
                return self.command(module, node.args[0], scope)
            return self._returned(module, node, self.command)
        return None

    def _name(self, module, node, scope, resolve) -> set[str] | None:
        if isinstance(node, _LoopElement):
            items = self._items(module, node.iterable, scope)
            if items is None:
                return None
            if node.index >= 0:
                items = [_element(item, node.index) for item in items]
            return self._union(module, items, scope, resolve)
        if node.id in _parameters(scope):
            return self._parameter(node.id, scope, resolve)
        return self._union(module, module.values_of(node.id, scope, at=node), scope, resolve)

    def _parameter(self, name: str, function, resolve) -> set[str] | None:
        """A parameter is whatever every caller passes for it (None: a caller we cannot see)."""
        sites = self.call_sites.get(id(function), [])
        params = [a.arg for a in function.args.posonlyargs + function.args.args]
        if not sites or name not in params:
            return None
        found: set[str] = set()
        for caller, call in sites:
            arg = _argument(call, params, name)
            programs = None
            if arg is not None:
                programs = resolve(caller, arg, caller.enclosing_function(call))
            if programs is None:
                return None
            found |= programs
        return found

    def _items(self, module, iterable, scope) -> list | None:
        """The literal items a loop goes through (dict keys for a dict)."""
        if isinstance(iterable, (ast.List, ast.Tuple, ast.Set)):
            return list(iterable.elts)
        if isinstance(iterable, ast.Dict):
            return [k for k in iterable.keys if k is not None]
        if isinstance(iterable, ast.Name):
            values = module.values_of(iterable.id, scope)
            items: list = []
            for value in values:
                found = self._items(module, value, scope)
                if found is None:
                    return None
                items += found
            return items or None
        return None

    def _returned(self, module: Module, call: ast.Call, resolve) -> set[str] | None:
        found = self.callee(module, call)
        if found is None:
            return None
        owner, function = found
        returns = [n.value for n in ast.walk(function) if isinstance(n, ast.Return) and n.value]
        return self._union(owner, returns, function, resolve)

    def _union(self, module, nodes, scope, resolve) -> set[str] | None:
        found: set[str] = set()
        for value in nodes:
            programs = resolve(module, value, scope) if value is not None else None
            if programs is None:
                return None
            found |= programs
        return found or None


def _argument(call: ast.Call, params: list[str], name: str) -> ast.expr | None:
    """The expression a call passes for parameter `name` (a method's self not counted)."""
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    index = params.index(name) - (1 if params[:1] == ["self"] else 0)
    if 0 <= index < len(call.args) and not isinstance(call.args[index], ast.Starred):
        return call.args[index]
    return None


def _element(item, index: int):
    if isinstance(item, (ast.Tuple, ast.List)) and len(item.elts) > index:
        return item.elts[index]
    return None


@dataclass
class Wrapper:
    """A scanned function that runs a command taken from one of its parameters."""

    index: int  # position of that parameter among the call's positional arguments
    vararg: bool  # the parameter is *args: the call's argument at index is the program
    whole: bool  # the parameter is the whole command (else its program)


def _wrapped(function, call: ast.Call, whole_command: bool) -> Wrapper | None:
    """How `function` passes a parameter to the command (or program) it runs, if it does."""
    if function is None or not call.args:
        return None
    node, whole = call.args[0], whole_command
    if isinstance(node, ast.Call) and ast.unparse(node.func) == "list" and node.args:
        node = node.args[0]
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        first, whole = node.elts[0], False
        if isinstance(first, ast.Starred):
            first, whole = first.value, True
        node = first
    while isinstance(node, ast.Call) and ast.unparse(node.func) == "str" and node.args:
        node = node.args[0]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        node = node.right
    if not isinstance(node, ast.Name) or node.id not in _parameters(function):
        return None
    params = [a.arg for a in function.args.posonlyargs + function.args.args]
    vararg = function.args.vararg is not None and function.args.vararg.arg == node.id
    index = len(params) if vararg else params.index(node.id) if node.id in params else None
    if index is None:
        return None
    if params and params[0] == "self":
        index -= 1
    return Wrapper(index=index, vararg=vararg, whole=whole and not vararg)


def _command_calls(module: Module):
    """(call, kind) for every subprocess/os/session call and shutil.which in the module."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            kind = CALL_KINDS.get((ast.unparse(node.func.value), node.func.attr))
            if kind is not None:
                yield node, kind


def scan(paths: list[Path] | None = None, root: Path = ROOT) -> Scan:
    found = scanned_files() if paths is None else paths
    modules = {m.rel: m for m in (Module(p, root) for p in found)}
    resolver = Resolver(modules)
    wrappers: dict[int, Wrapper] = {}  # id(function def) -> how it wraps
    pending: list[tuple[Module, ast.Call, object]] = []
    for module in modules.values():
        for call, kind in _command_calls(module):
            scope = module.enclosing_function(call)
            wrapper = _wrapped(scope, call, whole_command=kind == "command")
            if wrapper is not None:
                wrappers[id(scope)] = wrapper
            else:
                pending.append((module, call, kind))
    for module in modules.values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Call):
                found = resolver.callee(module, node)
                if found is not None and id(found[1]) in wrappers:
                    pending.append((module, node, wrappers[id(found[1])]))
    result = Scan()
    for module, call, how in pending:
        scope = module.enclosing_function(call)
        programs = _resolve_call(resolver, module, call, how, scope)
        if programs is None:
            result.unresolved.add((module.rel, scope.name if scope else "<module>", call.lineno))
        for program in programs or ():
            result.add(program, f"{module.rel}:{call.lineno}")
    return result


def _resolve_call(resolver: Resolver, module, call: ast.Call, how, scope) -> set[str] | None:
    if isinstance(how, Wrapper):
        if len(call.args) <= how.index or isinstance(call.args[how.index], ast.Starred):
            return None
        resolve = resolver.command if how.whole else resolver.program
        return resolve(module, call.args[how.index], scope)
    if not call.args:
        return None
    resolve = resolver.command if how == "command" else resolver.program
    return resolve(module, call.args[0], scope)


@functools.lru_cache(maxsize=1)
def repo_scan() -> Scan:
    return scan()


def nox_installed_packages() -> set[str]:
    """Every package name a nox session installs (session.install arguments, HARNESS_DEPS)."""
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "session.install":
            names |= {a.value for a in node.args if isinstance(a, ast.Constant)}
        if isinstance(node, ast.Assign) and isinstance(node.value, (ast.List, ast.Tuple)):
            names |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
    return {re.split(r"[<>=!~\[ ]", str(n))[0] for n in names if isinstance(n, str)}


def allowed_programs() -> dict[str, str]:
    """Program -> why it is there on a clean machine."""
    allowed = {p: "README requirement" for p in README_REQUIRED}
    allowed.update({p: "supported Python (test says how to install)" for p in SUPPORTED_PYTHONS})
    allowed.update({p: f"Debian base ({pkg})" for p, pkg in BASE_DEBIAN.items()})
    allowed.update({p: f"optional: {why}" for p, why in OPTIONAL_PROGRAMS.items()})
    for program, package in engine.HOST_PROGRAMS.items():
        allowed[program] = f"installed by the harness ({package})"
    for program in engine.ENGINE_PROGRAMS:
        allowed[program] = "installed by the harness (docker.io)"
    installed = nox_installed_packages()
    for program, package in PIP_PROGRAMS.items():
        if package in installed:
            allowed[program] = f"pip package {package} installed by a nox session"
    return allowed


def test_every_program_run_on_this_machine_is_provided():
    found = repo_scan()
    allowed = allowed_programs()
    missing = {p: sorted(w)[:3] for p, w in found.programs.items() if p not in allowed}
    assert missing == {}, (
        "programs the tests or the harness run that a clean Debian 12 with python3, pip and git "
        "lacks and nothing installs: add each to HOST_PROGRAMS in tests/harness/engine.py (or "
        f"install its pip package in a nox session): {missing}"
    )


def test_every_dynamic_call_site_is_accounted_for():
    found = repo_scan()
    sites = {(f, fn) for f, fn, _line in found.unresolved}
    unknown = sorted(s for s in found.unresolved if (s[0], s[1]) not in DYNAMIC_SITES)
    assert unknown == [], (
        "cannot tell which program these calls run: give them a literal program (or one resolved "
        f"through a constant/helper) or list them in DYNAMIC_SITES with their programs: {unknown}"
    )
    assert sorted(set(DYNAMIC_SITES) - sites) == [], "stale DYNAMIC_SITES entries"
    allowed = allowed_programs()
    listed = {p for programs in DYNAMIC_SITES.values() for p in programs}
    assert sorted(listed - set(allowed)) == []


def test_the_scan_sees_the_programs_it_must():
    """Programs run today through a literal, a helper's return value, a wrapper and a loop."""
    programs = repo_scan().programs
    expected = {
        "docker": "tests/harness/_docker.py",  # docker_bin() -> shutil.which(DOCKER)
        "debootstrap": "tests/harness/image.py",  # run_streamed([debootstrap, ...])
        "apt-get": "tests/harness/engine.py",  # _apt_get([...]) wrapper
        "ansible-playbook": "tests/harness/fleet.py",  # cmd = [_ansible_playbook_bin(), ...]
        "ssh": "tests/harness/fleet.py",  # self.ssh_command(cmd)
        "ip": "tests/integration/test_watch_deadline.py",  # which(p) for p in (...)
        "tar": "tests/harness/image.py",
    }
    for program, where in expected.items():
        assert any(site.startswith(where) for site in programs.get(program, ())), program


def test_the_scanner_on_a_sample(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import shutil, subprocess, sys\n"
        "TOOL = 'quux'\n"
        "def tool():\n    return shutil.which(TOOL)\n"
        "def sh(*args):\n    return subprocess.run(list(args))\n"
        "def dynamic(cmd):\n    return subprocess.run(cmd)\n"
        "def version(tool):\n    cmd = [tool, '--version']\n    return subprocess.run(cmd)\n"
        "def main(argv):\n"
        "    subprocess.run(['/usr/bin/frobnicate', '-x'])\n"
        "    subprocess.check_call([tool(), 'x'])\n"
        "    sh('zap', '-y')\n"
        "    ok = all(shutil.which(p) for p in ('aa', 'bb'))\n"
        "    subprocess.run([sys.executable, '-c', 'pass'])\n"
        "    subprocess.run('wibble --now', shell=True)\n"
        "    dynamic(argv)\n"
        "    version('zork')\n"
    )
    found = scan([sample], root=tmp_path)
    assert set(found.programs) == {
        "frobnicate",
        "quux",
        "zap",
        "aa",
        "bb",
        "python3",
        "wibble",
        "zork",
    }
    assert {(f, fn) for f, fn, _line in found.unresolved} == {("sample.py", "main")}


def test_the_allowlists_stay_short_and_real():
    assert len(BASE_DEBIAN) <= 10
    assert set(README_REQUIRED) <= {"python3", "python", "pip", "git", "nox"}
    # the noxfile parser sees what the sessions install (a pip program counts only then)
    assert {"ansible-core", "pytest", "ruff"} <= nox_installed_packages()
