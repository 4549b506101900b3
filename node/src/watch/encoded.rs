//! Events as they go on the wire, encoded once and shared.
//!
//! One published batch goes to every watcher that matches it. Each event is encoded once, as
//! the `events` field (number 11) of a `WatchResponse`: its tag, its length and the
//! `mvccpb.Event`. A watcher's response then takes the fields it needs without copying or
//! encoding them again; the bytes on the wire are those of the full message.

use bytes::{Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;

use crate::proto::mvccpb::Event;

/// The field number of `events` in `etcdserverpb.WatchResponse`.
const EVENTS_FIELD: u32 = 11;

/// Events of one response, each already encoded as a `WatchResponse.events` field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Events {
    fields: Vec<Bytes>,
}

impl Events {
    /// Encodes each event once.
    pub fn encode(events: &[Event]) -> Events {
        Events {
            fields: events.iter().map(field).collect(),
        }
    }

    pub(super) fn from_fields(fields: Vec<Bytes>) -> Events {
        Events { fields }
    }

    /// Takes the fields out, to split them among responses.
    pub fn into_fields(self) -> Vec<Bytes> {
        self.fields
    }

    /// The events back as messages, for in-process users (locks, elections) and tests.
    ///
    /// # Panics
    /// Never for events this type encoded: the bytes are always a valid field.
    pub fn decode(&self) -> Vec<Event> {
        self.fields
            .iter()
            .map(|field| {
                let mut bytes = &field[key_len(EVENTS_FIELD)..];
                let len = prost::encoding::decode_varint(&mut bytes).expect("encoded length");
                Event::decode(&bytes[..len as usize]).expect("encoded event")
            })
            .collect()
    }
}

/// One event as field 11: key, length, message.
pub(super) fn field(event: &Event) -> Bytes {
    let len = event.encoded_len();
    let mut buf =
        BytesMut::with_capacity(key_len(EVENTS_FIELD) + encoded_len_varint(len as u64) + len);
    encode_key(EVENTS_FIELD, WireType::LengthDelimited, &mut buf);
    encode_varint(len as u64, &mut buf);
    event
        .encode(&mut buf)
        .expect("the buffer was sized for the event");
    buf.freeze()
}
