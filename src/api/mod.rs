//! The only module that knows tonic, prost and `proto/`: generated types live
//! in [`pb`], [`convert`] turns wire types into domain types, and [`server`]
//! maps domain errors to `tonic::Status` in one place.

pub mod access;
pub mod convert;
mod governance;
mod server;

pub use governance::{GovernanceApi, MAX_EXPORTS};
pub use server::{LedgerApi, MAX_TAIL_STREAMS};

/// Code generated from `proto/docket/v1/*.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("docket.v1");

    /// The encoded file descriptor set, for the reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("docket_descriptor");
}
