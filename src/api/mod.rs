//! The only module that knows tonic, prost and `proto/`: generated types live
//! in [`pb`], [`convert`] turns wire types into domain types, and [`server`]
//! maps domain errors to `tonic::Status` in one place.

pub mod access;
pub mod codec;
pub mod convert;
mod governance;
pub mod known;
mod server;

pub use governance::{GovernanceApi, MAX_EXPORTS};

/// Longest status message sent back. A refusal often quotes the value it
/// refuses; quoted whole, a long one makes a status that gRPC clients
/// cannot read (their header limit is 8 to 16 KiB), so the reason is lost.
pub const MAX_STATUS_MESSAGE: usize = 2048;

/// `message` cut to [`MAX_STATUS_MESSAGE`] bytes (at a character boundary),
/// saying that it was cut and how long it was.
pub fn clip(message: String) -> String {
    if message.len() <= MAX_STATUS_MESSAGE {
        return message;
    }
    let mut end = MAX_STATUS_MESSAGE - 64;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}... (cut: the message was {} bytes)",
        &message[..end],
        message.len()
    )
}

/// A refusal status whose message is [`clip`]ped.
pub(crate) fn refusal(code: tonic::Code, message: impl Into<String>) -> tonic::Status {
    tonic::Status::new(code, clip(message.into()))
}
pub use server::{LedgerApi, MAX_TAIL_STREAMS};

/// Code generated from `proto/docket/v1/*.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("docket.v1");
    pub use clients::{governance_client, ledger_client};

    /// The generated clients, built apart so that they keep prost's own
    /// codec (see `build.rs`).
    mod clients {
        include!(concat!(env!("OUT_DIR"), "/clients/docket.v1.rs"));
    }

    /// The encoded file descriptor set, for the reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("docket_descriptor");
}
