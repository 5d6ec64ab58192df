"""Signing and the gRPC client."""

import pathlib
import time

import blake3
import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from docket.v1 import event_pb2, ledger_pb2, ledger_pb2_grpc

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
    """Reads a PKCS#8 PEM Ed25519 key, as written by `docket keygen`."""
    key = serialization.load_pem_private_key(pathlib.Path(path).read_bytes(), password=None)
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


class Client:
    """A Ledger client over mutual TLS."""

    def __init__(self, target: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, server_name: str = "localhost"):
        creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)
        options = [("grpc.ssl_target_name_override", server_name)]
        self._channel = grpc.secure_channel(target, creds, options=options)
        self.ledger = ledger_pb2_grpc.LedgerStub(self._channel)

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

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
