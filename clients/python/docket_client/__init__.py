"""Docket client: build and sign events (DSSE over Ed25519), append them over mTLS, and verify
receipts offline against the log's verifier key.

- ``docket_client.client``: ``Client`` (Ledger and Governance), ``sign_event``,
  ``load_signing_key``, and the event builders (``annotation``, ``principal_registered``,
  ``commit_observed``, ``ci_run_reported``, ``ci_run_from_env``, ``change_opened``,
  ``change_amended``, ``change_reviewed``, ``deploy_requested``, ``break_glass_reviewed``,
  ``policy_proposed``, ``policy_approved``, ``identity_change_approved``, ``identity_change_withdrawn``), with ``raw_commit`` and ``git_commit_sha`` for
  the commit objects ``commit_observed`` records.
- ``docket_client.verify``: ``verify_receipt``, ``Verifier`` (offline, no network).
- ``docket_client.generate``: generates the ``docket.v1`` protobuf modules from proto/; they
  must be importable before ``docket_client.client`` is imported.
"""
