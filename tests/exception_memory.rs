//! Heap used by exception tables, counted by a global allocator: a sequentially rewritten origin
//! costs its snapshots the same few bytes whatever the origin size, a byte or two an exception
//! when concurrent writers shuffle the allocation order, and exceptions that form no runs cost no
//! more than a hash map entry. The tests take a lock, so only one measures at a time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use snapblk::storage::snap::exmap::ExMap;
use snapblk::storage::{MemDevice, Origin, OriginConfig, SnapshotConfig, StoreKind};

struct Counting;

/// Bytes allocated and not freed, by every thread.
static LIVE: AtomicI64 = AtomicI64::new(0);

thread_local! {
    /// The same, by this thread only: what a single-threaded test measures, immune to
    /// allocations the harness makes on other threads meanwhile.
    static MINE: Cell<i64> = const { Cell::new(0) };
}

fn count(bytes: i64) {
    LIVE.fetch_add(bytes, Ordering::Relaxed);
    let _ = MINE.try_with(|m| m.set(m.get() + bytes));
}
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

// SAFETY: forwards to the system allocator; the counter is a plain atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as i64));
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as i64 - layout.size() as i64);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn live() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

fn mine() -> i64 {
    MINE.with(|m| m.get())
}

fn measuring() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn a_million_sequential_exceptions_take_one_tree_node() {
    let _one = measuring();
    let before = mine();
    let mut m = ExMap::new();
    for k in 0..1_000_000 {
        m.insert(k, 2 + k);
    }
    let used = mine() - before;
    assert!(used <= 512, "{used} bytes");
    drop(m);
}

#[test]
fn exceptions_that_form_no_runs_cost_at_most_32_bytes_each() {
    let _one = measuring();
    let n = 200_000u64;
    let before = mine();
    let mut m = ExMap::new();
    for k in 0..n {
        // Old chunks scattered, new chunks allocated in order: no two are consecutive in both.
        m.insert(k.wrapping_mul(0x9e37_79b9) % (1 << 40), k);
    }
    assert_eq!(m.run_count() as u64, n);
    let per = (mine() - before) as f64 / n as f64;
    eprintln!("{per:.1} bytes an exception");
    assert!(per <= 32.0, "{per:.1} bytes an exception");
    drop(m);
}

#[test]
fn a_million_exceptions_allocated_slightly_out_of_order_take_about_a_byte_each() {
    let _one = measuring();
    // Old chunks reach the allocator sorted by old + jitter (jitter < 32), as from a queue of
    // depth 32 served by racing threads: new chunk i goes to the i-th old chunk to arrive.
    let n = 1_000_000u64;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut arrivals: Vec<(u64, u64)> = (0..n)
        .map(|old| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (old + (seed >> 59), old)
        })
        .collect();
    arrivals.sort_unstable();
    let before = mine();
    let mut m = ExMap::new();
    for (new, &(_, old)) in arrivals.iter().enumerate() {
        m.insert(old, 2 + new as u64);
    }
    let per = (mine() - before) as f64 / n as f64;
    eprintln!("{per:.2} bytes an exception, {} segments", m.run_count());
    assert!(
        per <= 1.5,
        "{per:.2} bytes an exception, {} segments",
        m.run_count()
    );
    assert_eq!(m.get(arrivals[500_000].1), Some(500_002));
    drop(m);
}

/// Heap the engine keeps after `snaps` snapshots with 4 KiB chunks saw the whole origin of
/// `size` bytes rewritten once in `bs`-byte writes, in order, by `writers` threads taking the
/// next write from a shared counter (as a queue's helper threads take requests): with several,
/// the copy-outs reach the allocator slightly shuffled.
fn engine_heap_after_rewrite(
    kind: StoreKind,
    snaps: usize,
    size: usize,
    bs: usize,
    writers: usize,
) -> i64 {
    let origin = Arc::new(MemDevice::new(size));
    let o = Arc::new(Origin::new(origin, "origin", OriginConfig::default()));
    for i in 0..snaps {
        let cow = Arc::new(MemDevice::new(size + size / 64 + (64 << 10)));
        let cfg = SnapshotConfig::new(&format!("s{i}"), kind, 8);
        o.add_snapshot(cow, cfg).unwrap();
    }
    let buf = Arc::new(vec![0x5a; bs]);
    let next = Arc::new(AtomicUsize::new(0));
    let before = live();
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let (o, buf, next) = (o.clone(), buf.clone(), next.clone());
            std::thread::spawn(move || loop {
                let off = next.fetch_add(bs, Ordering::Relaxed);
                if off >= size {
                    break;
                }
                o.write(&buf, off as u64).unwrap();
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    for id in o.snapshots() {
        assert_eq!(o.exception_count(id).unwrap(), (size / 4096) as u64);
    }
    live() - before
}

#[test]
fn engine_memory_does_not_grow_with_the_origin() {
    let _one = measuring();
    for kind in [StoreKind::Persistent, StoreKind::Transient] {
        let small = engine_heap_after_rewrite(kind, 4, 4 << 20, 1 << 20, 1);
        let large = engine_heap_after_rewrite(kind, 4, 16 << 20, 1 << 20, 1);
        eprintln!("{kind}: {small} bytes after a 4 MiB rewrite, {large} after 16 MiB");
        // 12 MiB more origin is 3,072 more exceptions a snapshot: 12,288 in all.
        assert!(
            large - small < 16 << 10,
            "{kind}: {small} bytes after a 4 MiB rewrite, {large} after 16 MiB"
        );
    }
}

#[test]
fn copy_outs_from_concurrent_writers_cost_a_few_bytes_an_exception() {
    let _one = measuring();
    for kind in [StoreKind::Persistent, StoreKind::Transient] {
        let small = engine_heap_after_rewrite(kind, 4, 4 << 20, 4096, 8);
        let large = engine_heap_after_rewrite(kind, 4, 16 << 20, 4096, 8);
        // One-entry runs took about 45 bytes (P: map and table) and 27 (N) an exception; the
        // counters and queues sized by concurrency make the rest of the difference noise.
        let per = (large - small) as f64 / 12_288.0;
        eprintln!("{kind}: {small} bytes after a 4 MiB rewrite, {large} after 16 MiB: {per:.1} an exception");
        assert!(
            per < 10.0,
            "{kind}: {small} bytes after a 4 MiB rewrite, {large} after 16 MiB: {per:.1} an exception"
        );
    }
}
