"""Runs against a real `docket serve` started by tests/it/python_client.rs, which sets
DOCKET_TEST_SERVER (host:port) and DOCKET_TEST_DATA (its data directory)."""

import logging
import os
import pathlib
import time
import uuid

import grpc
import pytest

from docket.v1 import event_pb2, ledger_pb2
from docket_client.client import Client, annotation, load_signing_key, sign_event
from docket_client.verify import ReceiptError, Verifier, entry_payload, verify_receipt

DATA = pathlib.Path(os.environ["DOCKET_TEST_DATA"])
SERVER = os.environ["DOCKET_TEST_SERVER"]
# Event ids unique to this run, so the suite also passes against a server it ran against before.
RUN = uuid.uuid4().hex[:8]


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


def test_append_returns_a_receipt_that_verifies_offline(client, verifier, admin):
    env = sign_event(annotation(f"py-1-{RUN}", "admin", "repo/py", "from python", ticket="OPS-9"), admin)
    r = client.append(env)
    assert verify_receipt(r, verifier, env) == r.index
    assert not r.duplicate
    # A retry with identical bytes gets the original receipt.
    again = client.append(env)
    assert again.duplicate and again.index == r.index and again.inclusion_proof == r.inclusion_proof


def test_tampered_receipts_are_refused(client, verifier, admin):
    r = client.append(sign_event(annotation(f"py-2-{RUN}", "admin", "repo/py"), admin))
    bad = ledger_pb2.Receipt()
    bad.CopyFrom(r)
    bad.entry = bad.entry[:-1] + bytes([bad.entry[-1] ^ 1])
    with pytest.raises(ReceiptError, match="leaf hash"):
        verify_receipt(bad, verifier)
    bad.CopyFrom(r)
    bad.checkpoint.note = bad.checkpoint.note.replace("\n", "\n\n", 1)
    with pytest.raises(ReceiptError):
        verify_receipt(bad, verifier)


def test_server_refusals_name_the_problem(client, admin):
    env = sign_event(annotation(f"py-3-{RUN}", "admin", "repo/py"), admin)
    env.signatures[0].sig = bytes([env.signatures[0].sig[0] ^ 1]) + env.signatures[0].sig[1:]
    with pytest.raises(grpc.RpcError) as e:
        client.append(env)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no signature verifies" in e.value.details()
    future = annotation(f"py-4-{RUN}", "admin", "repo/py")
    future.claimed_time_unix_nanos = time.time_ns() + 3600 * 10**9
    with pytest.raises(grpc.RpcError) as e:
        client.append(sign_event(future, admin))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "claimed_time_unix_nanos" in e.value.details()


def test_checkpoint_and_entries_read_back(client, verifier, admin):
    r = client.append(sign_event(annotation(f"py-5-{RUN}", "admin", "repo/py"), admin))
    origin, size, root = verifier.checkpoint(client.checkpoint().note)
    assert origin == "docket.local/log" and size >= r.index + 1
    e = client.entry(r.index)
    assert e.entry == r.entry
    # The signed payload sits in the entry verbatim and still parses.
    payload_type, payload = entry_payload(e.entry)
    assert payload_type == "application/vnd.docket.event.v1+protobuf"
    decoded = event_pb2.Event()
    decoded.ParseFromString(payload)
    assert decoded.event_id == f"py-5-{RUN}" and decoded.signer == "admin"


def test_the_servers_certificate_must_name_the_host_connected_to(caplog):
    """No name override by default: the certificate is checked against the target's host.
    Overriding the name is dangerous, warns, and is checked against the name given."""
    tls = DATA / "tls"
    pems = [(tls / f).read_bytes() for f in ("ca.pem", "client.pem", "client.key")]
    with caplog.at_level(logging.WARNING, logger="docket_client"):
        c = Client(SERVER, *pems, dangerous_server_name_override="not-the-server.example")
    assert "dangerous_server_name_override" in caplog.text
    with c, pytest.raises(grpc.RpcError) as e:
        c.ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=20)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    with Client(SERVER, *pems) as c:
        assert c.checkpoint().tree_size >= 1


def test_key_files_that_are_no_usable_key_are_named(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    encrypted = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"))
    for name, content in [("garbage.pem", b"not a key"), ("empty.pem", b""),
                          ("encrypted.pem", encrypted)]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=f"{name}: not an unencrypted PKCS#8 PEM private key"):
            load_signing_key(path)
    with pytest.raises(ValueError, match="missing.pem"):
        load_signing_key(tmp_path / "missing.pem")
