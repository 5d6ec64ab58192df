"""Docket client: build and sign events (DSSE over Ed25519), append them over mTLS, and verify
receipts offline against the log's verifier key.

- ``docket_client.client``: ``Client``, ``sign_event``, ``load_signing_key``, ``annotation``.
- ``docket_client.verify``: ``verify_receipt``, ``Verifier`` (offline, no network).
- ``docket_client.generate``: generates the ``docket.v1`` protobuf modules from proto/; they
  must be importable before ``docket_client.client`` is imported.
"""
