//! Joined aux entries: many small items written by the ops of one commit round as one aux key.
//!
//! Why: an index entry per item (per finished message, say) costs the committer a transactional read and a
//! tree insert each; a round gathers many. `Op::AuxJoin { prefix, order, item }` puts `item` in the round's
//! entry for `prefix`, whose key is `prefix ++ order ++ sequence` (both big-endian `u64`; `order` is the
//! largest of the round's items, so entries sort by it, and the sequence keeps two rounds with the same
//! order apart, across restarts too). The value is the items, each as a big-endian `u32` length and its
//! bytes. Entries are closed at [`ENTRY_MAX`] bytes (a round's items beyond it start another).

/// Bytes an entry is closed at.
pub const ENTRY_MAX: usize = 64 << 10;

/// The key of an entry under `prefix`.
pub(crate) fn key(prefix: &[u8], order: u64, seq: u64) -> Vec<u8> {
    [prefix, &order.to_be_bytes()[..], &seq.to_be_bytes()[..]].concat()
}

/// The `order` of an entry's key under `prefix` (`None`: not such a key).
pub fn order_of(key: &[u8], prefix: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(prefix)?;
    let (order, seq) = rest.split_at_checked(8)?;
    (seq.len() == 8).then_some(())?;
    Some(u64::from_be_bytes(order.try_into().ok()?))
}

/// Append `item` to an entry's value.
pub(crate) fn push(value: &mut Vec<u8>, item: &[u8]) {
    let len = u32::try_from(item.len()).unwrap_or(u32::MAX);
    value.extend_from_slice(&len.to_be_bytes());
    value.extend_from_slice(&item[..len as usize]);
}

/// The items of an entry's value, in the order they were committed (a damaged tail ends the iteration).
pub fn items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = value;
    std::iter::from_fn(move || {
        let (len, tail) = rest.split_at_checked(4)?;
        let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
        let (item, tail) = tail.split_at_checked(len)?;
        rest = tail;
        Some(item)
    })
}

/// Bytes an item takes in an entry (its length prefix included).
pub fn item_size(item: &[u8]) -> u64 {
    4 + item.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip_and_a_damaged_tail_ends_them() {
        let mut v = Vec::new();
        for item in [&b"one"[..], b"", b"three"] {
            push(&mut v, item);
        }
        assert_eq!(items(&v).collect::<Vec<_>>(), vec![&b"one"[..], b"", b"three"]);
        v.extend_from_slice(&[0, 0, 0, 9, b'x']);
        assert_eq!(items(&v).count(), 3);
    }

    #[test]
    fn keys_sort_by_order_then_sequence() {
        let (a, b, c) = (key(b"p/", 5, 9), key(b"p/", 6, 1), key(b"p/", 6, 2));
        assert!(a < b && b < c);
        assert_eq!(order_of(&b, b"p/"), Some(6));
        assert_eq!(order_of(&b, b"q/"), None);
        assert_eq!(order_of(b"p/short", b"p/"), None);
    }
}
