"""The runner_cleanup Ansible module on localhost: check mode changes nothing, diff is capped,
a busy runner is skipped, a real run removes and reports per-cleaner figures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runnerkeep.cleanup import release_job_lock, take_job_lock

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def playbook_bin() -> str:
    local = Path(sys.executable).with_name("ansible-playbook")
    found = str(local) if local.exists() else shutil.which("ansible-playbook")
    if not found:
        pytest.skip("ansible-core is not installed (pip install ansible-core)")
    return found


@pytest.fixture
def setup(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    for i in range(5):
        (root / f"f{i}").write_bytes(b"x" * 5000)
        t = time.time() - (10 - i) * 86400
        os.utime(root / f"f{i}", (t, t))
    config = {
        "paths": {
            "state_dir": str(tmp_path / "state"),
            "cache_dir": str(tmp_path / "cache"),
            "log_dir": str(tmp_path / "log"),
        },
        "cleanup": {"cleaners": {"t": {"kind": "files", "roots": [str(root)], "min_age": "1d"}}},
    }
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    return root, cfg, config


PLAYBOOK = """\
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Run the module
      runner_cleanup: {args}
      register: result
      ignore_errors: true
    - name: Save the result
      ansible.builtin.copy:
        content: "{{{{ result | to_json }}}}"
        dest: "{out}"
        mode: "0644"
      check_mode: false
      diff: false
"""


def module(cfg, *extra, args="stage=post cleaners=t run_all=true"):
    """Run the module with ansible-playbook (local connection); returns (rc, result)."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    env.pop("RUNNERKEEP_CONFIG", None)
    out = Path(str(cfg) + ".result.json")
    out.unlink(missing_ok=True)
    module_args = dict(kv.split("=", 1) for kv in args.split())
    module_args.update(config_file=str(cfg), diff_max_items=2)
    book = Path(str(cfg) + ".play.yml")
    book.write_text(PLAYBOOK.format(args=json.dumps(module_args), out=out))
    cmd = [
        playbook_bin(),
        "-i",
        "localhost,",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        str(book),
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.exists(), proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    return (1 if result.get("failed") else proc.returncode), result


def test_check_mode_changes_nothing_and_diff_is_capped(setup):
    root, cfg, _config = setup
    code, result = module(cfg, "--check", "--diff")
    assert code == 0, result
    assert result["changed"] is True
    assert result["items_removed"] == 5
    assert result["removed"] == [str(root / "f0"), str(root / "f1")]
    assert result["removed_total"] == 5
    assert "... and 3 more" in result["diff"]["after"]
    assert sorted(os.listdir(root)) == [f"f{i}" for i in range(5)]


def test_real_run_removes_and_reports_per_cleaner(setup):
    root, cfg, _config = setup
    code, result = module(cfg)
    assert code == 0, result
    assert result["changed"] is True
    assert os.listdir(root) == []
    (cleaner,) = result["cleaners"]
    assert cleaner["name"] == "t" and cleaner["items_removed"] == 5 and cleaner["errors"] == 0
    code, again = module(cfg)
    assert code == 0 and again["changed"] is False


def test_busy_runner_is_skipped_or_fails_clearly(setup):
    root, cfg, config = setup
    state = config["paths"]["state_dir"]
    take_job_lock(state, "busy-job", pid=os.getpid())
    try:
        code, result = module(cfg, args="stage=post cleaners=t run_all=true when_busy=skip")
        assert code == 0 and result.get("skipped") and result["busy"] is True
        code, result = module(cfg)
        assert code != 0 and result["busy"] is True
        assert "holds the runner lock" in result["msg"]
        assert len(os.listdir(root)) == 5
    finally:
        release_job_lock(state, "busy-job")


def test_bad_config_fails_with_a_clear_message(setup, tmp_path):
    _root, _cfg, config = setup
    config["cleanup"]["cleaners"]["t"]["colour"] = "red"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(config))
    code, result = module(bad)
    assert code != 0
    assert "cleanup.cleaners.t.colour" in result["msg"] and "unknown key" in result["msg"]
