//! Docket: signed change events in a hash-chained, Merkle-verifiable log.
//!
//! # Layout
//! - [`api`]: the only module that knows tonic/prost; wire ⇄ domain; `Status` mapping.
//! - [`ledger`]: append-only entries, Merkle tree (RFC 9162 with BLAKE3), checkpoints, `Store` + sled.
//! - [`crypto`]: DSSE PAE, Ed25519 keys and key ids, C2SP signed notes.
//! - [`event`]: domain events, built only from validated wire bytes.
//! - [`policy`]: pure policy evaluation (language in docs/policy.md): facts in, verdict out.
//! - [`state`]: the event-sourced projections: identity (principals, roles, keys) and
//!   governance (policies, changes, reviews, commits, CI runs, deployments, obligations).
//! - [`ingest`]: adapters that turn outside data (git repositories) into events.
//! - [`evidence`]: evidence bundles: export, offline verification, OSCAL and the HTML report.
//! - [`service`]: admission checks, the single writer with group commit, read paths.
//! - [`verify`]: offline verification of a stored log.
//! - [`tls`]: rustls configuration and the rcgen development PKI.
//! - [`datadir`]: what `init` creates and `serve` opens.
//! - [`server`]: the gRPC server (ledger, health, reflection).
//! - [`cli`]: the `docket` subcommands.

#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod crypto;
pub mod datadir;
pub mod event;
pub mod evidence;
pub mod files;
pub mod ingest;
pub mod ledger;
pub mod policy;
pub mod server;
pub mod service;
pub mod state;
pub mod tls;
pub mod verify;
