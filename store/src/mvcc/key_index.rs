//! The revision history of one key, as etcd's `keyIndex`: a list of generations, each running
//! from a creation to a deletion (tombstone). It answers "which revision holds this key as of
//! revision R" without touching the disk, so values can live on disk keyed by revision.

use std::fmt;

/// A point in the store's history: `main` is the store revision of a write transaction, `sub`
/// orders the changes inside it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.main, self.sub)
    }
}

/// What a key looked like at some revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyAt {
    /// The revision whose record holds the value.
    pub modified: Revision,
    /// The revision that created the key's current generation.
    pub created: Revision,
    /// The number of puts since creation.
    pub version: i64,
}

/// One life of a key: from creation to deletion. The last revision of a closed generation is
/// the tombstone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Generation {
    /// Puts in this generation, including any that compaction removed from `revs`.
    version: i64,
    created: Revision,
    revs: Vec<Revision>,
}

/// Every live revision of one key. Invariant: never empty; the last generation is the open one
/// (empty right after a deletion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyIndex {
    generations: Vec<Generation>,
    /// Lease attached to the live generation (0: none), so lease bookkeeping needs no disk read.
    pub lease: i64,
}

impl Default for KeyIndex {
    fn default() -> Self {
        Self {
            generations: vec![Generation::default()],
            lease: 0,
        }
    }
}

impl KeyIndex {
    /// Records a put at `rev`.
    pub fn put(&mut self, rev: Revision) {
        let g = self.open_generation();
        if g.revs.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.version += 1;
    }

    /// Restores a put read back from disk whose version and creation are known (compaction may
    /// have removed the earlier puts of this generation).
    pub fn restore(&mut self, rev: Revision, created: Revision, version: i64) {
        let g = self.open_generation();
        if g.revs.is_empty() {
            g.created = created;
        }
        g.revs.push(rev);
        g.version = version;
    }

    /// Records a deletion at `rev` and opens a new, empty generation. Deleting a key that is not
    /// alive is a no-op and returns false.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        let g = self.open_generation();
        if g.revs.is_empty() {
            return false;
        }
        g.revs.push(rev);
        self.generations.push(Generation::default());
        self.lease = 0;
        true
    }

    fn open_generation(&mut self) -> &mut Generation {
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let last = self.generations.len() - 1;
        &mut self.generations[last]
    }

    /// The key as of revision `at` (main revision, inclusive), or `None` when it did not exist
    /// then (never created, deleted, or compacted away).
    pub fn get(&self, at: i64) -> Option<KeyAt> {
        let n = self.generations.len();
        for (i, g) in self.generations.iter().enumerate().rev() {
            let Some(first) = g.revs.first() else {
                continue;
            };
            if first.main > at {
                continue;
            }
            let closed = i + 1 < n;
            if closed {
                let tomb = g.revs[g.revs.len() - 1];
                if tomb.main <= at {
                    // Deleted by `at`; older generations are older still.
                    return None;
                }
            }
            // Newest revision in this generation at or before `at`.
            let pos = g.revs.iter().rposition(|r| r.main <= at)?;
            let behind = (g.revs.len() - 1 - pos) as i64;
            let behind = if closed { behind - 1 } else { behind };
            return Some(KeyAt {
                modified: g.revs[pos],
                created: g.created,
                version: g.version - behind,
            });
        }
        None
    }

    /// The newest revision of this key (a put or a tombstone) strictly before `before`, used to
    /// find the previous value for a watch event.
    pub fn last_before(&self, before: Revision) -> Option<(Revision, bool)> {
        let n = self.generations.len();
        for (i, g) in self.generations.iter().enumerate().rev() {
            if let Some(pos) = g.revs.iter().rposition(|r| *r < before) {
                let is_tombstone = i + 1 < n && pos == g.revs.len() - 1;
                return Some((g.revs[pos], is_tombstone));
            }
        }
        None
    }

    /// Drops history older than `at` the way etcd does: keeps, per key, the newest revision at
    /// or before `at` unless it is a tombstone. Pushes the revisions that leave the history into
    /// `removed` (their records can be deleted from disk) and returns true when nothing is left
    /// (the key can leave the index).
    pub fn compact(&mut self, at: i64, removed: &mut Vec<Revision>) -> bool {
        let last = self.generations.len() - 1;
        // Generations deleted at or before `at` are gone entirely.
        let mut gen_idx = 0;
        while gen_idx < last {
            match self.generations[gen_idx].revs.last() {
                Some(tomb) if tomb.main > at => break,
                _ => gen_idx += 1,
            }
        }
        for g in &self.generations[..gen_idx] {
            removed.extend_from_slice(&g.revs);
        }
        let g = &mut self.generations[gen_idx];
        if let Some(pos) = g.revs.iter().rposition(|r| r.main <= at) {
            removed.extend(g.revs.drain(..pos));
            // A lone tombstone carries no value: its generation goes too.
            if g.revs.len() == 1 && gen_idx != last {
                removed.append(&mut g.revs);
                gen_idx += 1;
            }
        }
        self.generations.drain(..gen_idx);
        self.generations.len() == 1 && self.generations[0].revs.is_empty()
    }

    /// True when the key currently exists.
    pub fn is_alive(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.revs.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// put@2 put@4 del@6 put@8 put@10
    fn history() -> KeyIndex {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(4));
        assert!(ki.tombstone(r(6)));
        ki.put(r(8));
        ki.put(r(10));
        ki
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn get_at_revisions() {
        let ki = history();
        let cases: &[(i64, Option<(i64, i64, i64)>)] = &[
            // at, (modified, created, version)
            (1, None),
            (2, Some((2, 2, 1))),
            (3, Some((2, 2, 1))),
            (4, Some((4, 2, 2))),
            (5, Some((4, 2, 2))),
            (6, None),
            (7, None),
            (8, Some((8, 8, 1))),
            (9, Some((8, 8, 1))),
            (10, Some((10, 8, 2))),
            (99, Some((10, 8, 2))),
        ];
        for &(at, want) in cases {
            let got = ki
                .get(at)
                .map(|k| (k.modified.main, k.created.main, k.version));
            assert_eq!(got, want, "at {at}");
        }
    }

    #[test]
    fn tombstone_of_missing_key_is_noop() {
        let mut ki = KeyIndex::default();
        assert!(!ki.tombstone(r(3)));
        assert!(!ki.is_alive());
        ki.put(r(4));
        assert!(ki.tombstone(r(5)));
        assert!(!ki.tombstone(r(6)));
        assert!(!ki.is_alive());
    }

    #[test]
    fn last_before_finds_puts_and_tombstones() {
        let ki = history();
        let cases: &[(i64, Option<(i64, bool)>)] = &[
            (2, None),
            (3, Some((2, false))),
            (6, Some((4, false))),
            (7, Some((6, true))),
            (9, Some((8, false))),
            (11, Some((10, false))),
        ];
        for &(before, want) in cases {
            let got = ki.last_before(r(before)).map(|(rev, t)| (rev.main, t));
            assert_eq!(got, want, "before {before}");
        }
    }

    #[test]
    fn compact_removes_superseded_revisions() {
        // (compact at, removed revisions)
        let cases: &[(i64, &[i64])] = &[
            (1, &[]),
            (3, &[]),
            (5, &[2]),
            (6, &[2, 4, 6]),
            (7, &[2, 4, 6]),
            (9, &[2, 4, 6]),
            (10, &[2, 4, 6, 8]),
        ];
        for &(at, want) in cases {
            let mut ki = history();
            let mut removed = Vec::new();
            assert!(!ki.compact(at, &mut removed), "at {at}");
            let removed: Vec<i64> = removed.iter().map(|r| r.main).collect();
            assert_eq!(removed, want, "at {at}");
            // Reads at and after the compaction point are unchanged.
            for later in at..12 {
                assert_eq!(ki.get(later), history().get(later), "at {at} later {later}");
            }
        }
    }

    #[test]
    fn compact_removes_deleted_key_entirely() {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.tombstone(r(3));
        let mut removed = Vec::new();
        assert!(ki.compact(3, &mut removed));
        assert_eq!(removed, vec![r(2), r(3)]);
    }

    #[test]
    fn restore_keeps_version_after_compaction() {
        let mut ki = KeyIndex::default();
        ki.restore(r(10), r(2), 5);
        ki.put(r(11));
        assert_eq!(
            ki.get(11),
            Some(KeyAt {
                modified: r(11),
                created: r(2),
                version: 6
            })
        );
    }
}
