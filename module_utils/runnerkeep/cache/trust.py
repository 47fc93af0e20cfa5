"""How trusted a CI job is, from what the runner agent set before any job code ran.

The job-start hook reads these facts and registers them with the cache service; job code
cannot change them afterwards (the first registration of a worker wins).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Callable

from .store import TRUSTED

UNTRUSTED_UNKNOWN = "untrusted"
UNREGISTERED = "unregistered"
MAX_EVENT_BYTES = 16 * 1024 * 1024
_NUMBER_RE = re.compile(r"[0-9]{1,12}")


def trust_from_env(
    env: Mapping[str, str], read_file: Callable[[str], bytes]
) -> tuple[bool, str, str]:
    """(trusted, scope, reason) of the job whose environment is ``env``.

    GitHub: a pull_request* event from a fork is untrusted (scope pr-N-REPO); anything else
    (push, schedule, a pull request from a branch of the same repository, whose author can push
    there anyway) is trusted. GitLab: a merge request pipeline whose source project is not the
    project is untrusted (scope mr-IID-PROJECT). When the facts cannot be read the job is
    untrusted: a wrong "untrusted" costs a cache miss, a wrong "trusted" a poisoned build.
    """
    if env.get("GITHUB_EVENT_NAME"):
        return _github(env, read_file)
    if env.get("GITLAB_CI") or env.get("CI_PROJECT_ID"):
        return _gitlab(env)
    return False, UNTRUSTED_UNKNOWN, "neither GitHub Actions nor GitLab CI facts in the environment"


def _repo_tag(name: str) -> str:
    """A short tag of the repository, so pull request 12 of two repositories on one runner
    are two scopes."""
    return hashlib.sha256(name.encode("utf-8", "replace")).hexdigest()[:8]


def _github(env: Mapping[str, str], read_file: Callable[[str], bytes]) -> tuple[bool, str, str]:
    event = env["GITHUB_EVENT_NAME"]
    if not event.startswith("pull_request"):
        return True, TRUSTED, f"GitHub {event} event"
    repo_tag = _repo_tag(env.get("GITHUB_REPOSITORY", ""))
    payload = _event_payload(env.get("GITHUB_EVENT_PATH"), read_file)
    pull = payload.get("pull_request") if isinstance(payload, dict) else None
    if not isinstance(pull, dict):
        return False, UNTRUSTED_UNKNOWN, f"GitHub {event} event without a readable payload"
    number = pull.get("number", payload.get("number"))
    if type(number) is not int or not 0 < number < 10**12:
        return False, UNTRUSTED_UNKNOWN, f"GitHub {event} event without a pull request number"
    scope = f"pr-{number}-{repo_tag}"
    head_repo = (pull.get("head") or {}).get("repo") if isinstance(pull.get("head"), dict) else None
    base_repo = (pull.get("base") or {}).get("repo") if isinstance(pull.get("base"), dict) else None
    if not isinstance(head_repo, dict):
        return False, scope, f"pull request #{number}: its head repository is gone or unknown"
    if head_repo.get("fork") is not False:
        return False, scope, f"pull request #{number} from a fork"
    if isinstance(base_repo, dict) and head_repo.get("full_name") != base_repo.get("full_name"):
        return False, scope, f"pull request #{number} from another repository"
    return True, TRUSTED, f"pull request #{number} from a branch of the same repository"


def _event_payload(path: str | None, read_file: Callable[[str], bytes]) -> Any:
    if not path:
        return None
    try:
        data = read_file(path)
        if len(data) > MAX_EVENT_BYTES:
            return None
        return json.loads(data)
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None


def _gitlab(env: Mapping[str, str]) -> tuple[bool, str, str]:
    iid = env.get("CI_MERGE_REQUEST_IID")
    if not iid:
        return True, TRUSTED, "GitLab pipeline outside a merge request"
    project = env.get("CI_PROJECT_ID", "")
    source = env.get("CI_MERGE_REQUEST_SOURCE_PROJECT_ID", "")
    if not _NUMBER_RE.fullmatch(iid):
        return False, UNTRUSTED_UNKNOWN, f"GitLab merge request with a malformed IID {iid!r}"
    scope = f"mr-{iid}-{_repo_tag(project)}"
    if not source or not project:
        return False, scope, f"merge request !{iid}: source project unknown"
    if source != project:
        return False, scope, f"merge request !{iid} from project {source}, not {project}"
    return True, TRUSTED, f"merge request !{iid} from the project itself"


# -- the fleet tier: who may push, and where an entry came from ----------------------------
PROVENANCE_FIELDS = ("host", "repository", "ref", "commit", "job")
MAX_PROVENANCE_CHARS = 200
_GITHUB_PROVENANCE = (
    ("repository", "GITHUB_REPOSITORY"),
    ("ref", "GITHUB_REF"),
    ("commit", "GITHUB_SHA"),
    ("job", "GITHUB_RUN_ID"),
)
_GITLAB_PROVENANCE = (
    ("repository", "CI_PROJECT_PATH"),
    ("ref", "CI_COMMIT_REF_NAME"),
    ("commit", "CI_COMMIT_SHA"),
    ("job", "CI_JOB_ID"),
)


def is_ci_job(env: Mapping[str, str]) -> bool:
    """Whether the environment is a CI job's (GitHub Actions or GitLab CI facts are set)."""
    return bool(env.get("GITHUB_EVENT_NAME") or env.get("GITLAB_CI") or env.get("CI_PROJECT_ID"))


def direct_trust(
    env: Mapping[str, str], read_file: Callable[[str], bytes]
) -> tuple[bool, str, str]:
    """The trust of a command that works in the store directly (root or the store's owner).

    Inside a CI job the job's facts decide, as for a job through the service. Outside one (an
    operator, Ansible, a timer) the caller already writes the trusted scope and can read the
    push credentials: refusing it a push would protect nothing."""
    if is_ci_job(env):
        return trust_from_env(env, read_file)
    return True, TRUSTED, "not a CI job: run by root or the store's owner directly"


def push_decision(trusted: bool, scope: str, reason: str) -> tuple[bool, str]:
    """(push, why): an untrusted job may pull from the fleet tier but never push to it, since
    what it built may be poisoned and every runner would restore it."""
    if not trusted:
        return False, f"not pushed: untrusted job (scope {scope}: {reason})"
    return True, f"trusted job ({reason})"


def clean_provenance(value: Any) -> dict[str, str]:
    """The known provenance fields of ``value`` (a job's request or registration), each a
    printable string of bounded length; anything else is dropped."""
    if not isinstance(value, dict):
        return {}
    clean = {}
    for name in PROVENANCE_FIELDS:
        text = value.get(name)
        if isinstance(text, str) and text:
            clean[name] = "".join(c if c.isprintable() else "?" for c in text)[
                :MAX_PROVENANCE_CHARS
            ]
    return clean


def provenance_from_env(env: Mapping[str, str], host: str | None = None) -> dict[str, str]:
    """Where an entry comes from: the host, and what the CI environment says of the build
    (repository, ref, commit, job id) when it says so."""
    facts: dict[str, str] = {}
    if host:
        facts["host"] = host
    if env.get("GITHUB_ACTIONS") or env.get("GITHUB_REPOSITORY"):
        pairs = _GITHUB_PROVENANCE
    elif env.get("GITLAB_CI") or env.get("CI_PROJECT_PATH"):
        pairs = _GITLAB_PROVENANCE
    else:
        pairs = ()
    for name, variable in pairs:
        if env.get(variable):
            facts[name] = env[variable]
    return clean_provenance(facts)
