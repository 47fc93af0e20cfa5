"""The role disk_monitor hands the watch its webhook auth header the way it hands the URL: a
root-only 0600 file in the secrets dir, named in the config fragment, never in the fragment
or the logs. The role's own expressions are rendered by Ansible's templating."""

from __future__ import annotations

import os

import pytest
from runnerkeep.disk import alerts

yaml = pytest.importorskip("yaml")
template = pytest.importorskip("ansible.template")
dataloader = pytest.importorskip("ansible.parsing.dataloader")

ROLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "disk_monitor")
HEADER = "Bearer role-s3cr3t-token"


def _trusted(value):
    # ansible-core 2.19 templates only strings marked as trusted; older versions template all.
    trust = getattr(template, "trust_as_template", None)
    return trust(value) if trust else value


def role_file(name: str):
    with open(os.path.join(ROLE, name), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def render(expression: str, **inventory):
    """``expression`` with the role's defaults and vars, overridden by ``inventory``."""
    variables = {**role_file("defaults/main.yml"), **role_file("vars/main.yml"), **inventory}
    trusted = {
        key: _trusted(value) if isinstance(value, str) else value
        for key, value in variables.items()
    }
    templar = template.Templar(loader=dataloader.DataLoader(), variables=trusted)
    return templar.template(_trusted(expression))


def test_the_fragment_names_the_header_file_only_when_a_header_is_set(tmp_path):
    secrets_dir = str(tmp_path / "secrets.d")
    section = render(
        "{{ disk_monitor_disk_section }}",
        disk_monitor_secrets_dir=secrets_dir,
        disk_monitor_webhook_auth_header=HEADER,
    )
    assert section["webhook_auth_header_file"] == f"{secrets_dir}/40-webhook-auth"
    assert HEADER not in repr(section) and "s3cr3t" not in repr(section)
    unset = render("{{ disk_monitor_disk_section }}", disk_monitor_secrets_dir=secrets_dir)
    assert unset["webhook_auth_header_file"] is None


def test_the_header_is_written_root_only_and_never_logged():
    tasks = {task["name"]: task for task in role_file("tasks/main.yml")}
    layout = tasks["Lay out the disk watch (secrets, config fragment, textfile dir, units)"]
    args, task_vars = layout["runnerkeep.runner.host_layout"], layout["vars"]
    secret = task_vars["disk_monitor_webhook_auth_secret"]
    assert secret == {
        "path": "{{ disk_monitor_webhook_auth_file }}",
        "content": "{{ disk_monitor_webhook_auth_header }}\n",
        "mode": "0600",
    }  # owner and group: the module's defaults, root
    # Only among the secret files (content never shown, no diff); removed when unset.
    assert "disk_monitor_webhook_auth_secret" in args["secret_files"]
    assert "disk_monitor_webhook_auth_secret" not in args["files"]
    assert "[disk_monitor_webhook_auth_file]" in args["absent"]
    # The module's invocation log on the host masks a secret ending in a newline badly: the
    # task is no_log whenever it writes one.
    assert "disk_monitor_webhook_auth_header" in layout["no_log"]
    assert "disk_monitor_webhook_url" in layout["no_log"]
    options = role_file("meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    spec = options["disk_monitor_webhook_auth_header"]
    assert spec["no_log"] is True and spec["default"] == ""
    assert role_file("defaults/main.yml")["disk_monitor_webhook_auth_header"] == ""


def test_the_layout_module_never_shows_a_secret_file_content():
    """host_layout's secret_files content is no_log (Ansible masks it in every output) and
    gets no diff; the file's owner and mode default to root's."""
    import importlib.util

    path = os.path.join(ROLE, "..", "..", "library", "host_layout.py")
    spec = importlib.util.spec_from_file_location("host_layout_doc", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    secret_options = module.ARGUMENT_SPEC["secret_files"]["options"]
    assert secret_options["content"]["no_log"] is True
    assert (secret_options["owner"]["default"], secret_options["group"]["default"]) == (
        "root",
        "root",
    )


def test_the_watch_reads_the_header_the_role_wrote(tmp_path):
    secrets_dir = tmp_path / "secrets.d"
    secrets_dir.mkdir(mode=0o700)
    inventory = {
        "disk_monitor_secrets_dir": str(secrets_dir),
        "disk_monitor_webhook_auth_header": HEADER,
    }
    # What the role's copy task writes, with its content and mode.
    path = render("{{ disk_monitor_webhook_auth_file }}", **inventory)
    content = render("{{ disk_monitor_webhook_auth_header }}\n", **inventory)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    section = render("{{ disk_monitor_disk_section }}", **inventory)
    target = alerts.webhook_target({**section, "webhook_url": "http://127.0.0.1:9/hook"})
    assert target.auth_header == ("Authorization", HEADER)
