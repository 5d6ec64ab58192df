"""Signing, event builders and the gRPC client."""

import hashlib
import logging
import os
import pathlib
import time
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Union

import blake3
import grpc
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from docket.v1 import event_pb2, governance_pb2, governance_pb2_grpc, ledger_pb2, ledger_pb2_grpc

PAYLOAD_TYPE = "application/vnd.docket.event.v1+protobuf"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keyid(key: Ed25519PrivateKey) -> str:
    """Docket's keyid hint: hex of the first 8 bytes of BLAKE3(public key)."""
    return blake3.blake3(_raw_public(key)).digest()[:8].hex()


def load_signing_key(path) -> Ed25519PrivateKey:
    """Reads a PKCS#8 PEM Ed25519 key, as written by `docket keygen`. Every
    failure is a ValueError naming the file."""
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(
            f"{path}: not an unencrypted PKCS#8 PEM private key, as `docket keygen` writes ({exc})"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def sign_event(event: "event_pb2.Event", key: Ed25519PrivateKey) -> "event_pb2.Envelope":
    """Serializes the event once and signs exactly those bytes."""
    payload = event.SerializeToString()
    sig = key.sign(pae(PAYLOAD_TYPE, payload))
    return event_pb2.Envelope(
        payload_type=PAYLOAD_TYPE,
        payload=payload,
        signatures=[event_pb2.Signature(keyid=keyid(key), sig=sig)],
    )


def annotation(event_id: str, signer: str, subject: str, text: str = "", kind: str = "note", **attributes) -> "event_pb2.Event":
    """A free-form signed statement about a subject."""
    return event_pb2.Event(
        event_id=event_id,
        claimed_time_unix_nanos=time.time_ns(),
        signer=signer,
        annotation=event_pb2.Annotation(subject=subject, kind=kind, text=text, attributes=attributes),
    )


# === governance event builders ===
#
# Each returns an unsigned ``event_pb2.Event`` claimed at ``time.time_ns()``; sign it with
# ``sign_event`` and submit it with ``Client.append``. Field rules (id syntax, list limits) are
# the server's (docs/ledger-format.md §3); a builder only checks what it must translate.

CI_STATUSES = {
    "passed": event_pb2.CI_STATUS_PASSED,
    "success": event_pb2.CI_STATUS_PASSED,
    "failed": event_pb2.CI_STATUS_FAILED,
    "failure": event_pb2.CI_STATUS_FAILED,
    "canceled": event_pb2.CI_STATUS_CANCELED,
    "cancelled": event_pb2.CI_STATUS_CANCELED,
}

PRINCIPAL_KINDS = {
    "human": event_pb2.PRINCIPAL_KIND_HUMAN,
    "service": event_pb2.PRINCIPAL_KIND_SERVICE,
    "ci": event_pb2.PRINCIPAL_KIND_CI,
    "cluster": event_pb2.PRINCIPAL_KIND_CLUSTER,
}

PublicKeyLike = Union[bytes, Ed25519PrivateKey, Ed25519PublicKey]


def _strs(values) -> list:
    """A list of strings; a single string is one item, not its characters."""
    if values is None:
        return []
    if isinstance(values, str):
        return [values]
    return list(values)


def _event(event_id: str, signer: str, **body) -> "event_pb2.Event":
    return event_pb2.Event(event_id=event_id, claimed_time_unix_nanos=time.time_ns(), signer=signer, **body)


def public_key_bytes(key: PublicKeyLike) -> bytes:
    """The raw 32-byte Ed25519 public key of a private key, a public key, or raw bytes."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if isinstance(key, Ed25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raw = bytes(key)
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, not {len(raw)}")
    return raw


def _ci_status(status) -> int:
    if isinstance(status, int):
        return status
    try:
        return CI_STATUSES[status]
    except KeyError:
        raise ValueError(f"status {status!r}: expected passed, failed or canceled") from None


def _principal_kind(kind) -> int:
    if isinstance(kind, int):
        return kind
    try:
        return PRINCIPAL_KINDS[kind.lower()]
    except KeyError:
        raise ValueError(f"kind {kind!r}: expected human, service, ci or cluster") from None


def principal_registered(
    event_id: str,
    signer: str,
    principal_id: str,
    public_keys,
    kind="human",
    roles: Iterable[str] = (),
    emails: Iterable[str] = (),
    display_name: str = "",
) -> "event_pb2.Event":
    """Registers a principal (needs `register_principals`). ``public_keys``: one key or a list
    (private keys, public keys or raw bytes); ``kind``: human, service, ci, cluster or a
    ``PrincipalKind`` value. E-mails are lowercased, as the log requires."""
    if isinstance(public_keys, (bytes, bytearray, Ed25519PrivateKey, Ed25519PublicKey)):
        public_keys = [public_keys]
    return _event(
        event_id,
        signer,
        principal_registered=event_pb2.PrincipalRegistered(
            principal=event_pb2.Principal(
                id=principal_id,
                kind=_principal_kind(kind),
                display_name=display_name,
                roles=_strs(roles),
                public_keys=[public_key_bytes(k) for k in public_keys],
                emails=[e.lower() for e in _strs(emails)],
            )
        ),
    )


def ci_run_reported(
    event_id: str,
    signer: str,
    repository: str,
    commit: str,
    status,
    artifact_digests: Iterable[str] = (),
    provider: str = "",
    pipeline: str = "",
    run_id: str = "",
    url: str = "",
    ref: str = "",
) -> "event_pb2.Event":
    """A finished CI run (needs `report`); the signer becomes the CI identity that built
    ``commit`` and ``artifact_digests``. ``status``: "passed", "failed" or "canceled"."""
    return _event(
        event_id,
        signer,
        ci_run_reported=event_pb2.CiRunReported(
            repository=repository,
            commit=commit,
            artifact_digests=_strs(artifact_digests),
            status=_ci_status(status),
            provider=provider,
            pipeline=pipeline,
            run_id=run_id,
            url=url,
            ref=ref,
        ),
    )


# The id of git's empty tree, a valid ``tree`` for a commit made up in a test.
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


def git_commit_sha(raw: bytes) -> str:
    """The SHA-1 object id git gives a commit whose content (as ``git cat-file commit``
    prints it) is ``raw``: hex SHA-1 of ``b"commit <len>\\0" + raw``."""
    raw = bytes(raw)
    return hashlib.sha1(b"commit " + str(len(raw)).encode() + b"\0" + raw).hexdigest()


def raw_commit(
    tree: str,
    parents,
    author_name: str,
    author_email: str,
    committer_name: str,
    committer_email: str,
    when_unix: int,
    message: str,
) -> bytes:
    """The content of an unsigned git commit object (``tree``, one ``parent`` line per
    parent, ``author`` and ``committer`` at ``when_unix`` +0000, a blank line, ``message``
    ending in a newline). ``parents``: one id, a list, or None/() for a root commit;
    ``tree`` may be ``EMPTY_TREE``. Ids are not checked here; the server does."""
    lines = [f"tree {tree}"]
    lines += [f"parent {p}" for p in _strs(parents)]
    lines.append(f"author {author_name} <{author_email}> {int(when_unix)} +0000")
    lines.append(f"committer {committer_name} <{committer_email}> {int(when_unix)} +0000")
    if not message.endswith("\n"):
        message += "\n"
    return ("\n".join(lines) + "\n\n" + message).encode()


def _has_signature_header(raw: bytes) -> bool:
    headers = raw.split(b"\n\n", 1)[0]
    return any(line.startswith((b"gpgsig ", b"gpgsig-sha256 ")) for line in headers.split(b"\n"))


def commit_observed(
    event_id: str,
    signer: str,
    repository: str,
    raw_commit: bytes,
    changed_paths: Optional["event_pb2.ChangedPaths"] = None,
    signature: Union[str, "event_pb2.CommitSignature"] = "unsigned",
) -> "event_pb2.Event":
    """Records a git commit (needs `report`), as `docket git ingest` does: its author and
    committer are then known, and matched to principals by e-mail for segregation of duties.
    ``raw_commit``: the object's content (e.g. from ``raw_commit(...)``); the sha is computed
    from it (``git_commit_sha``, SHA-1 repositories). ``changed_paths``: an
    ``event_pb2.ChangedPaths`` or None. ``signature``: "unsigned" (format none, verdict
    unsigned; ValueError if the object has a ``gpgsig`` header) or an
    ``event_pb2.CommitSignature`` holding the ingester's verdict."""
    raw = bytes(raw_commit)
    if isinstance(signature, str):
        if signature != "unsigned":
            raise ValueError(f"signature {signature!r}: expected \"unsigned\" or a CommitSignature")
        if _has_signature_header(raw):
            raise ValueError("the commit object carries a signature (gpgsig); pass a CommitSignature verdict")
        signature = event_pb2.CommitSignature(
            format=event_pb2.SIGNATURE_FORMAT_NONE,
            verdict=event_pb2.SIGNATURE_VERDICT_UNSIGNED,
            detail="the commit carries no signature",
        )
    return _event(
        event_id,
        signer,
        commit_observed=event_pb2.CommitObserved(
            repository=repository,
            sha=git_commit_sha(raw),
            raw_commit=raw,
            changed_paths=changed_paths,
            signature=signature,
        ),
    )


@dataclass(frozen=True)
class CiEnv:
    """What a CI system's environment says about the current run (empty outside CI)."""

    provider: str = ""
    repository: str = ""
    commit: str = ""
    pipeline: str = ""
    run_id: str = ""
    url: str = ""
    ref: str = ""


def ci_env(environ: Mapping[str, str] = os.environ) -> CiEnv:
    """Reads GitHub Actions or GitLab CI variables exactly as `docket ci report` does
    (``ci_env`` in src/cli/gov.rs); outside both, nothing is guessed."""

    def v(k: str) -> str:
        value = environ.get(k) or ""
        # os.environ carries bytes that are not UTF-8 as lone surrogates
        # (surrogateescape): refuse them by name, as the CLI does, instead of
        # failing later in the encoder without saying which variable.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{k} is set but not UTF-8; Docket records CI facts as text: fix the variable, "
                "or unset it and pass the value as a keyword"
            ) from None
        return value

    if v("GITHUB_ACTIONS") == "true":
        server = v("GITHUB_SERVER_URL") or "https://github.com"
        _, sep, rest = server.partition("://")
        host = (rest if sep else server).rstrip("/")
        repo = v("GITHUB_REPOSITORY")
        run = v("GITHUB_RUN_ID")
        attempt = v("GITHUB_RUN_ATTEMPT")
        attempt = f"/attempts/{attempt}" if attempt.isascii() and attempt.isdigit() and attempt != "1" else ""
        return CiEnv(
            provider="github-actions",
            repository=repo if not host or not repo else f"{host}/{repo}",
            commit=v("GITHUB_SHA"),
            pipeline=v("GITHUB_WORKFLOW"),
            run_id=run,
            url="" if not server or not repo or not run else f"{server.rstrip('/')}/{repo}/actions/runs/{run}{attempt}",
            ref=v("GITHUB_REF"),
        )
    if v("GITLAB_CI") == "true":
        host = v("CI_SERVER_HOST") or "gitlab.com"
        project = v("CI_PROJECT_PATH")
        return CiEnv(
            provider="gitlab-ci",
            repository=project if not host or not project else f"{host}/{project}",
            commit=v("CI_COMMIT_SHA"),
            pipeline=v("CI_PIPELINE_NAME") or v("CI_JOB_NAME"),
            run_id=v("CI_PIPELINE_ID"),
            url=v("CI_PIPELINE_URL"),
            ref=v("CI_COMMIT_REF_NAME"),
        )
    return CiEnv()


def ci_run_from_env(
    event_id: str,
    signer: str,
    status,
    digests: Iterable[str] = (),
    environ: Mapping[str, str] = os.environ,
    *,
    commit: Optional[str] = None,
    repository: Optional[str] = None,
    provider: Optional[str] = None,
    pipeline: Optional[str] = None,
    run_id: Optional[str] = None,
    url: Optional[str] = None,
    ref: Optional[str] = None,
) -> "event_pb2.Event":
    """``ci_run_reported`` with the commit, repository, provider, pipeline, run id, URL and ref
    taken from GitHub Actions / GitLab CI variables; a keyword given here overrides its
    variable. Outside CI, ``commit`` and ``repository`` must be given (ValueError otherwise)."""
    env = ci_env(environ)
    commit_var, repository_var = {
        "github-actions": ("GITHUB_SHA", "GITHUB_REPOSITORY"),
        "gitlab-ci": ("CI_COMMIT_SHA", "CI_PROJECT_PATH"),
    }.get(env.provider, (None, None))
    commit = env.commit if commit is None else commit
    if not commit:
        raise ValueError(
            f"{commit_var} is not set or empty, so the commit this {env.provider} run built is unknown: "
            "pass commit=" if commit_var else "commit is required outside GitHub Actions and GitLab CI"
        )
    repository = env.repository if repository is None else repository
    if not repository:
        raise ValueError(
            f"{repository_var} is not set or empty, so the repository this {env.provider} run built is "
            "unknown: pass repository=" if repository_var
            else "repository is required outside GitHub Actions and GitLab CI"
        )
    return ci_run_reported(
        event_id,
        signer,
        repository=repository,
        commit=commit,
        status=status,
        artifact_digests=digests,
        provider=env.provider if provider is None else provider,
        pipeline=env.pipeline if pipeline is None else pipeline,
        run_id=env.run_id if run_id is None else run_id,
        url=env.url if url is None else url,
        ref=env.ref if ref is None else ref,
    )


def change_opened(
    event_id: str,
    signer: str,
    change_id: str,
    environments: Iterable[str],
    commits: Iterable[str] = (),
    artifact_digests: Iterable[str] = (),
    title: str = "",
    repository: str = "",
    ticket: str = "",
    description: str = "",
) -> "event_pb2.Event":
    """Opens a change binding commits and/or digests to environments (needs `open_change`);
    the signer becomes its requester."""
    return _event(
        event_id,
        signer,
        change_opened=event_pb2.ChangeOpened(
            change_id=change_id,
            title=title,
            repository=repository,
            commits=_strs(commits),
            artifact_digests=_strs(artifact_digests),
            environments=_strs(environments),
            ticket=ticket,
            description=description,
        ),
    )


def change_amended(
    event_id: str,
    signer: str,
    change_id: str,
    commits: Iterable[str] = (),
    artifact_digests: Iterable[str] = (),
    environments: Iterable[str] = (),
    reason: str = "",
) -> "event_pb2.Event":
    """A new revision of a change (empty ``environments`` keeps them); approvals of earlier
    revisions become stale."""
    return _event(
        event_id,
        signer,
        change_amended=event_pb2.ChangeAmended(
            change_id=change_id,
            commits=_strs(commits),
            artifact_digests=_strs(artifact_digests),
            environments=_strs(environments),
            reason=reason,
        ),
    )


def change_reviewed(
    event_id: str,
    signer: str,
    change_id: str,
    seen_subjects: Iterable[str],
    approve: bool = True,
    comment: str = "",
    revision: int = 0,
) -> "event_pb2.Event":
    """An approval (``approve=True``) or rejection of a change (needs `approve`).
    ``seen_subjects`` must be exactly the commits and digests of a revision of the change,
    e.g. ``[*c.commits, *c.artifact_digests]`` of ``Client.change(change_id)``. Pass that
    change's ``c.revision`` as ``revision`` so the review counts for that revision only: if
    the change is amended before the review is recorded, the server refuses it instead of
    counting it for a revision the reviewer never saw (0 leaves the revision unstated)."""
    return _event(
        event_id,
        signer,
        change_reviewed=event_pb2.ChangeReviewed(
            change_id=change_id,
            seen_subjects=_strs(seen_subjects),
            verdict=event_pb2.REVIEW_VERDICT_APPROVE if approve else event_pb2.REVIEW_VERDICT_REJECT,
            comment=comment,
            revision=revision,
        ),
    )


def deploy_requested(
    event_id: str,
    signer: str,
    environment: str,
    subjects: Iterable[str],
    change_id: str = "",
    action: str = "deploy",
    repository: str = "",
    kind: str = "",
    namespace: str = "",
    break_glass: bool = False,
    justification: str = "",
) -> "event_pb2.Event":
    """A deployment about to happen, with the signer as the actor. The server decides it when
    it appends the entry and returns the decision in ``Receipt.decision``; a denied deploy is
    recorded too. ``break_glass`` needs a ``justification``."""
    return _event(
        event_id,
        signer,
        deploy_requested=event_pb2.DeployRequested(
            action=action,
            environment=environment,
            repository=repository,
            kind=kind,
            namespace=namespace,
            subjects=_strs(subjects),
            change_id=change_id,
            break_glass=break_glass,
            justification=justification,
        ),
    )


def break_glass_reviewed(
    event_id: str, signer: str, deployment_index: int, justified: bool = True, comment: str = ""
) -> "event_pb2.Event":
    """Closes the review obligation of the break-glass deploy at ``deployment_index``; by a
    human with `approve` other than who broke the glass."""
    return _event(
        event_id,
        signer,
        break_glass_reviewed=event_pb2.BreakGlassReviewed(
            deployment_index=deployment_index, justified=justified, comment=comment
        ),
    )


def policy_proposed(
    event_id: str, signer: str, proposal_id: str, text: str, base_version: int, description: str = ""
) -> "event_pb2.Event":
    """Proposes a new policy (needs `propose_policy`); ``base_version`` must be the version in
    force, ``Client.policy().active.version``."""
    return _event(
        event_id,
        signer,
        policy_proposed=event_pb2.PolicyProposed(
            proposal_id=proposal_id, text=text, base_version=base_version, description=description
        ),
    )


def policy_approved(event_id: str, signer: str, proposal_id: str) -> "event_pb2.Event":
    """Approves a policy proposal (needs `approve_policy`)."""
    return _event(event_id, signer, policy_approved=event_pb2.PolicyApproved(proposal_id=proposal_id))


def identity_change_approved(event_id: str, signer: str, entry_index: int) -> "event_pb2.Event":
    """Approves the identity change recorded at ``entry_index``, which waits for a second
    identity administrator (a human whose roles give ``register_principals`` or
    ``change_roles``, other than its signer); ``Client.principals()`` lists the waiting ones in
    ``identity_changes``."""
    if entry_index < 1:
        raise ValueError("entry_index: entry 0 is the genesis, which waits for no approval")
    return _event(
        event_id,
        signer,
        identity_change_approved=event_pb2.IdentityChangeApproved(entry_index=entry_index),
    )


def identity_change_withdrawn(
    event_id: str, signer: str, entry_index: int, reason: str = ""
) -> "event_pb2.Event":
    """Withdraws the identity change recorded at ``entry_index`` while it still waits for a
    second identity administrator, so that no approval can apply it (only its proposer
    may)."""
    if entry_index < 1:
        raise ValueError("entry_index: entry 0 is the genesis, which waits for no approval")
    return _event(
        event_id,
        signer,
        identity_change_withdrawn=event_pb2.IdentityChangeWithdrawn(
            entry_index=entry_index, reason=reason
        ),
    )


def allowed(decision: "governance_pb2.Decision") -> bool:
    """True when the decision is allow."""
    return decision.verdict == governance_pb2.VERDICT_ALLOW


class Client:
    """A Ledger and Governance client over mutual TLS (one channel for both)."""

    def __init__(self, target: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes,
                 dangerous_server_name_override: "str | None" = None):
        """`target` is host:port; the server's certificate must name that host
        (a DNS name or an IP address), as the `docket` CLI requires.
        `dangerous_server_name_override` checks it against another name
        instead, so any certificate of the CA that names it passes for any
        host: only for a server reached through an address its certificate
        does not name. It logs a warning."""
        creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)
        options = []
        if dangerous_server_name_override is not None:
            logging.getLogger("docket_client").warning(
                "dangerous_server_name_override: the server's certificate is checked against %r, "
                "not against %r, the host connected to", dangerous_server_name_override, target)
            options.append(("grpc.ssl_target_name_override", dangerous_server_name_override))
        self._channel = grpc.secure_channel(target, creds, options=options)
        self.ledger = ledger_pb2_grpc.LedgerStub(self._channel)
        self.governance = governance_pb2_grpc.GovernanceStub(self._channel)

    @classmethod
    def from_data_dir(cls, target: str, data_dir, cert: str = "client") -> "Client":
        tls = pathlib.Path(data_dir) / "tls"
        return cls(
            target,
            (tls / "ca.pem").read_bytes(),
            (tls / f"{cert}.pem").read_bytes(),
            (tls / f"{cert}.key").read_bytes(),
        )

    def append(self, envelope: "event_pb2.Envelope") -> "ledger_pb2.Receipt":
        return self.ledger.Append(ledger_pb2.AppendRequest(envelope=envelope))

    def checkpoint(self) -> "ledger_pb2.Checkpoint":
        return self.ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest())

    def entry(self, index: int) -> "ledger_pb2.EntryResponse":
        return self.ledger.GetEntry(ledger_pb2.GetEntryRequest(index=index))

    def principal(self, principal_id: str) -> "ledger_pb2.PrincipalState":
        return self.ledger.GetPrincipal(ledger_pb2.GetPrincipalRequest(id=principal_id))

    def principals(self) -> list:
        """Every principal (``ledger_pb2.PrincipalState``), in id order."""
        return list(self.ledger.ListPrincipals(ledger_pb2.ListPrincipalsRequest()).principals)

    # --- governance (reads only: facts arrive as signed events through append) ---

    def authorize(
        self,
        environment: str,
        subjects: Iterable[str],
        actor: str,
        change_id: str = "",
        action: str = "deploy",
        break_glass: bool = False,
        repository: str = "",
        kind: str = "",
        namespace: str = "",
    ) -> "governance_pb2.Decision":
        """Would ``actor`` be allowed to deploy ``subjects`` to ``environment`` now? Records
        nothing. A malformed request raises grpc.RpcError (INVALID_ARGUMENT)."""
        return self.governance.Authorize(
            governance_pb2.AuthorizeRequest(
                action=action,
                environment=environment,
                repository=repository,
                kind=kind,
                namespace=namespace,
                subjects=_strs(subjects),
                change_id=change_id,
                actor=actor,
                break_glass=break_glass,
            )
        )

    def decision(self, index: int) -> "governance_pb2.Decision":
        """The decision recorded with the DeployRequested entry at ``index``."""
        return self.governance.GetDecision(governance_pb2.GetDecisionRequest(index=index))

    def change(self, change_id: str) -> "governance_pb2.ChangeState":
        return self.governance.GetChange(governance_pb2.GetChangeRequest(change_id=change_id))

    def policy(self) -> "governance_pb2.PolicyState":
        """The policy in force (``.active``), earlier versions and the proposals."""
        return self.governance.GetPolicy(governance_pb2.GetPolicyRequest())

    def obligations(self, status: str = "") -> "governance_pb2.ListObligationsResponse":
        """Break-glass review obligations (``.obligations``, ``.as_of_unix_nanos``); ``status``:
        "", "open", "overdue", "closed" or "closed-late"."""
        return self.governance.ListObligations(governance_pb2.ListObligationsRequest(status=status))

    def violations(self) -> "governance_pb2.ListViolationsResponse":
        """Overdue or late reviews and unjustified break-glass (``.violations``)."""
        return self.governance.ListViolations(governance_pb2.ListViolationsRequest())

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
