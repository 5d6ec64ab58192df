"""The event builders and the CI-variable reader; no server needed."""

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from docket.v1 import event_pb2
from docket_client.client import (
    EMPTY_TREE,
    CiEnv,
    break_glass_reviewed,
    change_amended,
    change_opened,
    change_reviewed,
    ci_env,
    ci_run_from_env,
    ci_run_reported,
    commit_observed,
    deploy_requested,
    git_commit_sha,
    policy_approved,
    identity_change_approved,
    identity_change_withdrawn,
    policy_proposed,
    principal_registered,
    public_key_bytes,
    raw_commit,
)

D = "sha256:" + "ab" * 32
C = "0123456789abcdef0123456789abcdef01234567"

# The variables of tests::ci_variables_of_github_and_gitlab in src/cli/gov.rs.
GITHUB = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_SERVER_URL": "https://github.com",
    "GITHUB_REPOSITORY": "acme/payments",
    "GITHUB_RUN_ID": "4242",
    "GITHUB_SHA": C,
    "GITHUB_WORKFLOW": "build",
    "GITHUB_REF": "refs/heads/main",
}
GITLAB = {
    "GITLAB_CI": "true",
    "CI_SERVER_HOST": "gitlab.example.com",
    "CI_PROJECT_PATH": "acme/payments",
    "CI_PIPELINE_ID": "77",
    "CI_PIPELINE_URL": "https://gitlab.example.com/acme/payments/-/pipelines/77",
    "CI_COMMIT_SHA": "89abcdef0123456789abcdef0123456789abcdef",
    "CI_JOB_NAME": "build-image",
    "CI_COMMIT_REF_NAME": "main",
}


def test_ci_variables_of_github_and_gitlab():
    assert ci_env(GITHUB) == CiEnv(
        provider="github-actions",
        repository="github.com/acme/payments",
        commit=C,
        pipeline="build",
        run_id="4242",
        url="https://github.com/acme/payments/actions/runs/4242",
        ref="refs/heads/main",
    )
    # A trailing slash on the server URL is not doubled.
    assert ci_env({**GITHUB, "GITHUB_SERVER_URL": "https://ghe.example.com/"}).url == (
        "https://ghe.example.com/acme/payments/actions/runs/4242"
    )
    # A re-run's attempt is in the URL; a missing server is the public one.
    assert ci_env({**GITHUB, "GITHUB_RUN_ATTEMPT": "2"}).url == (
        "https://github.com/acme/payments/actions/runs/4242/attempts/2"
    )
    assert ci_env({**GITHUB, "GITHUB_RUN_ATTEMPT": "1"}).url.endswith("/runs/4242")
    no_server = {k: v for k, v in GITHUB.items() if k != "GITHUB_SERVER_URL"}
    assert ci_env(no_server).repository == "github.com/acme/payments"
    no_host = {k: v for k, v in GITLAB.items() if k != "CI_SERVER_HOST"}
    assert ci_env(no_host).repository == "gitlab.com/acme/payments"
    e = ci_env(GITLAB)
    assert e.provider == "gitlab-ci"
    assert e.repository == "gitlab.example.com/acme/payments"
    assert e.commit == "89abcdef0123456789abcdef0123456789abcdef"
    assert e.pipeline == "build-image"
    assert e.run_id == "77"
    assert e.url.endswith("/pipelines/77")
    assert e.ref == "main"
    assert ci_env({**GITLAB, "CI_PIPELINE_NAME": "release"}).pipeline == "release"
    # Neither: nothing is guessed.
    assert ci_env({}) == CiEnv()
    assert ci_env({"GITHUB_ACTIONS": "false", "GITHUB_SHA": C}) == CiEnv()


def test_ci_run_from_env_fills_the_run_from_the_variables():
    ev = ci_run_from_env("ci-1", "ci", "passed", [D], environ=GITHUB)
    assert ev.WhichOneof("body") == "ci_run_reported"
    r = ev.ci_run_reported
    assert (r.repository, r.commit, r.provider, r.pipeline, r.run_id, r.ref) == (
        "github.com/acme/payments",
        C,
        "github-actions",
        "build",
        "4242",
        "refs/heads/main",
    )
    assert r.url == "https://github.com/acme/payments/actions/runs/4242"
    assert list(r.artifact_digests) == [D] and r.status == event_pb2.CI_STATUS_PASSED
    # An explicit value wins over the variable.
    assert ci_run_from_env("ci-2", "ci", "failed", [], environ=GITLAB, run_id="9").ci_run_reported.run_id == "9"
    # Outside CI the commit and repository must be given.
    with pytest.raises(ValueError, match="commit"):
        ci_run_from_env("ci-3", "ci", "passed", [D], environ={})
    with pytest.raises(ValueError, match="repository"):
        ci_run_from_env("ci-3", "ci", "passed", [D], environ={}, commit=C)
    ev = ci_run_from_env("ci-3", "ci", "canceled", [D], environ={}, commit=C, repository="r")
    assert ev.ci_run_reported.status == event_pb2.CI_STATUS_CANCELED and ev.ci_run_reported.provider == ""
    # Inside CI, a missing commit or repository names its variable.
    with pytest.raises(ValueError, match="^GITHUB_SHA is not set or empty"):
        ci_run_from_env("ci-4", "ci", "passed", [D], environ={**GITHUB, "GITHUB_SHA": ""})
    with pytest.raises(ValueError, match="^CI_PROJECT_PATH is not set or empty"):
        ci_run_from_env("ci-4", "ci", "passed", [D], environ={k: v for k, v in GITLAB.items() if k != "CI_PROJECT_PATH"})


def test_a_ci_variable_that_is_not_utf8_is_refused_by_name():
    # What os.environ holds for the bytes b"77\xff" (surrogateescape).
    garbled = b"77\xff".decode("utf-8", "surrogateescape")
    with pytest.raises(ValueError, match="^GITHUB_RUN_ID is set but not UTF-8"):
        ci_run_from_env("ci-5", "ci", "passed", [D], environ={**GITHUB, "GITHUB_RUN_ID": garbled})


def test_ci_status_words():
    assert ci_run_reported("e", "ci", "r", C, "failed").ci_run_reported.status == event_pb2.CI_STATUS_FAILED
    assert ci_run_reported("e", "ci", "r", C, "success").ci_run_reported.status == event_pb2.CI_STATUS_PASSED
    with pytest.raises(ValueError, match="expected passed, failed or canceled"):
        ci_run_reported("e", "ci", "r", C, "green")


def test_builders_set_exactly_one_body_and_the_claimed_time():
    key = Ed25519PrivateKey.generate()
    before = time.time_ns()
    events = {
        "principal_registered": principal_registered("e1", "admin", "alice", key, roles=["dev"], emails=["Alice@Example.COM"]),
        "change_opened": change_opened("e2", "ci", "CHG-1", ["staging", "prod"], artifact_digests=[D], title="t"),
        "change_amended": change_amended("e3", "ci", "CHG-1", commits=[C], reason="r"),
        "change_reviewed": change_reviewed("e4", "bob", "CHG-1", [D], approve=False, comment="no"),
        "ci_run_reported": ci_run_reported("e5", "ci", "r", C, "passed", [D]),
        "deploy_requested": deploy_requested("e6", "dave", "prod", [D], break_glass=True, justification="INC-7"),
        "break_glass_reviewed": break_glass_reviewed("e7", "carol", 42, justified=False, comment="c"),
        "policy_proposed": policy_proposed("e8", "admin", "p-1", "version = 1\n", 1, "d"),
        "policy_approved": policy_approved("e9", "bob", "p-1"),
        "identity_change_approved": identity_change_approved("e10", "root2", 12),
        "identity_change_withdrawn": identity_change_withdrawn("e11", "root", 12, reason="typo"),
    }
    after = time.time_ns()
    for body, ev in events.items():
        assert ev.WhichOneof("body") == body
        assert before <= ev.claimed_time_unix_nanos <= after
        # The bytes round-trip: what is signed is what the server decodes.
        again = event_pb2.Event()
        again.ParseFromString(ev.SerializeToString())
        assert again == ev
    p = events["principal_registered"].principal_registered.principal
    assert p.kind == event_pb2.PRINCIPAL_KIND_HUMAN
    assert list(p.public_keys) == [public_key_bytes(key)] and len(p.public_keys[0]) == 32
    assert list(p.emails) == ["alice@example.com"] and list(p.roles) == ["dev"]
    assert events["change_reviewed"].change_reviewed.verdict == event_pb2.REVIEW_VERDICT_REJECT
    assert change_reviewed("e", "bob", "CHG-1", D).change_reviewed.verdict == event_pb2.REVIEW_VERDICT_APPROVE
    # A single subject is one subject, not its characters.
    assert list(change_reviewed("e", "bob", "CHG-1", D).change_reviewed.seen_subjects) == [D]
    d = events["deploy_requested"].deploy_requested
    assert (d.action, d.environment, list(d.subjects), d.break_glass, d.justification) == (
        "deploy",
        "prod",
        [D],
        True,
        "INC-7",
    )
    assert events["break_glass_reviewed"].break_glass_reviewed.deployment_index == 42
    assert events["identity_change_approved"].identity_change_approved.entry_index == 12
    with pytest.raises(ValueError, match="entry_index"):
        identity_change_approved("e", "root2", 0)
    w = events["identity_change_withdrawn"].identity_change_withdrawn
    assert (w.entry_index, w.reason) == (12, "typo")
    with pytest.raises(ValueError, match="entry_index"):
        identity_change_withdrawn("e", "root", 0)
    assert not events["break_glass_reviewed"].break_glass_reviewed.justified
    ci = principal_registered("e", "admin", "ci", key.public_key(), kind="ci", roles=["ci"])
    assert ci.principal_registered.principal.kind == event_pb2.PRINCIPAL_KIND_CI
    with pytest.raises(ValueError, match="kind"):
        principal_registered("e", "admin", "x", key, kind="robot")
    with pytest.raises(ValueError, match="32 bytes"):
        principal_registered("e", "admin", "x", b"short")


# A commit object and the id `git hash-object -t commit --stdin` gives these exact bytes.
RAW = (
    b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
    b"parent 0123456789abcdef0123456789abcdef01234567\n"
    b"author Dana Example <dana@example.com> 1700000000 +0000\n"
    b"committer Carol Example <carol@example.com> 1700000000 +0000\n"
    b"\n"
    b"Add the thing\n"
)
RAW_SHA = "86f46a332160035196b88e54c094e49abfbbe825"


def test_commit_objects_and_their_git_ids():
    assert git_commit_sha(RAW) == RAW_SHA
    assert raw_commit(EMPTY_TREE, C, "Dana Example", "dana@example.com", "Carol Example", "carol@example.com", 1700000000, "Add the thing") == RAW
    # A root commit has no parent line; the message gets its trailing newline once.
    root = raw_commit(EMPTY_TREE, None, "Dana Example", "dana@example.com", "Dana Example", "dana@example.com", 1700000000, "Root\n")
    assert root == (
        b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
        b"author Dana Example <dana@example.com> 1700000000 +0000\n"
        b"committer Dana Example <dana@example.com> 1700000000 +0000\n\nRoot\n"
    )
    assert git_commit_sha(root) == "07cf812ae5ca347a64fca300d2e654df939d5008"
    two = raw_commit(EMPTY_TREE, [C, "89abcdef0123456789abcdef0123456789abcdef"], "a", "a@x", "b", "b@x", 1, "m")
    assert two.count(b"\nparent ") == 2


def test_commit_observed_carries_the_object_its_id_and_an_unsigned_verdict():
    before = time.time_ns()
    ev = commit_observed("co-1", "ci", "github.com/acme/payments", RAW)
    assert ev.WhichOneof("body") == "commit_observed"
    assert (ev.event_id, ev.signer) == ("co-1", "ci")
    assert before <= ev.claimed_time_unix_nanos <= time.time_ns()
    c = ev.commit_observed
    assert (c.repository, c.sha, c.raw_commit) == ("github.com/acme/payments", RAW_SHA, RAW)
    assert not c.HasField("changed_paths")
    assert c.HasField("signature")
    assert c.signature.format == event_pb2.SIGNATURE_FORMAT_NONE
    assert c.signature.verdict == event_pb2.SIGNATURE_VERDICT_UNSIGNED
    assert c.signature.detail and not c.signature.signer_identity
    again = event_pb2.Event()
    again.ParseFromString(ev.SerializeToString())
    assert again == ev

    paths = event_pb2.ChangedPaths(added=1, modified=2, paths=["a.txt", "b.txt", "c.txt"])
    sig = event_pb2.CommitSignature(
        format=event_pb2.SIGNATURE_FORMAT_SSH, verdict=event_pb2.SIGNATURE_VERDICT_VERIFIED, signer_identity="dana"
    )
    signed = RAW.replace(b"\n\n", b"\ngpgsig -----BEGIN SSH SIGNATURE-----\n U1NIU0lH\n -----END SSH SIGNATURE-----\n\n", 1)
    c = commit_observed("co-2", "ci", "r", signed, changed_paths=paths, signature=sig).commit_observed
    assert c.changed_paths == paths and c.signature == sig and c.sha == git_commit_sha(signed) != RAW_SHA
    # "unsigned" is refused for an object that carries a signature, as the server would.
    with pytest.raises(ValueError, match="gpgsig"):
        commit_observed("co-3", "ci", "r", signed)
    with pytest.raises(ValueError, match="unsigned"):
        commit_observed("co-4", "ci", "r", RAW, signature="verified")
