//! The shapes of key range the watch-guarantee tests watch, and which keys each covers.

use etcd_client::WatchOptions;

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
