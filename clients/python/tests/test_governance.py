"""The governance flow from Python alone, against the real `docket serve` that
tests/it/python_client.rs starts with tests/policy.toml as the genesis policy.

Every test registers its own principals and uses its own event ids, change ids and digests,
so the tests do not depend on each other or on their order (or on a fresh server)."""

import hashlib
import os
import pathlib
import time
import uuid
from types import SimpleNamespace

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from docket.v1 import event_pb2, governance_pb2
from docket_client.client import (
    EMPTY_TREE,
    Client,
    allowed,
    break_glass_reviewed,
    change_opened,
    change_reviewed,
    ci_run_reported,
    commit_observed,
    deploy_requested,
    load_signing_key,
    policy_approved,
    policy_proposed,
    principal_registered,
    raw_commit,
    sign_event,
)
from docket_client.verify import Verifier, verify_receipt

DATA = pathlib.Path(os.environ["DOCKET_TEST_DATA"])
SERVER = os.environ["DOCKET_TEST_SERVER"]
POLICY = pathlib.Path(__file__).with_name("policy.toml")


def uid() -> str:
    return uuid.uuid4().hex[:12]


def digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def commit_sha(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()


@pytest.fixture
def client():
    with Client.from_data_dir(SERVER, DATA) as c:
        yield c


@pytest.fixture
def verifier():
    return Verifier((DATA / "log.vkey").read_text())


@pytest.fixture
def admin():
    return load_signing_key(DATA / "admin.key")


def submit(client, event, key):
    """Signs, appends; returns (receipt, envelope)."""
    env = sign_event(event, key)
    return client.append(env), env


@pytest.fixture
def people(client, admin):
    """alice (dev, with an e-mail), bob (dev), dana (dev, with an e-mail: the author of the
    code the tests build) and a CI principal, registered by the admin with keys generated
    here; ids unique to the test."""
    s = uid()
    p = SimpleNamespace(
        s=s,
        alice=f"alice-{s}",
        bob=f"bob-{s}",
        dana=f"dana-{s}",
        dana_email=f"dana-{s}@example.com",
        ci=f"ci-{s}",
        keys={},
    )
    for who, kind, roles, emails in [
        (p.alice, "human", ["dev"], [f"Alice-{s}@Example.com"]),
        (p.bob, "human", ["dev"], []),
        (p.dana, "human", ["dev"], [p.dana_email]),
        (p.ci, "ci", ["ci"], []),
    ]:
        key = Ed25519PrivateKey.generate()
        p.keys[who] = key
        submit(client, principal_registered(f"reg-{who}", "admin", who, key, kind=kind, roles=roles, emails=emails), admin)
    return p


def observe(client, people, repo: str, seed: str, name: str = "Dana", email: str = "") -> str:
    """Records (signed by the CI principal, as `docket git ingest` in CI would) a commit
    authored and committed by ``email`` (dana's by default); returns its sha."""
    email = email or people.dana_email
    raw = raw_commit(EMPTY_TREE, commit_sha(seed), name, email, name, email, int(time.time()), f"change {seed}")
    ev = commit_observed(f"commit-{seed}", people.ci, repo, raw)
    submit(client, ev, people.keys[people.ci])
    return ev.commit_observed.sha


def reasons(d) -> str:
    return "\n".join(d.reasons)


def test_the_genesis_policy_is_in_force(client):
    p = client.policy()
    assert p.active.version == 1 and p.active.activated_at_index == 0
    assert p.active.text == POLICY.read_text()
    assert len(p.active.digest) == 64


def test_registered_principals_are_listed(client, people):
    by_id = {p.id: p for p in client.principals()}
    alice = by_id[people.alice]
    assert list(alice.emails) == [f"alice-{people.s}@example.com"]  # lowercased before signing
    assert list(alice.roles) == ["dev"] and alice.kind == event_pb2.PRINCIPAL_KIND_HUMAN
    assert by_id[people.ci].kind == event_pb2.PRINCIPAL_KIND_CI
    assert [k.public_key for k in alice.keys] == [
        people.keys[people.alice].public_key().public_bytes_raw()
    ]
    assert client.principal(people.bob).roles == ["dev"]


def test_approvals_promotion_and_rejection(client, verifier, people):
    s, alice, bob, ci = people.s, people.alice, people.bob, people.ci
    key = people.keys
    d = digest(s)
    chg = f"CHG-PY-{s}"
    repo = f"github.com/acme/py-{s}"

    # CI reports a passing run that built D from dana's commit; the change binds only D. The
    # commit is recorded first (as `git ingest` does): its author and committer (dana) may not
    # approve, and an unrecorded commit would leave them unknown, and deny.
    sha = observe(client, people, repo, s)
    submit(client, ci_run_reported(f"ci-{s}", ci, repo, sha, "passed", [d], provider="github-actions", run_id="1"), key[ci])
    r, _ = submit(client, change_opened(f"open-{s}", ci, chg, ["staging", "prod"], artifact_digests=[d], repository=repo, title="py"), key[ci])
    opened_at = r.index
    # Each review names the revision it saw (1): it counts for that revision only.
    a1, _ = submit(client, change_reviewed(f"approve-a-{s}", alice, chg, [d], revision=1), key[alice])
    b1, _ = submit(client, change_reviewed(f"approve-b-{s}", bob, chg, [d], revision=1), key[bob])

    # Prod before staging: denied for the promotion order alone.
    dec = client.authorize("prod", [d], ci, change_id=chg)
    assert dec.verdict == governance_pb2.VERDICT_DENY and not allowed(dec)
    assert dec.rule == "prod" and dec.change_id == chg and dec.change_revision == 1
    assert list(dec.reasons) == [f"{d} has not been deployed to staging yet; deploy it there first"]
    assert not dec.recorded

    # Deploy to staging: decided when appended, the decision comes back in the receipt, and
    # the receipt verifies offline.
    staged, env = submit(client, deploy_requested(f"deploy-stg-{s}", ci, "staging", [d]), key[ci])
    assert staged.decision.verdict == governance_pb2.VERDICT_ALLOW, reasons(staged.decision)
    assert staged.decision.rule == "staging" and staged.decision.change_id == chg
    assert staged.decision.recorded and staged.decision.index == staged.index
    assert staged.decision.log_size == staged.index
    assert verify_receipt(staged, verifier, env) == staged.index
    assert client.decision(staged.index) == staged.decision

    c = client.change(chg)
    assert list(c.requesters) == [ci] and c.revision == 1 and list(c.revision_indexes) == [opened_at]
    assert list(c.artifact_digests) == [d] and list(c.commits) == []
    assert sorted(c.environments) == ["prod", "staging"]
    assert [(v.reviewer, v.approve, v.index) for v in c.reviews] == [(alice, True, a1.index), (bob, True, b1.index)]
    assert list(c.deployments) == [staged.index]

    # Now prod is allowed, with both approvals counted.
    dec = client.authorize("prod", [d], ci)
    assert dec.verdict == governance_pb2.VERDICT_ALLOW, reasons(dec)
    assert dec.rule == "prod" and dec.change_id == chg
    assert [(a.approver, a.roles, a.index) for a in dec.counted] == [
        (alice, "dev", a1.index),
        (bob, "dev", b1.index),
    ]
    assert list(dec.not_counted) == []

    # bob's later rejection speaks for him: denied, naming it.
    b2, _ = submit(client, change_reviewed(f"reject-b-{s}", bob, chg, [d], approve=False, comment="breaks the export"), key[bob])
    dec = client.authorize("prod", [d], ci)
    assert dec.verdict == governance_pb2.VERDICT_DENY
    assert f"{bob} rejected revision 1 of change {chg} (entry {b2.index}): breaks the export" in dec.reasons
    assert "needs 2 approvals from distinct people; 1 counted" in dec.reasons
    assert [a.approver for a in dec.counted] == [alice]
    not_counted = {(n.approver, n.index): n.reason for n in dec.not_counted}
    assert not_counted[(bob, b2.index)] == "rejected this revision"
    assert not_counted[(bob, b1.index)] == f"superseded by {bob}'s later review (entry {b2.index})"

    # A deploy to prod now is recorded, denied.
    denied, _ = submit(client, deploy_requested(f"deploy-prod-{s}", ci, "prod", [d]), key[ci])
    assert denied.decision.verdict == governance_pb2.VERDICT_DENY and denied.decision.recorded
    assert list(client.change(chg).deployments) == [staged.index, denied.index]


def test_the_requester_does_not_count(client, people):
    s, alice, bob, ci = people.s, people.alice, people.bob, people.ci
    key = people.keys
    d = digest(s)
    chg = f"CHG-PY-SOD-{s}"
    sha = observe(client, people, "github.com/acme/py", s)
    submit(client, ci_run_reported(f"ci-{s}", ci, "github.com/acme/py", sha, "passed", [d]), key[ci])
    submit(client, change_opened(f"open-{s}", alice, chg, ["prod"], artifact_digests=[d]), key[alice])
    submit(client, change_reviewed(f"approve-a-{s}", alice, chg, [d]), key[alice])
    submit(client, change_reviewed(f"approve-b-{s}", bob, chg, [d]), key[bob])
    dec = client.authorize("prod", [d], ci)
    assert dec.verdict == governance_pb2.VERDICT_DENY
    assert [a.approver for a in dec.counted] == [bob]
    assert [(n.approver, n.reason) for n in dec.not_counted] == [(alice, f"{alice} requested the change")]
    assert "needs 2 approvals from distinct people; 1 counted" in dec.reasons


def test_ci_must_pass_for_the_exact_subject(client, people):
    s, alice, ci = people.s, people.alice, people.ci
    key = people.keys
    d, other = digest(s), digest(s + "-other")
    submit(client, change_opened(f"open-{s}", alice, f"CHG-PY-CI-{s}", ["staging"], artifact_digests=[d]), key[alice])
    dec = client.authorize("staging", [d], ci)
    assert list(dec.reasons) == [f"no passing CI run is recorded for {d}"]
    # A passing run for another digest does not help; a failed latest run denies.
    sha = observe(client, people, "github.com/acme/py", s)
    submit(client, ci_run_reported(f"ci-other-{s}", ci, "github.com/acme/py", sha, "passed", [other]), key[ci])
    assert list(client.authorize("staging", [d], ci).reasons) == [f"no passing CI run is recorded for {d}"]
    submit(client, ci_run_reported(f"ci-fail-{s}", ci, "github.com/acme/py", sha, "failed", [d], run_id="8"), key[ci])
    dec = client.authorize("staging", [d], ci)
    assert dec.verdict == governance_pb2.VERDICT_DENY
    assert len(dec.reasons) == 1 and dec.reasons[0].startswith(f"the latest CI run for {d} did not pass")
    submit(client, ci_run_reported(f"ci-pass-{s}", ci, "github.com/acme/py", sha, "passed", [d]), key[ci])
    assert allowed(client.authorize("staging", [d], ci))


def test_the_authors_of_the_commit_an_image_was_built_from_do_not_count(client, people):
    s, alice, bob, dana, ci = people.s, people.alice, people.bob, people.dana, people.ci
    key = people.keys
    d = digest(s)
    chg = f"CHG-PY-BUILT-{s}"
    repo = f"github.com/acme/py-built-{s}"
    # alice wrote the code (matched to her by e-mail, case aside); CI built D from it and the
    # change binds only D.
    raw = raw_commit(EMPTY_TREE, commit_sha(s), "Alice", f"Alice-{s}@Example.com", "Alice", f"Alice-{s}@Example.com", int(time.time()), f"alice's change {s}")
    observed = commit_observed(f"commit-{s}", ci, repo, raw)
    sha = observed.commit_observed.sha
    submit(client, ci_run_reported(f"ci-{s}", ci, repo, sha, "passed", [d]), key[ci])
    submit(client, change_opened(f"open-{s}", ci, chg, ["staging", "prod"], artifact_digests=[d], repository=repo), key[ci])
    a, _ = submit(client, change_reviewed(f"approve-a-{s}", alice, chg, [d]), key[alice])
    b, _ = submit(client, change_reviewed(f"approve-b-{s}", bob, chg, [d]), key[bob])
    staged, _ = submit(client, deploy_requested(f"deploy-stg-{s}", ci, "staging", [d]), key[ci])
    assert allowed(staged.decision), reasons(staged.decision)  # staging needs no approvals

    # Until the commit is recorded its author is unknown: denied, whoever approved.
    unobserved = f"commit {sha[:12]} (built into {d[:19]}) has not been observed (run `docket git ingest`), so its author is unknown"
    dec = client.authorize("prod", [d], ci)
    assert dec.verdict == governance_pb2.VERDICT_DENY
    assert unobserved in dec.reasons

    # Recorded: alice is its author, so her approval does not count, and one is missing.
    submit(client, observed, key[ci])
    dec = client.authorize("prod", [d], ci)
    assert dec.verdict == governance_pb2.VERDICT_DENY
    assert unobserved not in dec.reasons
    assert list(dec.reasons) == ["needs 2 approvals from distinct people; 1 counted"]
    assert [(x.approver, x.index) for x in dec.counted] == [(bob, b.index)]
    assert [(n.approver, n.index, n.reason) for n in dec.not_counted] == [
        (alice, a.index, f"{alice} is the author and committer of commit {sha[:12]} (built into {d[:19]})")
    ]

    # Someone who did not write it makes two.
    n, _ = submit(client, change_reviewed(f"approve-n-{s}", dana, chg, [d]), key[dana])
    dec = client.authorize("prod", [d], ci)
    assert dec.verdict == governance_pb2.VERDICT_ALLOW, reasons(dec)
    assert [(x.approver, x.index) for x in dec.counted] == [(bob, b.index), (dana, n.index)]
    assert [n.approver for n in dec.not_counted] == [alice]


def test_break_glass_opens_an_obligation_and_an_unjustified_review_is_a_violation(client, admin, people):
    s, alice = people.s, people.alice
    d = digest(s)
    # break_glass is not in the test policy's [permissions], so it belongs to admin.
    with pytest.raises(grpc.RpcError) as e:
        submit(client, deploy_requested(f"bg-nojust-{s}", "admin", "prod", [d], break_glass=True), admin)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "justification" in e.value.details()

    r, _ = submit(client, deploy_requested(f"bg-{s}", "admin", "prod", [d], break_glass=True, justification=f"INC-{s}"), admin)
    dec = r.decision
    assert dec.verdict == governance_pb2.VERDICT_ALLOW and dec.rule == "break-glass"
    assert [(o.not_by, o.description) for o in dec.obligations] == [
        ("admin", "post-hoc review of admin's break-glass deploy to prod")
    ]
    open_ = {o.deployment_index: o for o in client.obligations(status="open").obligations}
    assert open_[r.index].actor == "admin" and open_[r.index].justification == f"INC-{s}"
    assert list(open_[r.index].subjects) == [d]

    # bob (dev) may not break the glass.
    bob_try = client.authorize("prod", [d], people.bob, break_glass=True)
    assert not allowed(bob_try) and "invoked break-glass but holds none of the roles" in bob_try.reasons[0]

    # The admin may not review their own break-glass.
    with pytest.raises(grpc.RpcError) as e:
        submit(client, break_glass_reviewed(f"bgr-self-{s}", "admin", r.index), admin)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert 'someone other than "admin", who broke the glass' in e.value.details()

    rv, _ = submit(client, break_glass_reviewed(f"bgr-{s}", alice, r.index, justified=False, comment="no outage"), people.keys[alice])
    closed = {o.deployment_index: o for o in client.obligations(status="closed").obligations}
    assert closed[r.index].reviewer == alice and closed[r.index].review_index == rv.index
    assert not closed[r.index].justified and closed[r.index].comment == "no outage"
    assert r.index not in {o.deployment_index for o in client.obligations(status="open").obligations}
    v = [v for v in client.violations().violations if v.index == r.index]
    assert [x.kind for x in v] == ["unjustified-break-glass"]
    assert f"{alice} found it unjustified (entry {rv.index}): no outage" in v[0].description


def test_policy_proposals_are_listed_and_the_proposer_may_not_approve(client, admin):
    s = uid()
    base = client.policy().active.version
    text = POLICY.read_text() + f"# proposal {s}\n"
    r, _ = submit(client, policy_proposed(f"pp-{s}", "admin", f"policy-{s}", text, base, "a comment"), admin)
    props = {p.proposal_id: p for p in client.policy().proposals}
    p = props[f"policy-{s}"]
    assert (p.proposer, p.base_version, p.status, p.index) == ("admin", base, "pending", r.index)
    with pytest.raises(grpc.RpcError) as e:
        submit(client, policy_approved(f"pa-{s}", "admin", f"policy-{s}"), admin)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "proposer may not approve" in e.value.details()
    assert client.policy().active.version == base


def test_permissions_come_from_the_policy(client, people):
    s, bob = people.s, people.bob
    # report = ["ci"]: a dev may not report CI runs.
    with pytest.raises(grpc.RpcError) as e:
        submit(client, ci_run_reported(f"ci-bob-{s}", bob, "github.com/acme/py", commit_sha(s), "passed", [digest(s)]), people.keys[bob])
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "report" in e.value.details() and bob in e.value.details()
    # A review must name exactly the subjects of a revision.
    chg = f"CHG-PY-SEEN-{s}"
    submit(client, change_opened(f"open-{s}", bob, chg, ["prod"], artifact_digests=[digest(s)]), people.keys[bob])
    with pytest.raises(grpc.RpcError) as e:
        submit(client, change_reviewed(f"rev-{s}", people.alice, chg, [digest(s + "x")]), people.keys[people.alice])
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_invalid_requests_name_the_field(client, people):
    with pytest.raises(grpc.RpcError) as e:
        client.authorize("prod", [], people.ci)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "subjects" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.authorize("prod", ["not-a-digest"], people.ci)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "subjects" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.change(f"CHG-NONE-{uid()}")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        client.obligations(status="pending")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A change that does not exist is a deny, not an error.
    dec = client.authorize("prod", [digest(uid())], people.ci, change_id=f"CHG-NONE-{uid()}")
    assert dec.verdict == governance_pb2.VERDICT_DENY and "does not exist" in dec.reasons[0]
