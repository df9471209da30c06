//! Who may touch a message now: delivery connections, or a queue transfer moving it to another node.
//!
//! A message being sent (from the send until its result is durable) cannot be claimed by a transfer, and a
//! message claimed by a transfer is not sent: otherwise both this node and the peer could deliver it.
//! One short map operation per message sent; the map holds only messages in one of the two states.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mta_spool::QueueId;
use parking_lot::Mutex;

/// Claimed by a transfer (any positive count is that many deliveries in progress).
const TRANSFER: i32 = -1;

/// The table of messages being delivered or transferred; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Owners {
    map: Arc<Mutex<HashMap<QueueId, i32>>>,
    /// Bumped after a transfer changed a message in the spool (moved it away or took recipients from it), before
    /// its claim is released: a connection whose copy was read before a bump reads the message again.
    epoch: Arc<AtomicU64>,
}

impl Owners {
    /// Start delivering `id` (one of its destinations); `None` while a transfer holds it.
    pub(crate) fn deliver(&self, id: &QueueId) -> Option<Owned> {
        let mut map = self.map.lock();
        let n = map.entry(id.clone()).or_insert(0);
        if *n == TRANSFER {
            return None;
        }
        *n += 1;
        Some(Owned { owners: self.clone(), id: id.clone() })
    }

    /// Claim `id` for a transfer; `None` while a delivery of it is in progress (or another transfer holds it).
    pub fn claim(&self, id: &QueueId) -> Option<Owned> {
        let mut map = self.map.lock();
        if map.contains_key(id) {
            return None;
        }
        map.insert(id.clone(), TRANSFER);
        Some(Owned { owners: self.clone(), id: id.clone() })
    }

    /// The current epoch (see [`Owned::changed`]); read it before reading messages from the spool.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Messages held now (deliveries and transfers).
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// True when no message is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn release(&self, id: &QueueId) {
        let mut map = self.map.lock();
        if let Some(n) = map.get_mut(id) {
            if *n > 1 {
                *n -= 1;
            } else {
                map.remove(id);
            }
        }
    }
}

/// A delivery's or a transfer's hold on one message, released when dropped.
#[derive(Debug)]
pub struct Owned {
    owners: Owners,
    id: QueueId,
}

impl Owned {
    /// The message held.
    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// The transfer changed the message durably (removed it, or took some recipients away): copies read
    /// before now are stale. Releases the claim.
    pub fn changed(self) {
        self.owners.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.owners.release(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> QueueId {
        QueueId::parse(s).unwrap()
    }

    #[test]
    fn transfer_and_delivery_exclude_each_other() {
        let owners = Owners::default();
        let a = id("0001.a");
        let d1 = owners.deliver(&a).unwrap();
        let d2 = owners.deliver(&a).unwrap();
        assert!(owners.claim(&a).is_none());
        drop(d1);
        assert!(owners.claim(&a).is_none());
        drop(d2);
        let t = owners.claim(&a).unwrap();
        assert!(owners.deliver(&a).is_none());
        assert!(owners.claim(&a).is_none());
        drop(t);
        assert!(owners.is_empty());
        assert!(owners.deliver(&a).is_some());
    }
}
