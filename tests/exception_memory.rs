//! Heap used by exception tables, counted by a global allocator per thread: a sequentially
//! rewritten origin costs its snapshots the same few bytes whatever the origin size, and
//! exceptions that form no runs cost no more than a hash map entry.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use snapblk::storage::exmap::ExMap;
use snapblk::storage::{MemDevice, Origin, OriginConfig, SnapshotConfig, StoreKind};

struct Counting;

thread_local! {
    /// Bytes allocated and not freed by this thread.
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialised thread local,
// which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.with(|l| l.set(l.get() + layout.size() as i64));
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.with(|l| l.set(l.get() + layout.size() as i64));
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.with(|l| l.set(l.get() - layout.size() as i64));
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.with(|l| l.set(l.get() + new_size as i64 - layout.size() as i64));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn live() -> i64 {
    LIVE.with(Cell::get)
}

#[test]
fn a_million_sequential_exceptions_take_one_tree_node() {
    let before = live();
    let mut m = ExMap::new();
    for k in 0..1_000_000 {
        m.insert(k, 2 + k);
    }
    let used = live() - before;
    assert!(used <= 512, "{used} bytes");
    drop(m);
}

#[test]
fn exceptions_that_form_no_runs_cost_at_most_32_bytes_each() {
    let n = 200_000u64;
    let before = live();
    let mut m = ExMap::new();
    for k in 0..n {
        // Old chunks scattered, new chunks allocated in order: no two are consecutive in both.
        m.insert(k.wrapping_mul(0x9e37_79b9) % (1 << 40), k);
    }
    assert_eq!(m.run_count() as u64, n);
    let per = (live() - before) as f64 / n as f64;
    assert!(per <= 32.0, "{per:.1} bytes an exception");
    drop(m);
}

/// Heap the engine keeps after `snaps` snapshots with 4 KiB chunks saw the whole origin of
/// `size` bytes rewritten once, sequentially, in 1 MiB writes.
fn engine_heap_after_rewrite(kind: StoreKind, snaps: usize, size: usize) -> i64 {
    let origin = Arc::new(MemDevice::new(size));
    let o = Origin::new(origin, "origin", OriginConfig::default());
    for i in 0..snaps {
        let cow = Arc::new(MemDevice::new(size + size / 64 + (64 << 10)));
        let cfg = SnapshotConfig::new(&format!("s{i}"), kind, 8);
        o.add_snapshot(cow, cfg).unwrap();
    }
    let buf = vec![0x5a; 1 << 20];
    let before = live();
    for off in (0..size).step_by(buf.len()) {
        o.write(&buf, off as u64).unwrap();
    }
    for id in o.snapshots() {
        assert_eq!(o.exception_count(id).unwrap(), (size / 4096) as u64);
    }
    live() - before
}

#[test]
fn engine_memory_does_not_grow_with_the_origin() {
    for kind in [StoreKind::Persistent, StoreKind::Transient] {
        let small = engine_heap_after_rewrite(kind, 4, 4 << 20);
        let large = engine_heap_after_rewrite(kind, 4, 16 << 20);
        // 12 MiB more origin is 3,072 more exceptions a snapshot: 12,288 in all.
        assert!(
            large - small < 16 << 10,
            "{kind}: {small} bytes after a 4 MiB rewrite, {large} after 16 MiB"
        );
    }
}
