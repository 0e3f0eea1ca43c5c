//! [`ExLog`]: a persistent store's exception table in order, `(old, new)` pairs appended and
//! popped at the end and read by position. Each column is kept in blocks of [`BLOCK`]
//! positions, each packed when it fills: a run of consecutive values costs a few bytes whatever
//! its length, nearly consecutive values (concurrent writers reach the allocator slightly
//! shuffled) one byte each, any others four or eight (scattered first writes: old chunks in
//! random order). Lookups by old chunk are [`super::exmap::ExMap`]'s job.

/// Positions a block holds.
const BLOCK: usize = 256;

/// One full block, packed.
#[derive(Debug, Clone)]
enum Packed {
    /// `first + k` at position k.
    Run(u64),
    /// `base + k + delta[k]` at position k (wrapping: `base` may sit below 0).
    Near(u64, Box<[i8; BLOCK]>),
    Small(Box<[u32]>),
    Wide(Box<[u64]>),
}

impl Packed {
    fn pack(values: &[u64]) -> Packed {
        let first = values[0];
        if values
            .iter()
            .enumerate()
            .all(|(k, &v)| v == first.wrapping_add(k as u64))
        {
            return Packed::Run(first);
        }
        let mut deltas = Box::new([0i8; BLOCK]);
        let near = values.iter().enumerate().all(|(k, &v)| {
            let d = v.wrapping_sub(first.wrapping_add(k as u64)) as i64;
            i8::try_from(d).map(|d| deltas[k] = d).is_ok()
        });
        if near {
            return Packed::Near(first, deltas);
        }
        match values.iter().map(|&v| u32::try_from(v)).collect() {
            Ok(small) => Packed::Small(small),
            Err(_) => Packed::Wide(values.into()),
        }
    }

    fn get(&self, k: usize) -> u64 {
        match self {
            Packed::Run(first) => first + k as u64,
            Packed::Near(base, deltas) => base
                .wrapping_add(k as u64)
                .wrapping_add_signed(i64::from(deltas[k])),
            Packed::Small(v) => u64::from(v[k]),
            Packed::Wide(v) => v[k],
        }
    }
}

/// One column of the table.
#[derive(Debug, Default, Clone)]
struct Column {
    full: Vec<Packed>,
    /// The last, unfilled block.
    tail: Vec<u64>,
}

impl Column {
    fn len(&self) -> u64 {
        (self.full.len() * BLOCK + self.tail.len()) as u64
    }

    fn push(&mut self, v: u64) {
        self.tail.push(v);
        if self.tail.len() == BLOCK {
            self.full.push(Packed::pack(&self.tail));
            self.tail.clear();
        }
    }

    fn pop(&mut self) -> Option<u64> {
        if self.tail.is_empty() {
            let block = self.full.pop()?;
            self.tail = (0..BLOCK).map(|k| block.get(k)).collect();
        }
        self.tail.pop()
    }

    fn get(&self, i: u64) -> Option<u64> {
        let i = usize::try_from(i).ok()?;
        match self.full.get(i / BLOCK) {
            Some(block) => Some(block.get(i % BLOCK)),
            None if i / BLOCK == self.full.len() => self.tail.get(i % BLOCK).copied(),
            None => None,
        }
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.full
            .iter()
            .flat_map(|b| (0..BLOCK).map(move |k| b.get(k)))
            .chain(self.tail.iter().copied())
    }
}

/// `(old, new)` pairs in the order they were added.
#[derive(Debug, Default, Clone)]
pub struct ExLog {
    old: Column,
    new: Column,
}

impl ExLog {
    pub fn new() -> ExLog {
        ExLog::default()
    }

    /// The number of pairs.
    pub fn len(&self) -> u64 {
        self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a pair.
    pub fn push(&mut self, old: u64, new: u64) {
        self.old.push(old);
        self.new.push(new);
    }

    /// Removes and returns the last pair.
    pub fn pop(&mut self) -> Option<(u64, u64)> {
        self.old.pop().zip(self.new.pop())
    }

    /// The pair at position `i`.
    pub fn get(&self, i: u64) -> Option<(u64, u64)> {
        self.old.get(i).zip(self.new.get(i))
    }

    /// Every pair, first added first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.old.iter().zip(self.new.iter())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn log_keeps_order() {
        let mut l = ExLog::new();
        for (o, n) in [(10, 2), (11, 3), (0, 4), (1, 5), (2, 6)] {
            l.push(o, n);
        }
        assert_eq!(l.get(2), Some((0, 4)));
        assert_eq!(l.pop(), Some((2, 6)));
        assert_eq!(
            l.iter().collect::<Vec<_>>(),
            [(10, 2), (11, 3), (0, 4), (1, 5)]
        );
    }

    #[test]
    fn blocks_pack_by_what_their_values_allow() {
        let run: Vec<u64> = (100..100 + BLOCK as u64).collect();
        assert!(matches!(Packed::pack(&run), Packed::Run(100)));
        let mut near = run.clone();
        near.swap(3, 7);
        assert!(matches!(Packed::pack(&near), Packed::Near(..)));
        let scattered: Vec<u64> = (0..BLOCK as u64).map(|k| k * 7919 % 100_003).collect();
        assert!(matches!(Packed::pack(&scattered), Packed::Small(_)));
        let wide: Vec<u64> = scattered.iter().map(|v| v << 33).collect();
        assert!(matches!(Packed::pack(&wide), Packed::Wide(_)));
        for (values, block) in [&run, &near, &scattered, &wide]
            .into_iter()
            .map(|v| (v, Packed::pack(v)))
        {
            assert!((0..BLOCK).all(|k| block.get(k) == values[k]));
        }
    }

    proptest! {
        #[test]
        fn exlog_behaves_like_a_vec(
            ops in proptest::collection::vec(
                prop_oneof![
                    3 => (0..8u64, 0..8u64, 1..300u64).prop_map(|(o, n, l)| Some((o, n, l))),
                    1 => (any::<u32>(), 1..600u64).prop_map(|(seed, l)| Some((u64::from(seed) << 20, 1 << 40, l))),
                    1 => Just(None),
                ],
                1..40,
            )
        ) {
            let mut l = ExLog::new();
            let mut model: Vec<(u64, u64)> = Vec::new();
            for op in ops {
                match op {
                    // Scattered values (a seed far up), or pushes continuing from the model's
                    // last pair, often, so runs form.
                    Some((o, n, len)) if n == 1 << 40 => {
                        for k in 0..len {
                            let v = (o + k * 2_654_435_761) % (1 << 45);
                            l.push(v, k);
                            model.push((v, k));
                        }
                    }
                    Some((o, n, len)) => {
                        let (o0, n0) = model
                            .last()
                            .map_or((o, n), |&(a, b)| (a + 1 - o % 2, b + 1 - n % 2));
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
