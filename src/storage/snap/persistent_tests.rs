//! Format tests for the persistent store: hand-built bytes, area math, status strings, loading.

use super::*;
use crate::storage::block::device::MemDevice;

const KIB4: usize = 4096;

fn fresh(chunks: usize, cs: u64) -> (MemDevice, Persistent) {
    let dev = MemDevice::new(chunks * cs as usize * 512);
    let l = Persistent::open(&dev, "cow", StoreKind::Persistent, cs, 512, true).unwrap();
    assert!(l.created);
    (dev, l.store)
}

fn commit(store: &mut Persistent, dev: &MemDevice, old: u64) -> std::io::Result<ChunkIndex> {
    let new = store.prepare().ok_or(std::io::ErrorKind::StorageFull)?;
    let batch = [(ChunkIndex(old), new)];
    store.plan_commit(&batch).run(dev)?;
    store.complete_commit(&batch);
    Ok(new)
}

fn entry(old: u64, new: u64) -> Vec<u8> {
    [old.to_le_bytes(), new.to_le_bytes()].concat()
}

#[test]
fn fresh_cs8_store_has_the_linux_header_and_an_empty_area() {
    let (dev, store) = fresh(64, 8);
    let bytes = dev.contents();
    let mut want = vec![0u8; 2 * KIB4];
    want[..16].copy_from_slice(&[0x53, 0x6e, 0x41, 0x70, 1, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0]);
    assert_eq!(&bytes[..2 * KIB4], &want[..]);
    assert_eq!(store.usage().to_string(), "16/512 16");
}

#[test]
fn exceptions_are_written_as_le64_pairs_in_area_0() {
    let (dev, mut store) = fresh(64, 8);
    assert_eq!(commit(&mut store, &dev, 10).unwrap(), ChunkIndex(2));
    assert_eq!(commit(&mut store, &dev, 11).unwrap(), ChunkIndex(3));
    assert_eq!(commit(&mut store, &dev, 0).unwrap(), ChunkIndex(4));
    let bytes = dev.contents();
    let mut want = vec![0u8; KIB4];
    let entries = [entry(10, 2), entry(11, 3), entry(0, 4)].concat();
    want[..48].copy_from_slice(&entries);
    assert_eq!(&bytes[KIB4..2 * KIB4], &want[..]);
    assert_eq!(
        &bytes[..16],
        &[0x53, 0x6e, 0x41, 0x70, 1, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0]
    );
    let again = Persistent::open(&dev, "cow", StoreKind::Persistent, 8, 512, true).unwrap();
    assert_eq!(again.store.entries(), [(10, 2), (11, 3), (0, 4)]);
    assert_eq!(again.store.next_free(), 5);
    assert_eq!(again.store.lookup(ChunkIndex(0)), Some(ChunkIndex(4)));
}

#[test]
fn cs8_geometry_area_0_at_1_data_2_to_257_area_1_at_258() {
    let g = Geometry {
        cs: ChunkSize::new(8, "c").unwrap(),
    };
    assert_eq!((g.epa(), g.stride()), (256, 257));
    assert_eq!(g.area_chunk(0), 1);
    assert_eq!(g.area_chunk(1), 258);
    assert!(g.is_metadata(258) && g.is_metadata(0) && !g.is_metadata(257));
    let (_, mut store) = fresh(1024, 8);
    let chunks: Vec<u64> = (0..257).map(|_| store.prepare().unwrap().0).collect();
    assert_eq!(chunks[0], 2);
    assert_eq!(chunks[255], 257);
    assert_eq!(chunks[256], 259, "chunk 258 holds area 1");
}

#[test]
fn a_258_chunk_cow_fails_the_256th_commit_and_259_chunks_hold_256() {
    let (dev, mut store) = fresh(258, 8);
    for old in 0..255 {
        commit(&mut store, &dev, old).unwrap();
    }
    assert!(
        commit(&mut store, &dev, 255).is_err(),
        "area 1 cannot be zeroed"
    );
    let (dev, mut store) = fresh(259, 8);
    for old in 0..256 {
        commit(&mut store, &dev, old).unwrap();
    }
    assert!(
        store.prepare().is_none(),
        "the 257th exception does not fit"
    );
    let again = Persistent::open(&dev, "cow", StoreKind::Persistent, 8, 512, true).unwrap();
    assert_eq!(again.store.exception_count(), 256);
}

#[test]
fn status_after_306_exceptions_is_2472_of_8192_24() {
    let (dev, mut store) = fresh(1024, 8);
    assert_eq!(store.usage().to_string(), "16/8192 16");
    for old in 0..306 {
        commit(&mut store, &dev, old).unwrap();
    }
    assert_eq!(store.usage().to_string(), "2472/8192 24");
    let again = Persistent::open(&dev, "cow", StoreKind::Persistent, 8, 512, true).unwrap();
    assert_eq!(again.store.usage().to_string(), "2472/8192 24");
    assert_eq!(again.store.exception_count(), 306);
}

#[test]
fn chunk_size_zero_uses_disk_or_32_and_disk_overrides_request() {
    let dev = MemDevice::new(1 << 20);
    let l = Persistent::open(&dev, "c", StoreKind::Persistent, 0, 512, true).unwrap();
    assert_eq!(l.store.chunk_size().sectors(), 32);
    let l = Persistent::open(&dev, "c", StoreKind::Persistent, 0, 512, true).unwrap();
    assert_eq!(l.store.chunk_size().sectors(), 32);
    let l = Persistent::open(&dev, "c", StoreKind::Persistent, 8, 512, true).unwrap();
    assert_eq!(l.store.chunk_size().sectors(), 32, "the disk value wins");
    let blank = MemDevice::new(1 << 20);
    let e = Persistent::open(&blank, "c", StoreKind::Persistent, 65, 512, true).unwrap_err();
    assert!(e.to_string().contains("Chunk size is not a power of 2"));
}

#[test]
fn bad_magic_and_version_are_errors_and_invalid_loads_empty() {
    let (dev, mut store) = fresh(64, 8);
    commit(&mut store, &dev, 3).unwrap();
    dev.write_at(&[1, 0, 0, 0], 8).unwrap();
    dev.write_at(&[0, 0, 0, 0], 4).unwrap();
    let l = Persistent::open(&dev, "c", StoreKind::Persistent, 8, 512, true).unwrap();
    assert!(!l.header.valid);
    assert_eq!(l.store.exception_count(), 0);
    dev.write_at(&[2, 0, 0, 0], 8).unwrap();
    let e = Persistent::open(&dev, "c", StoreKind::Persistent, 8, 512, true).unwrap_err();
    assert!(matches!(e, CowError::BadVersion { version: 2, .. }), "{e}");
    dev.write_at(&[1, 2, 3, 4], 0).unwrap();
    let e = Persistent::open(&dev, "c", StoreKind::Persistent, 8, 512, true).unwrap_err();
    assert!(e.to_string().contains("Invalid or corrupt snapshot"), "{e}");
}

#[test]
fn entries_past_the_end_or_duplicated_are_named_errors() {
    let (dev, mut store) = fresh(64, 8);
    commit(&mut store, &dev, 3).unwrap();
    dev.write_at(&entry(4, 64), KIB4 as u64 + 16).unwrap();
    let e = Persistent::open(&dev, "cowfile", StoreKind::Persistent, 8, 512, true).unwrap_err();
    assert!(matches!(e, CowError::EntryPastEnd { new: 64, .. }), "{e}");
    assert!(e.to_string().contains("cowfile"));
    dev.write_at(&entry(3, 5), KIB4 as u64 + 16).unwrap();
    let e = Persistent::open(&dev, "cowfile", StoreKind::Persistent, 8, 512, true).unwrap_err();
    assert!(matches!(e, CowError::DuplicateEntry { old: 3, .. }), "{e}");
    dev.write_at(&entry(1 << 60, 5), KIB4 as u64 + 16).unwrap();
    let e = Persistent::open(&dev, "cowfile", StoreKind::Persistent, 8, 512, true).unwrap_err();
    assert!(matches!(e, CowError::ChunkNumberTooLarge { .. }), "{e}");
}

#[test]
fn merge_runs_are_consecutive_within_an_area_newest_first() {
    let (dev, mut store) = fresh(1024, 8);
    for old in [7, 20, 21, 22] {
        commit(&mut store, &dev, old).unwrap();
    }
    let run = store.last_run().unwrap();
    assert_eq!(
        (run.old, run.new, run.len),
        (ChunkIndex(20), ChunkIndex(3), 3)
    );
    store.plan_merge_clear(3).run(&dev).unwrap();
    store.complete_merge_clear(3);
    assert_eq!(store.usage().to_string(), "24/8192 16");
    let again = Persistent::open(&dev, "cow", StoreKind::Persistent, 8, 512, true).unwrap();
    assert_eq!(again.store.entries(), [(7, 2)]);
    store.plan_merge_clear(1).run(&dev).unwrap();
    store.complete_merge_clear(1);
    assert_eq!(store.usage().to_string(), "16/8192 16");
    assert!(store.last_run().is_none());
}

#[test]
fn data_indices_skip_the_header_and_areas() {
    let g = Geometry {
        cs: ChunkSize::new(8, "c").unwrap(),
    };
    for (chunk, d) in [(2, 0), (257, 255), (259, 256), (514, 511), (516, 512)] {
        assert_eq!(g.data_index(chunk), d, "chunk {chunk}");
        assert_eq!(g.data_chunk(d), chunk, "data index {d}");
    }
    for chunk in (0..5000).filter(|&c| !g.is_metadata(c)) {
        assert_eq!(g.data_chunk(g.data_index(chunk)), chunk);
    }
}

#[test]
fn a_sequential_table_is_one_run_in_memory_but_merges_one_area_at_a_time() {
    let (dev, mut store) = fresh(1024, 8);
    for old in 0..300 {
        commit(&mut store, &dev, 1000 + old).unwrap();
    }
    assert_eq!(store.lookup(ChunkIndex(1255)), Some(ChunkIndex(257)));
    assert_eq!(store.lookup(ChunkIndex(1256)), Some(ChunkIndex(259)));
    let run = store.last_run().unwrap();
    assert_eq!(
        (run.old, run.new, run.len),
        (ChunkIndex(1256), ChunkIndex(259), 44)
    );
    store.plan_merge_clear(44).run(&dev).unwrap();
    store.complete_merge_clear(44);
    let run = store.last_run().unwrap();
    assert_eq!(
        (run.old, run.new, run.len),
        (ChunkIndex(1000), ChunkIndex(2), 256)
    );
    let again = Persistent::open(&dev, "cow", StoreKind::Persistent, 8, 512, true).unwrap();
    assert_eq!(again.store.exception_count(), 256);
    assert_eq!(again.store.last_run(), Some(run));
}

#[test]
fn a_table_out_of_allocation_order_loads_and_merges_entry_by_entry() {
    let (dev, mut store) = fresh(64, 8);
    commit(&mut store, &dev, 9).unwrap();
    // As an old kernel may have left it: new chunks not in table order.
    let area = KIB4 as u64;
    dev.write_at(&[entry(5, 4), entry(6, 3), entry(7, 2)].concat(), area)
        .unwrap();
    let l = Persistent::open(&dev, "cow", StoreKind::Persistent, 8, 512, true).unwrap();
    let mut store = l.store;
    assert_eq!(store.entries(), [(5, 4), (6, 3), (7, 2)]);
    assert_eq!(store.lookup(ChunkIndex(6)), Some(ChunkIndex(3)));
    assert_eq!(store.next_free(), 5);
    let run = store.last_run().unwrap();
    assert_eq!(
        (run.old, run.new, run.len),
        (ChunkIndex(7), ChunkIndex(2), 1)
    );
    store.complete_merge_clear(1);
    assert_eq!(store.lookup(ChunkIndex(7)), None);
    let run = store.last_run().unwrap();
    assert_eq!(
        (run.old, run.new, run.len),
        (ChunkIndex(6), ChunkIndex(3), 1)
    );
    dev.write_at(&entry(8, 4), area + 48).unwrap();
    let e = Persistent::open(&dev, "cow", StoreKind::Persistent, 8, 512, true).unwrap_err();
    assert!(matches!(e, CowError::DuplicateTarget { new: 4, .. }), "{e}");
}

#[test]
fn one_commit_spanning_three_areas_zeroes_each_next_area_first_and_reloads_whole() {
    // cs 1: 32 entries an area. 70 exceptions, from slot 5 of area 0: the rest of area 0, all of
    // area 1 and 11 slots of area 2, in one commit.
    let (dev, mut store) = fresh(256, 1);
    for old in 0..5 {
        commit(&mut store, &dev, old).unwrap();
    }
    // Old bytes where areas 1, 2 and 3 will be: the commit must zero them, not trust the file.
    for area in 1..4 {
        let at = store.geometry().area_chunk(area) * 512;
        dev.write_at(&[0xee; 512], at).unwrap();
    }
    let batch: Vec<_> = (100..170)
        .map(|old| (ChunkIndex(old), store.prepare().unwrap()))
        .collect();
    let io = store.plan_commit(&batch);
    assert_eq!(io.write.len(), 3, "a write per area touched");
    assert_eq!(
        io.zero.len(),
        2,
        "areas 1 and 2, each before the entry filling the one before"
    );
    assert!(io.flush_first && io.flush_after);
    io.run(&dev).unwrap();
    store.complete_commit(&batch);
    let again = Persistent::open(&dev, "cow", StoreKind::Persistent, 1, 512, true).unwrap();
    assert_eq!(again.store.entries(), store.entries());
    assert_eq!(again.store.exception_count(), 75);
    assert_eq!(again.store.current_area(), (2, 11));
}
