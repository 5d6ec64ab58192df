//! The protobuf codec of every generated service: prost's, except that a
//! request whose bytes are not the expected message is the client's fault.
//!
//! tonic-prost reports a message that does not decode as INTERNAL, which
//! reads as a server bug and tells a client nothing it can fix. Here it is
//! INVALID_ARGUMENT, and the message keeps prost's path to the field that
//! broke, innermost first ("Envelope.payload_type: AppendRequest.envelope:
//! invalid string value ..."), so the refusal names the field and the
//! reason like every other refusal of bad input. The generated clients keep
//! prost's codec (`build.rs`): a reply they cannot decode is no fault of
//! the request, and stays INTERNAL.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Start of the status message of every message that did not decode.
pub const UNDECODABLE: &str = "message could not be decoded";

/// `tonic_prost::ProstCodec` with decode failures reported as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoding<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoding(ProstDecoder::default())
    }
}

/// prost's decoder with its failures mapped by [`undecodable`].
#[derive(Debug)]
pub struct Decoding<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for Decoding<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(undecodable)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The status for a message prost could not decode. prost's decoder fails
/// only with INTERNAL carrying its `DecodeError`; anything else passes as is.
fn undecodable(status: Status) -> Status {
    if status.code() != tonic::Code::Internal {
        return status;
    }
    let detail = status.message();
    let detail = detail
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(detail);
    super::refusal(
        tonic::Code::InvalidArgument,
        format!("{UNDECODABLE}: {detail}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decode_failure_is_the_senders_fault_and_keeps_the_field_path() {
        let s = undecodable(Status::internal(
            "failed to decode Protobuf message: Envelope.payload_type: \
             AppendRequest.envelope: invalid string value: data is not UTF-8 encoded",
        ));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "message could not be decoded: Envelope.payload_type: \
             AppendRequest.envelope: invalid string value: data is not UTF-8 encoded"
        );
        let other = undecodable(Status::out_of_range("too large"));
        assert_eq!(other.code(), tonic::Code::OutOfRange);
    }
}
