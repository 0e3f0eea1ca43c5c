//! Compact exception maps. Linux stores exceptions consecutive in both old and new chunk as one
//! hash entry (dm-exception-store's `DM_CHUNK_CONSECUTIVE_BITS`, at most 256 chunks); these
//! this type does the same without that cap, and also keep exceptions whose new chunks are only nearly
//! in order compactly: concurrent writers reach the allocator in a slightly shuffled order, so a
//! sequential origin rewrite at queue depth 32 maps old chunk c to about c ± 30.
//!
//! - [`ExMap`]: key → value (old chunk → new chunk) for lookups, as segments of consecutive keys
//!   in a `BTreeMap` keyed by their first key. A segment is *exact* (`value = base + k` for the
//!   k-th key: 16 bytes whatever its length) or *mixed* (`base + k + delta[k]`, one `i8` a key:
//!   for shuffled allocation). An insert joins the neighbouring segments when the values fit, a
//!   remove splits its segment. A key that joins nothing costs one 16-byte tree slot (about 27
//!   bytes with the tree's fill), no more than a `HashMap<u64, u64>` entry.
//!
//! Keys and values must be below [`CHUNK_LIMIT`] (2^56, the persistent format's own limit; an
//! origin chunk index is below 2^55): the byte above a value carries the segment's length or kind.
//!
//! ```text
//! segment slot: key = first key | value = [ code:8 | base:56 ]
//!   code 0..=253  exact, len = code + 1        code 254  exact, len in `long`
//!   code 255      mixed: base and deltas in `mixed` (at most MIXED_MAX keys)
//! ```

use std::collections::BTreeMap;
use std::ops::Range;

/// Values kept in these tables must be below this: the bits above carry segment codes.
pub const CHUNK_LIMIT: u64 = 1 << 56;
const NUM_MASK: u64 = CHUNK_LIMIT - 1;
/// The longest exact segment whose length fits the code.
const SHORT_MAX: u64 = 254;
/// Code: an exact segment whose length is in `long`.
const LONG: u64 = 254;
/// Code: a mixed segment.
const MIXED: u64 = 255;
/// The most keys of a mixed segment: bounds the bytes moved by a split or a join.
const MIXED_MAX: u64 = 4096;
/// The longest exact segment a mixed one takes in (one byte a key instead of one slot).
const ABSORB_MAX: u64 = 64;

/// A mixed segment's values: `base + k + deltas[k]` (wrapping: `base` may sit below 0).
#[derive(Debug, Clone)]
struct Mixed {
    base: u64,
    deltas: Vec<i8>,
}

impl Mixed {
    fn value(&self, k: u64) -> u64 {
        let d = self.deltas[k as usize];
        self.base.wrapping_add(k).wrapping_add_signed(i64::from(d))
    }
}

/// A segment as found: keys `start..start + len`.
#[derive(Debug, Clone, Copy)]
struct Seg {
    start: u64,
    len: u64,
    /// The first value of an exact segment; `None` for a mixed one.
    exact: Option<u64>,
}

impl Seg {
    fn end(self) -> u64 {
        self.start + self.len
    }
}

/// The delta placing `value` at position `k` of a segment with base `base`, if it fits.
fn delta(base: u64, k: u64, value: u64) -> Option<i8> {
    i8::try_from(value.wrapping_sub(base.wrapping_add(k)) as i64).ok()
}

/// Key → value (old chunk → new chunk), stored as segments of consecutive keys.
#[derive(Debug, Default, Clone)]
pub struct ExMap {
    /// First key of a segment → code and base, packed.
    runs: BTreeMap<u64, u64>,
    /// Lengths of exact segments longer than `SHORT_MAX` (code `LONG`).
    long: BTreeMap<u64, u64>,
    /// Mixed segments (code `MIXED`).
    mixed: BTreeMap<u64, Mixed>,
    /// Keys held.
    count: u64,
}

impl ExMap {
    pub fn new() -> ExMap {
        ExMap::default()
    }

    /// The number of keys (exceptions).
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The number of segments: what the map's memory is proportional to, with one byte a key
    /// of the mixed ones.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    pub fn get(&self, key: u64) -> Option<u64> {
        let s = self.containing(key)?;
        Some(self.value(s, key - s.start))
    }

    pub fn contains(&self, key: u64) -> bool {
        self.containing(key).is_some()
    }

    /// Maps `key` to `value`, joining the segments on either side where the values fit.
    /// Returns the previous value of `key`.
    ///
    /// # Panics
    /// If `key` or `value` is not below [`CHUNK_LIMIT`].
    pub fn insert(&mut self, key: u64, value: u64) -> Option<u64> {
        assert!(
            key < CHUNK_LIMIT && value < CHUNK_LIMIT,
            "chunk number {} past the table limit",
            key.max(value)
        );
        let previous = self.remove(key);
        self.count += 1;
        // `key` is unmapped now, so a segment holding `key - 1` ends there.
        let left = key.checked_sub(1).and_then(|k| self.containing(k));
        let right = key.checked_add(1).and_then(|k| self.starting_at(k));
        let l_exact = left.filter(|l| l.exact.is_some_and(|b| b + l.len == value));
        let r_exact = right.filter(|r| r.exact == Some(value + 1));
        // 1. Exact on both sides: the sequential case (no length cap).
        if let (Some(l), Some(r)) = (l_exact, r_exact) {
            self.take(r.start);
            self.put_exact(l.start, value - l.len, l.len + 1 + r.len);
            return previous;
        }
        // 2. Mixed, both sides: mends the boundary for good (no later insert comes here again).
        if let (Some(l), Some(r)) = (left, right) {
            let base = self.base(l);
            let joins = l.len + 1 + r.len <= MIXED_MAX
                && self.absorbable(l)
                && self.absorbable(r)
                && self.fits(r, base, l.len + 1);
            if let Some(d) = delta(base, l.len, value).filter(|_| joins) {
                let shifted = self.shifted(r, base, l.len + 1);
                let mut deltas = self.take_deltas(l);
                deltas.push(d);
                self.take(r.start);
                deltas.extend(shifted);
                self.put_deltas(l.start, base, deltas);
                return previous;
            }
        }
        // 3. Exact, one side.
        if let Some(l) = l_exact {
            self.put_exact(l.start, value - l.len, l.len + 1);
            return previous;
        }
        if let Some(r) = r_exact {
            self.take(r.start);
            self.put_exact(key, value, r.len + 1);
            return previous;
        }
        // 4. Mixed, one side.
        if let Some(l) = left.filter(|l| l.len < MIXED_MAX && self.absorbable(*l)) {
            let base = self.base(l);
            if let Some(d) = delta(base, l.len, value) {
                let mut deltas = self.take_deltas(l);
                deltas.push(d);
                self.put_deltas(l.start, base, deltas);
                return previous;
            }
        }
        let r =
            right.filter(|r| r.len < MIXED_MAX && self.absorbable(*r) && self.fits(*r, value, 1));
        if let Some(r) = r {
            let mut deltas = vec![0];
            deltas.extend(self.shifted(r, value, 1));
            self.take(r.start);
            self.put_deltas(key, value, deltas);
            return previous;
        }
        self.put_exact(key, value, 1);
        previous
    }

    /// Unmaps `key`, splitting its segment; returns its value.
    pub fn remove(&mut self, key: u64) -> Option<u64> {
        let s = self.containing(key)?;
        let k = key - s.start;
        let value = self.value(s, k);
        self.count -= 1;
        match s.exact {
            Some(base) => {
                if k == 0 {
                    self.take(s.start);
                } else {
                    self.put_exact(s.start, base, k);
                }
                if k + 1 < s.len {
                    self.put_exact(key + 1, base + k + 1, s.len - k - 1);
                }
            }
            None => {
                let Mixed { base, mut deltas } = self.take_mixed(s.start);
                let tail = deltas.split_off(k as usize + 1);
                deltas.pop();
                if !deltas.is_empty() {
                    self.put_deltas(s.start, base, deltas);
                }
                if !tail.is_empty() {
                    self.put_deltas(key + 1, base.wrapping_add(k + 1), tail);
                }
            }
        }
        Some(value)
    }

    pub fn clear(&mut self) {
        *self = ExMap::default();
    }

    /// Every `(key, value)` pair in key order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.runs.iter().flat_map(move |(&start, &packed)| {
            let s = self.seg(start, packed);
            (start..s.end()).zip(self.values(s))
        })
    }

    /// Appends to `out` the keys in `[from, to)` as ranges in order, joining ranges that touch
    /// (also the last one already in `out`).
    pub fn old_ranges(&self, from: u64, to: u64, out: &mut Vec<Range<u64>>) {
        if from >= to {
            return;
        }
        let first = self.runs.range(..from).next_back();
        for (&start, &packed) in first.into_iter().chain(self.runs.range(from..to)) {
            let s = self.seg(start, packed);
            let r = s.start.max(from)..s.end().min(to);
            if r.is_empty() {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
    }

    fn seg(&self, start: u64, packed: u64) -> Seg {
        let (len, exact) = match packed >> 56 {
            MIXED => (self.mixed[&start].deltas.len() as u64, None),
            LONG => (self.long[&start], Some(packed & NUM_MASK)),
            code => (code + 1, Some(packed & NUM_MASK)),
        };
        Seg { start, len, exact }
    }

    fn containing(&self, key: u64) -> Option<Seg> {
        let (&start, &packed) = self.runs.range(..=key).next_back()?;
        let s = self.seg(start, packed);
        (key - start < s.len).then_some(s)
    }

    fn starting_at(&self, key: u64) -> Option<Seg> {
        self.runs.get(&key).map(|&packed| self.seg(key, packed))
    }

    fn value(&self, s: Seg, k: u64) -> u64 {
        match s.exact {
            Some(base) => base + k,
            None => self.mixed[&s.start].value(k),
        }
    }

    /// The values of segment `s`, in key order.
    fn values(&self, s: Seg) -> impl Iterator<Item = u64> + '_ {
        let mixed = s.exact.is_none().then(|| &self.mixed[&s.start]);
        (0..s.len).map(move |k| match mixed {
            Some(m) => m.value(k),
            None => s.exact.unwrap_or(0) + k,
        })
    }

    /// Whether `s` may become part of a mixed segment: a long exact one costs less as it is.
    fn absorbable(&self, s: Seg) -> bool {
        s.exact.is_none() || s.len <= ABSORB_MAX
    }

    fn base(&self, s: Seg) -> u64 {
        s.exact.unwrap_or_else(|| self.mixed[&s.start].base)
    }

    /// Whether every value of `s`, placed from position `at` of a segment with base `base`,
    /// has a delta that fits.
    fn fits(&self, s: Seg, base: u64, at: u64) -> bool {
        match s.exact {
            Some(b) => delta(base, at, b).is_some(),
            None => {
                let m = &self.mixed[&s.start];
                let shift = m.base.wrapping_sub(base.wrapping_add(at)) as i64;
                let (lo, hi) = m
                    .deltas
                    .iter()
                    .fold((i8::MAX, i8::MIN), |(lo, hi), &d| (lo.min(d), hi.max(d)));
                let ok = |d: i8| i8::try_from(shift.saturating_add(i64::from(d))).is_ok();
                ok(lo) && ok(hi)
            }
        }
    }

    /// The deltas of `s`'s values placed from position `at` of a segment with base `base`
    /// (checked by `fits`).
    fn shifted(&self, s: Seg, base: u64, at: u64) -> Vec<i8> {
        (at..)
            .zip(self.values(s))
            .map(|(k, v)| delta(base, k, v).unwrap_or(0))
            .collect()
    }

    /// Removes segment `s`, returning its deltas (zeros for an exact one).
    fn take_deltas(&mut self, s: Seg) -> Vec<i8> {
        match s.exact {
            Some(_) => {
                self.take(s.start);
                vec![0; s.len as usize]
            }
            None => self.take_mixed(s.start).deltas,
        }
    }

    fn take_mixed(&mut self, start: u64) -> Mixed {
        self.runs.remove(&start);
        self.mixed.remove(&start).unwrap_or(Mixed {
            base: 0,
            deltas: Vec::new(),
        })
    }

    fn take(&mut self, start: u64) {
        match self.runs.remove(&start).map(|v| v >> 56) {
            Some(LONG) => {
                self.long.remove(&start);
            }
            Some(MIXED) => {
                self.mixed.remove(&start);
            }
            _ => {}
        }
    }

    /// Stores an exact segment, replacing any segment starting at `start`.
    fn put_exact(&mut self, start: u64, base: u64, len: u64) {
        if self.runs.get(&start).is_some_and(|v| v >> 56 == MIXED) {
            self.mixed.remove(&start);
        }
        let code = if len <= SHORT_MAX {
            self.long.remove(&start);
            len - 1
        } else {
            self.long.insert(start, len);
            LONG
        };
        self.runs.insert(start, base | (code << 56));
    }

    /// Stores a segment from its deltas: exact when they are all zero.
    fn put_deltas(&mut self, start: u64, base: u64, mut deltas: Vec<i8>) {
        if deltas.iter().all(|&d| d == 0) {
            return self.put_exact(start, base, deltas.len() as u64);
        }
        // A full segment grows no more; others keep room to grow, up to twice their length.
        if deltas.len() as u64 == MIXED_MAX || deltas.capacity() > 2 * deltas.len() {
            deltas.shrink_to_fit();
        }
        if self
            .runs
            .insert(start, MIXED << 56)
            .is_some_and(|v| v >> 56 == LONG)
        {
            self.long.remove(&start);
        }
        self.mixed.insert(start, Mixed { base, deltas });
    }

    /// Checks the internal invariants (tests).
    #[cfg(test)]
    fn check(&self) {
        let mut end = None;
        let mut count = 0;
        for (&start, &packed) in &self.runs {
            let s = self.seg(start, packed);
            assert!(s.len > 0, "empty segment at {start}");
            assert!(end.is_none_or(|e| e <= start), "overlap at {start}");
            if s.exact.is_none() {
                assert!(s.len <= MIXED_MAX, "mixed segment at {start} too long");
            }
            end = Some(s.end());
            count += s.len;
        }
        assert_eq!(count, self.count);
        assert!(self.long.keys().all(|k| self.runs[k] >> 56 == LONG));
        assert!(self.mixed.keys().all(|k| self.runs[k] >> 56 == MIXED));
    }
}

#[cfg(test)]
#[path = "exmap_tests.rs"]
mod tests;
