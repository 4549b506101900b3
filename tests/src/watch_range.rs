//! The shapes of key range the watch-guarantee tests watch, which keys each covers, and the
//! events the tests compare.

use etcd_client::{EventType, WatchOptions, WatchResponse};

/// One event as the tests compare them: type, key, value, mod revision.
pub type Seen = (EventType, String, String, i64);

/// Bytes as text, for keys and values the tests wrote as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The events of one watch response.
pub fn seen(response: &WatchResponse) -> Vec<Seen> {
    response
        .events()
        .iter()
        .map(|event| {
            let kv = event.kv().expect("an event has a key-value");
            (
                event.event_type(),
                text(kv.key()),
                text(kv.value()),
                kv.mod_revision(),
            )
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
pub enum Range {
    Key(&'static str),
    Prefix(&'static str),
    /// `[start, end)`.
    Between(&'static str, &'static str),
}

impl Range {
    pub fn key(self) -> &'static str {
        match self {
            Range::Key(key) | Range::Prefix(key) | Range::Between(key, _) => key,
        }
    }

    pub fn options(self) -> WatchOptions {
        match self {
            Range::Key(_) => WatchOptions::new(),
            Range::Prefix(_) => WatchOptions::new().with_prefix(),
            Range::Between(_, end) => WatchOptions::new().with_range(end),
        }
    }

    pub fn contains(self, key: &str) -> bool {
        match self {
            Range::Key(only) => key == only,
            Range::Prefix(prefix) => key.starts_with(prefix),
            Range::Between(start, end) => start <= key && key < end,
        }
    }
}
