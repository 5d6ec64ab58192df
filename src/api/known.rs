//! Refuses new event payloads that carry protobuf fields this build does
//! not know.
//!
//! prost skips unknown fields, and so does replay (ledger-format §3): the
//! bytes are stored as signed. But a field number this build does not know
//! may be one a later build gives a meaning (numbers 29–99 of `Event` are
//! reserved for bodies to come), and then the same signed bytes would
//! replay as a different event. So an append is refused if its payload has
//! such a field anywhere, found by walking the wire format against the
//! descriptors compiled into the binary. Entries already in a log are not
//! re-checked.

use std::collections::HashMap;
use std::sync::LazyLock;

use prost::Message as _;
use prost::bytes::Buf as _;
use prost_types::DescriptorProto;
use prost_types::field_descriptor_proto::{Label, Type};

use super::convert::InvalidEvent;
use super::pb;

/// Every message of the compiled protos by full name (`.docket.v1.Event`).
static MESSAGES: LazyLock<HashMap<String, DescriptorProto>> = LazyLock::new(|| {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set compiled into the binary decodes");
    let mut out = HashMap::new();
    for file in set.file {
        let package = file.package().to_owned();
        for m in file.message_type {
            add(&mut out, format!(".{package}.{}", m.name()), m);
        }
    }
    out
});

fn add(out: &mut HashMap<String, DescriptorProto>, name: String, m: DescriptorProto) {
    for nested in &m.nested_type {
        add(out, format!("{name}.{}", nested.name()), nested.clone());
    }
    out.insert(name, m);
}

/// A message's fields, compiled once from [`MESSAGES`] so that a scan
/// neither hashes type names nor allocates.
struct Shape {
    /// Full name without the leading dot (`docket.v1.Event`).
    name: String,
    /// By field number; `None` for numbers the message does not define.
    fields: Vec<Option<FieldShape>>,
}

struct FieldShape {
    name: String,
    /// The index in [`SHAPES`] of a message-typed field's type.
    message: Option<usize>,
    repeated: bool,
}

/// Every message's shape, and the index of `Event`'s.
static SHAPES: LazyLock<(Vec<Shape>, usize)> = LazyLock::new(|| {
    let names: Vec<&String> = MESSAGES.keys().collect();
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let shapes = names
        .iter()
        .map(|n| {
            let m = &MESSAGES[*n];
            let top = m
                .field
                .iter()
                .filter_map(|f| usize::try_from(f.number()).ok())
                .max()
                .unwrap_or(0);
            let mut fields: Vec<Option<FieldShape>> = (0..=top).map(|_| None).collect();
            for f in &m.field {
                if let Ok(n) = usize::try_from(f.number()) {
                    fields[n] = Some(FieldShape {
                        name: f.name().to_owned(),
                        message: (f.r#type() == Type::Message)
                            .then(|| index.get(f.type_name()).copied())
                            .flatten(),
                        repeated: f.label() == Label::Repeated,
                    });
                }
            }
            Shape {
                name: n[1..].to_owned(),
                fields,
            }
        })
        .collect();
    (shapes, index[".docket.v1.Event"])
});

/// Checks that `payload`, an `Event` that decodes, has no field this build
/// does not know, at any depth. The refusal names the field path (as the
/// other refusals of `decode_event` do) and the unknown number.
pub fn check_known_fields(payload: &[u8]) -> Result<(), InvalidEvent> {
    scan(payload, SHAPES.1).map_err(|found| {
        let mut path = found.path;
        path.reverse();
        InvalidEvent {
            field: if path.is_empty() {
                "payload".into()
            } else {
                path.join(".")
            },
            reason: found.reason,
        }
    })
}

/// What a scan found, with the field path innermost first (built only
/// when something is found).
struct Found {
    path: Vec<String>,
    reason: String,
}

fn scan(msg: &[u8], shape: usize) -> Result<(), Found> {
    let s = &SHAPES.0[shape];
    let malformed = || Found {
        path: Vec::new(),
        reason: "is not well-formed protobuf".into(),
    };
    let mut b = msg;
    while b.has_remaining() {
        let at = msg.len() - b.len();
        let key = prost::encoding::decode_varint(&mut b).map_err(|_| malformed())?;
        let number = key >> 3;
        let Some(field) = usize::try_from(number)
            .ok()
            .and_then(|n| s.fields.get(n))
            .and_then(Option::as_ref)
        else {
            return Err(Found {
                path: Vec::new(),
                reason: format!(
                    "has field number {number}, which {} does not define in this version of \
                     Docket; a later version could read the signed bytes as something else, \
                     so they are not recorded",
                    s.name
                ),
            });
        };
        let skip = match key & 7 {
            0 => {
                prost::encoding::decode_varint(&mut b).map_err(|_| malformed())?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let len = prost::encoding::decode_varint(&mut b).map_err(|_| malformed())?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l <= b.len())
                    .ok_or_else(malformed)?;
                if let Some(inner) = field.message {
                    scan(&b[..len], inner).map_err(|mut found| {
                        found.path.push(if field.repeated {
                            format!("{}[{}]", field.name, occurrences(msg, number, at))
                        } else {
                            field.name.clone()
                        });
                        found
                    })?;
                }
                len
            }
            _ => return Err(malformed()),
        };
        if skip > b.len() {
            return Err(malformed());
        }
        b.advance(skip);
    }
    Ok(())
}

/// How many times field `number` occurs in `msg` before byte `end` (which
/// a scan has already walked, so it is well-formed).
fn occurrences(msg: &[u8], number: u64, end: usize) -> usize {
    let mut b = &msg[..end];
    let mut n = 0;
    while let Ok(key) = prost::encoding::decode_varint(&mut b) {
        n += usize::from(key >> 3 == number);
        let skip = match key & 7 {
            0 => prost::encoding::decode_varint(&mut b).map_or(usize::MAX, |_| 0),
            1 => 8,
            5 => 4,
            2 => prost::encoding::decode_varint(&mut b)
                .ok()
                .and_then(|l| usize::try_from(l).ok())
                .unwrap_or(usize::MAX),
            _ => usize::MAX,
        };
        if skip > b.len() {
            break;
        }
        b.advance(skip);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field key: number and wire type.
    fn key(number: u64, wire: u64) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_varint(number << 3 | wire, &mut out);
        out
    }

    #[test]
    fn known_fields_pass_and_unknown_ones_are_named_at_any_depth() {
        let ev = pb::Event {
            event_id: "e-1".into(),
            claimed_time_unix_nanos: 5,
            signer: "admin".into(),
            ..Default::default()
        };
        let bytes = ev.encode_to_vec();
        check_known_fields(&bytes).unwrap();

        // A top-level number in the range reserved for future bodies.
        let mut top = bytes.clone();
        top.extend(key(29, 0));
        top.push(1);
        let e = check_known_fields(&top).unwrap_err();
        assert_eq!(e.field, "payload");
        assert!(
            e.reason
                .starts_with("has field number 29, which docket.v1.Event does not define"),
            "{}",
            e.reason
        );
        // prost itself skips it: the event decodes as if it were not there.
        assert_eq!(pb::Event::decode(&top[..]).unwrap(), ev);
    }

    #[test]
    fn an_unknown_field_inside_a_body_is_named_by_its_path() {
        // Find a body that is a message, and put an unknown field in it.
        let event = &MESSAGES[".docket.v1.Event"];
        let body = event
            .field
            .iter()
            .find(|f| f.r#type() == Type::Message && f.name() == "annotation")
            .expect("Event has an annotation body");
        let inner = [key(999, 0), vec![7]].concat();
        let mut bytes = key(u64::try_from(body.number()).unwrap(), 2);
        prost::encoding::encode_varint(inner.len() as u64, &mut bytes);
        bytes.extend(&inner);
        let e = check_known_fields(&bytes).unwrap_err();
        assert_eq!(e.field, "annotation");
        assert!(e.reason.starts_with("has field number 999"), "{}", e.reason);
        // In the second item of a repeated message field, the path says so.
        let genesis = event
            .field
            .iter()
            .find(|f| f.name() == "genesis")
            .expect("Event has a genesis body");
        let g = &MESSAGES[genesis.type_name()];
        let admins = g
            .field
            .iter()
            .find(|f| f.label() == Label::Repeated && f.r#type() == Type::Message)
            .expect("Genesis has a repeated message field");
        let mut body = Vec::new();
        for item in [vec![], inner.clone()] {
            body.extend(key(u64::try_from(admins.number()).unwrap(), 2));
            prost::encoding::encode_varint(item.len() as u64, &mut body);
            body.extend(item);
        }
        let mut ev = key(u64::try_from(genesis.number()).unwrap(), 2);
        prost::encoding::encode_varint(body.len() as u64, &mut ev);
        ev.extend(body);
        let e = check_known_fields(&ev).unwrap_err();
        assert_eq!(e.field, format!("genesis.{}[1]", admins.name()));
        // Truncated: refused as malformed, never a panic.
        for cut in 0..bytes.len() {
            let _ = check_known_fields(&bytes[..cut]);
        }
        assert!(check_known_fields(&[0x0a, 0xff]).is_err());
    }
}
