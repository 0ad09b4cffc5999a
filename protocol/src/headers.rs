//! Ordered header lists with first-wins lookup.
//!
//! "If a client or a server receives repeated frame header entries, only the first header entry
//! SHOULD be used as the value of header entry. Subsequent values are only used to maintain a
//! history of state changes of the header and MAY be ignored." So headers are a list in wire
//! order, not a map: [`Headers::get`] returns the first entry, and forwarding keeps every entry.

use bytestring::ByteString;

/// Header names the broker and clients use, spelled once.
pub mod names {
    #![allow(missing_docs)]
    pub const ACCEPT_VERSION: &str = "accept-version";
    pub const ACK: &str = "ack";
    pub const CONTENT_LENGTH: &str = "content-length";
    pub const CONTENT_TYPE: &str = "content-type";
    pub const DESTINATION: &str = "destination";
    pub const HEART_BEAT: &str = "heart-beat";
    pub const HOST: &str = "host";
    pub const ID: &str = "id";
    pub const LOGIN: &str = "login";
    pub const MESSAGE: &str = "message";
    pub const MESSAGE_ID: &str = "message-id";
    pub const PASSCODE: &str = "passcode";
    pub const RECEIPT: &str = "receipt";
    pub const RECEIPT_ID: &str = "receipt-id";
    pub const SERVER: &str = "server";
    pub const SESSION: &str = "session";
    pub const SUBSCRIPTION: &str = "subscription";
    pub const TRANSACTION: &str = "transaction";
    pub const VERSION: &str = "version";
    pub const REDELIVERED: &str = "redelivered";
    pub const PERSISTENT: &str = "persistent";
    pub const REPLY_TO: &str = "reply-to";
    pub const EXPIRES: &str = "expires";
    pub const EXPIRATION: &str = "expiration";
}

/// The headers of one frame, in wire order, duplicates kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(ByteString, ByteString)>,
}

impl Headers {
    /// An empty header list.
    pub fn new() -> Headers {
        Headers { entries: Vec::new() }
    }

    /// An empty header list with room for `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Headers {
        Headers { entries: Vec::with_capacity(capacity) }
    }

    /// The value of the first entry named `name` (names are case sensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| &**v)
    }

    /// Like [`Headers::get`], but returns the shared string so it can be kept without a copy.
    pub fn get_shared(&self, name: &str) -> Option<&ByteString> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// True when an entry named `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.iter().any(|(n, _)| n == name)
    }

    /// Appends an entry, keeping any earlier entry with the same name (which therefore still
    /// wins on lookup).
    pub fn push(&mut self, name: impl Into<ByteString>, value: impl Into<ByteString>) {
        self.entries.push((name.into(), value.into()));
    }

    /// Replaces every entry named `name` with a single entry holding `value`, at the position of
    /// the first one (or at the end when there was none).
    pub fn set(&mut self, name: &str, value: impl Into<ByteString>) {
        let value = value.into();
        match self.entries.iter().position(|(n, _)| n == name) {
            Some(first) => {
                self.entries[first].1 = value;
                let mut index = 0;
                self.entries.retain(|(n, _)| {
                    let keep = index <= first || n != name;
                    index += 1;
                    keep
                });
            }
            None => self.entries.push((ByteString::from(name.to_owned()), value)),
        }
    }

    /// Removes every entry named `name`; returns the first value removed.
    pub fn remove(&mut self, name: &str) -> Option<ByteString> {
        let first = self.get_shared(name).cloned();
        if first.is_some() {
            self.entries.retain(|(n, _)| n != name);
        }
        first
    }

    /// Keeps only the entries for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.entries.retain(|(n, v)| keep(n, v));
    }

    /// Entries in wire order, duplicates included.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.entries.iter().map(|(n, v)| (&**n, &**v))
    }

    /// Entries in wire order as shared strings.
    pub fn iter_shared(&self) -> impl ExactSizeIterator<Item = &(ByteString, ByteString)> + '_ {
        self.entries.iter()
    }

    /// Number of entries, duplicates included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<N: Into<ByteString>, V: Into<ByteString>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Headers {
        Headers { entries: iter.into_iter().map(|(n, v)| (n.into(), v.into())).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_header_first_entry_wins() {
        let mut h = Headers::new();
        h.push("foo", "first");
        h.push("foo", "second");
        assert_eq!(h.get("foo"), Some("first"));
        assert_eq!(h.len(), 2, "later entries are kept for forwarding");
    }

    #[test]
    fn header_names_are_case_sensitive() {
        let h: Headers = [("Foo", "1")].into_iter().collect();
        assert_eq!(h.get("foo"), None);
        assert_eq!(h.get("Foo"), Some("1"));
    }

    #[test]
    fn set_replaces_all_entries_in_place_of_the_first() {
        let mut h: Headers = [("a", "1"), ("b", "2"), ("a", "3")].into_iter().collect();
        h.set("a", "x");
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![("a", "x"), ("b", "2")]);
        h.set("c", "y");
        assert_eq!(h.get("c"), Some("y"));
    }

    #[test]
    fn remove_drops_every_entry() {
        let mut h: Headers = [("a", "1"), ("b", "2"), ("a", "3")].into_iter().collect();
        assert_eq!(h.remove("a").as_deref(), Some("1"));
        assert!(!h.contains("a"));
    }
}
