//! Compact in-memory names: queue ids and domains held as small integers, so a queued message costs tens of
//! bytes in memory, not hundreds (the bytes and the full record stay on disk).

use std::collections::HashMap;
use std::sync::Arc;

use mta_spool::QueueId;

/// Append-only string interner: each distinct string is stored once and named by a `u32`.
#[derive(Debug, Default)]
pub struct Interner {
    map: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl Interner {
    /// The number of `s`, adding it if new.
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&n) = self.map.get(s) {
            return n;
        }
        let n = self.names.len() as u32;
        let name: Arc<str> = Arc::from(s);
        self.names.push(name.clone());
        self.map.insert(name, n);
        n
    }

    /// The number of `s` if it was interned.
    pub fn get(&self, s: &str) -> Option<u32> {
        self.map.get(s).copied()
    }

    /// The string named `n` (empty if unknown).
    pub fn name(&self, n: u32) -> Arc<str> {
        self.names.get(n as usize).cloned().unwrap_or_else(|| Arc::from(""))
    }
}

/// A queue id in 16 bytes: the timestamp part and the interned node suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CompactId {
    ts: u64,
    node: u32,
}

impl CompactId {
    /// Compact form of `id`; ids not of our `<14 hex>.<node>` form keep their whole text in the interner.
    pub fn new(id: &QueueId, nodes: &mut Interner) -> CompactId {
        let s = id.as_str();
        match (s.get(..14).and_then(|h| u64::from_str_radix(h, 16).ok()), s.get(14..15), s.get(15..)) {
            (Some(ts), Some("."), Some(node)) if ts != 0 => CompactId { ts, node: nodes.intern(node) },
            _ => CompactId { ts: 0, node: nodes.intern(s) },
        }
    }

    /// The full queue id back (`None` only if the interner is not the one that made this id).
    pub fn to_queue_id(self, nodes: &Interner) -> Option<QueueId> {
        let node = nodes.name(self.node);
        let s = if self.ts == 0 { node.to_string() } else { format!("{:014x}.{node}", self.ts) };
        QueueId::parse(&s)
    }

    /// A number spreading ids evenly (for lock striping).
    pub fn stripe(self) -> usize {
        (self.ts ^ (self.node as u64).rotate_left(32)) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mta_spool::IdGenerator;

    #[test]
    fn compact_ids_round_trip() {
        let mut nodes = Interner::default();
        let g = IdGenerator::new("mx-1");
        let id = g.next_id();
        let c = CompactId::new(&id, &mut nodes);
        assert_eq!(c.to_queue_id(&nodes), Some(id));
        let odd = QueueId::parse("foreign-id_1").unwrap();
        let c = CompactId::new(&odd, &mut nodes);
        assert_eq!(c.to_queue_id(&nodes), Some(odd));
        assert_eq!(std::mem::size_of::<CompactId>(), 16);
    }
}
