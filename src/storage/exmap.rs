//! Compact exception tables. Linux stores exceptions consecutive in both old and new chunk as one
//! hash entry (dm-exception-store's `DM_CHUNK_CONSECUTIVE_BITS`, at most 256 chunks); these
//! types do the same without that cap, so a sequentially rewritten origin costs each snapshot a
//! handful of runs instead of one entry per chunk, and memory does not grow with the origin.
//!
//! - [`ExMap`]: old chunk → new chunk for lookups. Runs sit in a `BTreeMap` keyed by their first
//!   old chunk; an insert joins the neighbouring runs when old and new are both consecutive, a
//!   remove splits its run. A run that joins nothing costs one 16-byte tree slot (about 26-30
//!   bytes an exception with the tree's fill), no more than a `HashMap<u64, u64>` entry.
//! - [`ExLog`]: the same kind of pairs in the order they were added (a persistent store's table
//!   order), as runs in a `Vec`, appended to and popped from the end.
//!
//! Both pack run lengths into the top bits of chunk numbers, so every chunk number must be below
//! [`CHUNK_LIMIT`] (2^56, the persistent format's own limit; an origin chunk index is below 2^55).
//!
//! ```text
//! ExMap slot:  key = first old chunk | value = [ code:8 | first new chunk:56 ]
//!              code 0..=254: len = code + 1;  code 255: len in `long` (runs of 256 and more)
//! ExLog run:   [ (len-1) >> 8 : 8 | first old:56 ] [ (len-1) & 255 : 8 | first new:56 ]
//!              at most 65,536 entries a run; a longer one continues in the next
//! ```

use std::collections::BTreeMap;
use std::ops::Range;

/// Chunk numbers kept in these tables must be below this: the bits above carry run lengths.
pub const CHUNK_LIMIT: u64 = 1 << 56;
const NUM_MASK: u64 = CHUNK_LIMIT - 1;
/// The `ExMap` length code of a run whose length is kept in `long`.
const LONG: u64 = 255;
/// The most entries one `ExLog` run holds.
const LOG_RUN_MAX: u64 = 1 << 16;

/// `len` exceptions consecutive in both chunk numbers: `old + k → new + k` for `k < len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub old: u64,
    pub new: u64,
    pub len: u64,
}

impl Span {
    fn end_old(self) -> u64 {
        self.old + self.len
    }

    fn end_new(self) -> u64 {
        self.new + self.len
    }
}

/// Old chunk → new chunk, stored as maximal runs (no two runs could be joined).
#[derive(Debug, Default, Clone)]
pub struct ExMap {
    /// First old chunk of a run → its first new chunk, with the length code in the top byte.
    runs: BTreeMap<u64, u64>,
    /// Lengths of the runs longer than 255 (code `LONG`), by first old chunk.
    long: BTreeMap<u64, u64>,
    /// Exceptions held.
    count: u64,
}

impl ExMap {
    pub fn new() -> ExMap {
        ExMap::default()
    }

    /// The number of exceptions (not runs).
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The number of runs: what the map's memory is proportional to.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// The new chunk of `old`.
    pub fn get(&self, old: u64) -> Option<u64> {
        self.containing(old).map(|s| s.new + (old - s.old))
    }

    pub fn contains(&self, old: u64) -> bool {
        self.containing(old).is_some()
    }

    /// Maps `old` to `new`, joining the runs on either side where both numbers are consecutive.
    /// Returns the previous new chunk of `old`.
    ///
    /// # Panics
    /// If `new` is not below [`CHUNK_LIMIT`].
    pub fn insert(&mut self, old: u64, new: u64) -> Option<u64> {
        assert!(new < CHUNK_LIMIT, "chunk number {new} past the table limit");
        let previous = self.remove(old);
        // `old` is unmapped now, so a run holding `old - 1` ends there.
        let left = old
            .checked_sub(1)
            .and_then(|o| self.containing(o))
            .filter(|l| l.end_new() == new);
        let right = old
            .checked_add(1)
            .and_then(|o| self.runs.get(&o).map(|&v| self.span(o, v)))
            .filter(|r| r.new == new + 1);
        match (left, right) {
            (Some(l), Some(r)) => {
                self.take(r.old);
                self.put(Span {
                    len: l.len + 1 + r.len,
                    ..l
                });
            }
            (Some(l), None) => self.put(Span {
                len: l.len + 1,
                ..l
            }),
            (None, Some(r)) => {
                self.take(r.old);
                self.put(Span {
                    old,
                    new,
                    len: r.len + 1,
                });
            }
            (None, None) => self.put(Span { old, new, len: 1 }),
        }
        self.count += 1;
        previous
    }

    /// Unmaps `old`, splitting its run; returns its new chunk.
    pub fn remove(&mut self, old: u64) -> Option<u64> {
        let s = self.containing(old)?;
        let k = old - s.old;
        if k == 0 {
            self.take(s.old);
        } else {
            self.put(Span { len: k, ..s });
        }
        if k + 1 < s.len {
            self.put(Span {
                old: old + 1,
                new: s.new + k + 1,
                len: s.len - k - 1,
            });
        }
        self.count -= 1;
        Some(s.new + k)
    }

    pub fn clear(&mut self) {
        *self = ExMap::default();
    }

    /// The runs in old-chunk order.
    pub fn spans(&self) -> impl Iterator<Item = Span> + '_ {
        self.runs.iter().map(|(&o, &v)| self.span(o, v))
    }

    /// Every `(old, new)` pair in old-chunk order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.spans()
            .flat_map(|s| (0..s.len).map(move |k| (s.old + k, s.new + k)))
    }

    /// Appends to `out` the mapped old chunks in `[from, to)` as ranges in order, joining
    /// ranges that touch (also the last one already in `out`).
    pub fn old_ranges(&self, from: u64, to: u64, out: &mut Vec<Range<u64>>) {
        if from >= to {
            return;
        }
        let first = self.runs.range(..from).next_back();
        for (&o, &v) in first.into_iter().chain(self.runs.range(from..to)) {
            let s = self.span(o, v);
            let r = s.old.max(from)..s.end_old().min(to);
            if r.is_empty() {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
    }

    fn span(&self, old: u64, packed: u64) -> Span {
        let code = packed >> 56;
        let len = if code == LONG {
            self.long[&old]
        } else {
            code + 1
        };
        Span {
            old,
            new: packed & NUM_MASK,
            len,
        }
    }

    fn containing(&self, old: u64) -> Option<Span> {
        let (&first, &packed) = self.runs.range(..=old).next_back()?;
        let s = self.span(first, packed);
        (old - first < s.len).then_some(s)
    }

    /// Stores a run, replacing any run starting at the same old chunk.
    fn put(&mut self, s: Span) {
        let code = if s.len <= LONG {
            self.long.remove(&s.old);
            s.len - 1
        } else {
            self.long.insert(s.old, s.len);
            LONG
        };
        self.runs.insert(s.old, s.new | (code << 56));
    }

    fn take(&mut self, old: u64) {
        if self.runs.remove(&old).is_some_and(|v| v >> 56 == LONG) {
            self.long.remove(&old);
        }
    }
}

/// `(old, new)` pairs in the order they were added, as runs consecutive in both numbers: 16
/// bytes a run. Appends and pops are at the end; [`ExLog::get`] walks back from the end.
#[derive(Debug, Default, Clone)]
pub struct ExLog {
    runs: Vec<[u64; 2]>,
    count: u64,
}

fn pack(s: Span) -> [u64; 2] {
    let l = s.len - 1;
    [s.old | ((l >> 8) << 56), s.new | ((l & 0xff) << 56)]
}

fn unpack(r: [u64; 2]) -> Span {
    Span {
        old: r[0] & NUM_MASK,
        new: r[1] & NUM_MASK,
        len: (((r[0] >> 56) << 8) | (r[1] >> 56)) + 1,
    }
}

impl ExLog {
    pub fn new() -> ExLog {
        ExLog::default()
    }

    /// The number of pairs.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends a pair.
    ///
    /// # Panics
    /// If either number is not below [`CHUNK_LIMIT`].
    pub fn push(&mut self, old: u64, new: u64) {
        assert!(
            old < CHUNK_LIMIT && new < CHUNK_LIMIT,
            "chunk number {} past the table limit",
            old.max(new)
        );
        self.count += 1;
        if let Some(last) = self.runs.last_mut() {
            let s = unpack(*last);
            if s.len < LOG_RUN_MAX && s.end_old() == old && s.end_new() == new {
                *last = pack(Span {
                    len: s.len + 1,
                    ..s
                });
                return;
            }
        }
        self.runs.push(pack(Span { old, new, len: 1 }));
    }

    /// Removes and returns the last pair.
    pub fn pop(&mut self) -> Option<(u64, u64)> {
        let last = self.runs.last_mut()?;
        let s = unpack(*last);
        if s.len == 1 {
            self.runs.pop();
        } else {
            *last = pack(Span {
                len: s.len - 1,
                ..s
            });
        }
        self.count -= 1;
        Some((s.old + s.len - 1, s.new + s.len - 1))
    }

    /// The pair at position `i`; costs one step per run after it, so meant for the tail.
    pub fn get(&self, i: u64) -> Option<(u64, u64)> {
        let mut end = self.count;
        for s in self.spans_rev() {
            let start = end - s.len;
            if i >= start && i < end {
                let k = i - start;
                return Some((s.old + k, s.new + k));
            }
            end = start;
        }
        None
    }

    /// The runs from the last one back. Adjacent runs may be consecutive (a run is capped).
    pub fn spans_rev(&self) -> impl Iterator<Item = Span> + '_ {
        self.runs.iter().rev().map(|&r| unpack(r))
    }

    /// Every pair, first added first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.runs.iter().flat_map(|&r| {
            let s = unpack(r);
            (0..s.len).map(move |k| (s.old + k, s.new + k))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn sequential_inserts_make_one_run_of_any_length() {
        let mut m = ExMap::new();
        for k in 0..100_000 {
            assert_eq!(m.insert(k, 2 + k), None);
        }
        assert_eq!((m.len(), m.run_count()), (100_000, 1));
        assert_eq!(m.get(99_999), Some(100_001));
        assert_eq!(m.get(100_000), None);
        assert_eq!(
            m.spans().collect::<Vec<_>>(),
            [Span {
                old: 0,
                new: 2,
                len: 100_000
            }]
        );
    }

    #[test]
    fn inserts_join_runs_on_both_sides() {
        let mut m = ExMap::new();
        m.insert(10, 100);
        m.insert(12, 102);
        assert_eq!(m.run_count(), 2);
        m.insert(11, 101);
        assert_eq!(m.run_count(), 1);
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [(10, 100), (11, 101), (12, 102)]
        );
    }

    #[test]
    fn consecutive_old_with_unrelated_new_stays_apart() {
        let mut m = ExMap::new();
        m.insert(1, 50);
        m.insert(2, 7);
        m.insert(3, 8);
        assert_eq!(m.run_count(), 2);
        assert_eq!((m.get(1), m.get(2), m.get(3)), (Some(50), Some(7), Some(8)));
    }

    #[test]
    fn remove_splits_a_run_and_reinsert_joins_it() {
        let mut m = ExMap::new();
        for k in 0..600 {
            m.insert(1000 + k, k);
        }
        assert_eq!(m.remove(1300), Some(300));
        assert_eq!(m.run_count(), 2);
        assert_eq!(
            (m.get(1299), m.get(1300), m.get(1301)),
            (Some(299), None, Some(301))
        );
        assert_eq!(m.remove(1300), None);
        assert_eq!(m.len(), 599);
        m.insert(1300, 300);
        assert_eq!((m.run_count(), m.len()), (1, 600));
        assert_eq!(m.remove(1000), Some(0));
        assert_eq!(m.remove(1599), Some(599));
        assert_eq!(m.spans().next().map(|s| (s.old, s.len)), Some((1001, 598)));
    }

    #[test]
    fn insert_replaces_an_existing_mapping() {
        let mut m = ExMap::new();
        m.insert(5, 5);
        m.insert(6, 6);
        assert_eq!(m.insert(6, 9), Some(6));
        assert_eq!((m.get(6), m.len(), m.run_count()), (Some(9), 2, 2));
    }

    #[test]
    fn log_keeps_order_and_joins_consecutive_pairs() {
        let mut l = ExLog::new();
        for (o, n) in [(10, 2), (11, 3), (0, 4), (1, 5), (2, 6)] {
            l.push(o, n);
        }
        assert_eq!(l.spans_rev().count(), 2);
        assert_eq!(l.get(2), Some((0, 4)));
        assert_eq!(l.pop(), Some((2, 6)));
        assert_eq!(
            l.iter().collect::<Vec<_>>(),
            [(10, 2), (11, 3), (0, 4), (1, 5)]
        );
    }

    #[test]
    fn log_runs_past_65536_continue_in_the_next() {
        let mut l = ExLog::new();
        for k in 0..200_000 {
            l.push(k, k + 2);
        }
        assert_eq!(l.spans_rev().count(), 4);
        assert_eq!(l.get(65_536), Some((65_536, 65_538)));
        assert_eq!(l.get(199_999), Some((199_999, 200_001)));
        assert_eq!(l.get(200_000), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        /// `len` consecutive pairs from `(old, new)`: makes runs past the 255 length code.
        InsertRun(u64, u64, u64),
        Remove(u64),
        RemoveRun(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..1200u64, 0..1200u64).prop_map(|(o, n)| Op::Insert(o, n)),
            1 => (0..1200u64, 0..1200u64, 1..700u64).prop_map(|(o, n, l)| Op::InsertRun(o, n, l)),
            3 => (0..1200u64).prop_map(Op::Remove),
            1 => (0..1200u64, 1..400u64).prop_map(|(o, l)| Op::RemoveRun(o, l)),
        ]
    }

    /// The runs a map holding exactly `model` must have: maximal consecutive runs.
    fn maximal_runs(model: &HashMap<u64, u64>) -> usize {
        let mut pairs: Vec<_> = model.iter().map(|(&o, &n)| (o, n)).collect();
        pairs.sort_unstable();
        pairs
            .windows(2)
            .filter(|w| !(w[1].0 == w[0].0 + 1 && w[1].1 == w[0].1 + 1))
            .count()
            + usize::from(!pairs.is_empty())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn exmap_behaves_like_a_hashmap(ops in proptest::collection::vec(op(), 1..60)) {
            let mut m = ExMap::new();
            let mut model = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(o, n) => prop_assert_eq!(m.insert(o, n), model.insert(o, n)),
                    Op::InsertRun(o, n, l) => {
                        for k in 0..l {
                            prop_assert_eq!(m.insert(o + k, n + k), model.insert(o + k, n + k));
                        }
                    }
                    Op::Remove(o) => prop_assert_eq!(m.remove(o), model.remove(&o)),
                    Op::RemoveRun(o, l) => {
                        for k in 0..l {
                            prop_assert_eq!(m.remove(o + k), model.remove(&(o + k)));
                        }
                    }
                }
                prop_assert_eq!(m.len(), model.len() as u64);
                prop_assert_eq!(m.run_count(), maximal_runs(&model));
            }
            for o in 0..2000 {
                prop_assert_eq!(m.get(o), model.get(&o).copied());
            }
            for (from, to) in [(0, 2000), (3, 900), (450, 451), (700, 1600), (5, 5)] {
                let mut ranges = Vec::new();
                m.old_ranges(from, to, &mut ranges);
                let got: Vec<u64> = ranges.iter().flat_map(|r| r.clone()).collect();
                let mut want: Vec<u64> = model.keys().copied().filter(|o| (from..to).contains(o)).collect();
                want.sort_unstable();
                prop_assert_eq!(got, want);
                prop_assert!(ranges.windows(2).all(|w| w[0].end < w[1].start), "{:?}", ranges);
            }
            let mut want: Vec<_> = model.into_iter().collect();
            want.sort_unstable();
            prop_assert_eq!(m.iter().collect::<Vec<_>>(), want);
        }

        #[test]
        fn exlog_behaves_like_a_vec(
            ops in proptest::collection::vec(
                prop_oneof![
                    3 => (0..8u64, 0..8u64, 1..300u64).prop_map(|(o, n, l)| Some((o, n, l))),
                    1 => Just(None),
                ],
                1..40,
            )
        ) {
            let mut l = ExLog::new();
            let mut model: Vec<(u64, u64)> = Vec::new();
            for op in ops {
                match op {
                    // Pushes continue from the model's last pair often, so runs form.
                    Some((o, n, len)) => {
                        let (o0, n0) = model.last().map_or((o, n), |&(a, b)| (a + 1 - o % 2, b + 1 - n % 2));
                        for k in 0..len {
                            l.push(o0 + k, n0 + k);
                            model.push((o0 + k, n0 + k));
                        }
                    }
                    None => {
                        for _ in 0..100 {
                            prop_assert_eq!(l.pop(), model.pop());
                        }
                    }
                }
                prop_assert_eq!(l.len(), model.len() as u64);
            }
            for (i, &p) in model.iter().enumerate() {
                prop_assert_eq!(l.get(i as u64), Some(p));
            }
            prop_assert_eq!(l.get(model.len() as u64), None);
            prop_assert_eq!(l.iter().collect::<Vec<_>>(), model);
        }
    }
}
