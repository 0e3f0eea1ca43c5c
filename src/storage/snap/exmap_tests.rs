//! Tests of the compact exception map against a `HashMap` model.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

#[test]
fn sequential_inserts_make_one_segment_of_any_length() {
    let mut m = ExMap::new();
    for k in 0..100_000 {
        assert_eq!(m.insert(k, 2 + k), None);
    }
    assert_eq!((m.len(), m.run_count()), (100_000, 1));
    assert_eq!(m.get(99_999), Some(100_001));
    assert_eq!(m.get(100_000), None);
    m.check();
}

#[test]
fn inserts_join_segments_on_both_sides() {
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
    m.check();
}

#[test]
fn shuffled_values_make_mixed_segments_of_a_byte_a_key() {
    let mut m = ExMap::new();
    // Blocks of 32 keys whose values arrive in reverse, as a racing allocator hands them out.
    for block in 0..100u64 {
        for (i, k) in (block * 32..block * 32 + 32).rev().enumerate() {
            m.insert(k, 1000 + block * 32 + i as u64);
        }
    }
    assert_eq!(m.len(), 3200);
    assert_eq!(m.run_count(), 1, "one mixed segment");
    assert_eq!(m.get(31), Some(1000));
    assert_eq!(m.get(0), Some(1031));
    m.check();
}

#[test]
fn values_too_far_apart_stay_apart() {
    let mut m = ExMap::new();
    m.insert(1, 500);
    m.insert(2, 7);
    m.insert(3, 8);
    assert_eq!(m.run_count(), 2);
    assert_eq!(
        (m.get(1), m.get(2), m.get(3)),
        (Some(500), Some(7), Some(8))
    );
    m.check();
}

#[test]
fn remove_splits_a_segment_and_reinsert_joins_it() {
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
    m.check();
}

#[test]
fn removing_the_shuffled_keys_of_a_mixed_segment_leaves_exact_ones() {
    let mut m = ExMap::new();
    for k in 0..10 {
        m.insert(k, 100 + k);
    }
    m.insert(10, 120);
    m.insert(11, 111);
    assert_eq!(m.run_count(), 1);
    m.remove(10);
    assert_eq!(m.run_count(), 2);
    assert_eq!(m.get(11), Some(111));
    m.check();
}

#[test]
fn insert_replaces_an_existing_mapping() {
    let mut m = ExMap::new();
    m.insert(5, 5);
    m.insert(6, 6);
    assert_eq!(m.insert(6, 9), Some(6));
    assert_eq!((m.get(6), m.len()), (Some(9), 2));
    m.check();
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u64, u64),
    /// `len` pairs from `(key, value)`, values shuffled within windows of `window`.
    InsertRun(u64, u64, u64, u64),
    Remove(u64),
    RemoveRun(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..1200u64, 0..1200u64).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => (0..1200u64, 0..1200u64, 1..700u64, 1..40u64)
            .prop_map(|(k, v, l, w)| Op::InsertRun(k, v, l, w)),
        3 => (0..1200u64).prop_map(Op::Remove),
        1 => (0..1200u64, 1..400u64).prop_map(|(k, l)| Op::RemoveRun(k, l)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn exmap_behaves_like_a_hashmap(ops in proptest::collection::vec(op(), 1..60)) {
        let mut m = ExMap::new();
        let mut model = HashMap::new();
        for op in ops {
            match op {
                Op::Insert(k, v) => prop_assert_eq!(m.insert(k, v), model.insert(k, v)),
                Op::InsertRun(k, v, len, w) => {
                    for i in 0..len {
                        // Reverse each window: value v + i goes to key k + i mirrored.
                        let j = i / w * w + (w - 1 - i % w);
                        prop_assert_eq!(m.insert(k + j, v + i), model.insert(k + j, v + i));
                    }
                }
                Op::Remove(k) => prop_assert_eq!(m.remove(k), model.remove(&k)),
                Op::RemoveRun(k, len) => {
                    for i in 0..len {
                        prop_assert_eq!(m.remove(k + i), model.remove(&(k + i)));
                    }
                }
            }
            m.check();
            prop_assert_eq!(m.len(), model.len() as u64);
        }
        for k in 0..2000 {
            prop_assert_eq!(m.get(k), model.get(&k).copied());
        }
        for (from, to) in [(0, 2000), (3, 900), (450, 451), (700, 1600), (5, 5)] {
            let mut ranges = Vec::new();
            m.old_ranges(from, to, &mut ranges);
            let got: Vec<u64> = ranges.iter().flat_map(|r| r.clone()).collect();
            let mut want: Vec<u64> =
                model.keys().copied().filter(|k| (from..to).contains(k)).collect();
            want.sort_unstable();
            prop_assert_eq!(got, want);
            prop_assert!(ranges.windows(2).all(|w| w[0].end < w[1].start), "{:?}", ranges);
        }
        let mut want: Vec<_> = model.into_iter().collect();
        want.sort_unstable();
        prop_assert_eq!(m.iter().collect::<Vec<_>>(), want);
    }
}
