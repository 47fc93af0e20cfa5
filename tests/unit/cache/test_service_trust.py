"""trust_from_env: what the runner set before job code ran decides the job's cache scope."""

from __future__ import annotations

import json

import pytest
from runnerkeep.cache.trust import trust_from_env


def reader(payload):
    def read(path):
        if payload is None:
            raise FileNotFoundError(path)
        return json.dumps(payload).encode()

    return read


def pr_payload(number, fork, head="me/app", base="me/app"):
    return {
        "number": number,
        "pull_request": {
            "number": number,
            "head": {"repo": {"fork": fork, "full_name": head}},
            "base": {"repo": {"fork": False, "full_name": base}},
        },
    }


GH = {"GITHUB_REPOSITORY": "me/app", "GITHUB_EVENT_PATH": "/x/event.json"}


def test_github_push_is_trusted():
    trusted, scope, _ = trust_from_env({**GH, "GITHUB_EVENT_NAME": "push"}, reader(None))
    assert (trusted, scope) == (True, "trusted")


@pytest.mark.parametrize("event", ["pull_request", "pull_request_target"])
def test_github_pr_from_fork_is_untrusted_in_its_own_scope(event):
    trusted, scope, reason = trust_from_env(
        {**GH, "GITHUB_EVENT_NAME": event}, reader(pr_payload(12, True, head="evil/app"))
    )
    assert trusted is False
    assert scope.startswith("pr-12-")
    assert "fork" in reason


def test_github_pr_from_same_repo_is_trusted():
    trusted, scope, _ = trust_from_env(
        {**GH, "GITHUB_EVENT_NAME": "pull_request"}, reader(pr_payload(5, False))
    )
    assert (trusted, scope) == (True, "trusted")


def test_github_pr_head_in_another_repo_not_marked_fork_is_untrusted():
    trusted, scope, _ = trust_from_env(
        {**GH, "GITHUB_EVENT_NAME": "pull_request"}, reader(pr_payload(5, False, head="x/app"))
    )
    assert trusted is False and scope.startswith("pr-5-")


@pytest.mark.parametrize("payload", [None, {}, {"pull_request": {"number": "12"}}, [1]])
def test_github_pr_without_readable_facts_is_untrusted(payload):
    trusted, _scope, _ = trust_from_env(
        {**GH, "GITHUB_EVENT_NAME": "pull_request"}, reader(payload)
    )
    assert trusted is False


def test_same_pr_number_in_two_repositories_is_two_scopes():
    payload = reader(pr_payload(12, True, head="evil/app"))
    _, a, _ = trust_from_env({**GH, "GITHUB_EVENT_NAME": "pull_request"}, payload)
    other = {**GH, "GITHUB_REPOSITORY": "me/other", "GITHUB_EVENT_NAME": "pull_request"}
    _, b, _ = trust_from_env(other, payload)
    assert a != b


def test_gitlab_mr_from_another_project_is_untrusted():
    env = {
        "GITLAB_CI": "true",
        "CI_PROJECT_ID": "10",
        "CI_MERGE_REQUEST_IID": "3",
        "CI_MERGE_REQUEST_SOURCE_PROJECT_ID": "99",
    }
    trusted, scope, reason = trust_from_env(env, reader(None))
    assert trusted is False and scope.startswith("mr-3-") and "99" in reason


def test_gitlab_mr_from_the_project_and_branch_pipelines_are_trusted():
    same = {
        "GITLAB_CI": "true",
        "CI_PROJECT_ID": "10",
        "CI_MERGE_REQUEST_IID": "3",
        "CI_MERGE_REQUEST_SOURCE_PROJECT_ID": "10",
    }
    assert trust_from_env(same, reader(None))[:2] == (True, "trusted")
    branch = {"GITLAB_CI": "true", "CI_PROJECT_ID": "10"}
    assert trust_from_env(branch, reader(None))[:2] == (True, "trusted")


def test_gitlab_mr_with_malformed_iid_or_unknown_source_is_untrusted():
    env = {"GITLAB_CI": "true", "CI_PROJECT_ID": "10", "CI_MERGE_REQUEST_IID": "3/../x"}
    assert trust_from_env(env, reader(None))[0] is False
    env = {"GITLAB_CI": "true", "CI_PROJECT_ID": "10", "CI_MERGE_REQUEST_IID": "3"}
    assert trust_from_env(env, reader(None))[0] is False


def test_no_ci_facts_is_untrusted():
    assert trust_from_env({}, reader(None))[0] is False
