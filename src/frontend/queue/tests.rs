//! Unit tests of the ring driver, with the test playing the device.

use super::*;

fn queue(size: u16, event_idx: bool) -> Queue {
    let mem = Arc::new(GuestMem::new(1 << 20).unwrap());
    Queue::new(0, mem, size, event_idx, true, Duration::from_millis(20)).unwrap()
}

/// Plays the device: completes `head` with `len` in the used ring.
fn complete(q: &Queue, head: u16, len: u32) {
    let l = *q.layout();
    let idx: u16 = q.mem.load(l.used_idx(), Ordering::Acquire).unwrap();
    let elem = u64::from(head) | (u64::from(len) << 32);
    q.mem.write_obj(l.used_elem(idx), Le64::from(elem)).unwrap();
    q.mem
        .store(l.used_idx(), idx.wrapping_add(1), Ordering::Release)
        .unwrap();
}

fn read_desc(q: &Queue, addr: GuestAddress) -> Descriptor {
    q.mem.read_obj(addr).unwrap()
}

#[test]
fn direct_chain_is_linked_in_order() {
    let mut q = queue(8, false);
    let segs = [
        Segment::to_device(GuestAddress(0x1000), 16),
        Segment::from_device(GuestAddress(0x2000), 512),
        Segment::from_device(GuestAddress(0x3000), 1),
    ];
    let head = q.submit(&segs, false).unwrap();
    let mut cur = head;
    for (k, seg) in segs.iter().enumerate() {
        let d = read_desc(&q, q.layout().desc_addr(cur));
        assert_eq!(d.addr().0, seg.addr);
        assert_eq!(d.len(), seg.len);
        assert_eq!(d.is_write_only(), seg.writable);
        assert_eq!(d.has_next(), k + 1 < segs.len());
        cur = d.next();
    }
    let avail: u16 = q
        .mem
        .load(q.layout().avail_idx(), Ordering::Acquire)
        .unwrap();
    let slot: u16 = q
        .mem
        .load(q.layout().avail_slot(0), Ordering::Acquire)
        .unwrap();
    assert_eq!((avail, slot), (1, head));
    assert_eq!(q.free_descriptors(), 5);
}

#[test]
fn completion_returns_descriptors_to_the_free_list() {
    let mut q = queue(4, false);
    let segs = [Segment::to_device(GuestAddress(0), 1); 3];
    let head = q.submit(&segs, false).unwrap();
    assert!(matches!(
        q.submit(&segs, false),
        Err(FrontendError::RingFull { needed: 3, free: 1 })
    ));
    complete(&q, head, 7);
    assert_eq!(q.pop_used().unwrap(), Some(Completion { head, len: 7 }));
    assert_eq!(q.pop_used().unwrap(), None);
    assert_eq!(q.free_descriptors(), 4);
    assert_eq!(q.in_flight(), 0);
}

#[test]
fn indirect_chain_uses_one_ring_descriptor() {
    let mut q = queue(4, false);
    let segs = [Segment::from_device(GuestAddress(0x10), 9); 10];
    let head = q.submit(&segs, true).unwrap();
    let d = read_desc(&q, q.layout().desc_addr(head));
    assert!(d.refers_to_indirect_table());
    assert_eq!(d.len(), 160);
    let last = read_desc(&q, GuestAddress(d.addr().0 + 9 * DESC_SIZE));
    assert!(!last.has_next() && last.is_write_only());
    assert_eq!(q.free_descriptors(), 3);
}

#[test]
fn unknown_used_id_is_an_error_not_a_panic() {
    let mut q = queue(4, false);
    let head = q
        .submit(&[Segment::to_device(GuestAddress(0), 1)], false)
        .unwrap();
    complete(&q, head + 1, 0);
    assert!(matches!(q.pop_used(), Err(FrontendError::BadUsedId { .. })));
    let mut q = queue(4, false);
    complete(&q, 9, 0);
    assert!(matches!(
        q.has_used(),
        Err(FrontendError::UsedOverrun { .. })
    ));
}

#[test]
fn kick_honours_avail_event() {
    let mut q = queue(8, true);
    let seg = [Segment::to_device(GuestAddress(0), 1)];
    // Device wants a kick once avail idx passes 0: the first submission notifies.
    q.submit(&seg, false).unwrap();
    assert!(q.kick().unwrap());
    // Device still asks for event 0: moving 1 -> 2 does not cross it.
    q.submit(&seg, false).unwrap();
    assert!(!q.kick().unwrap());
    // Device re-arms at 2: moving 2 -> 4 crosses it.
    q.mem
        .store(q.layout().avail_event(), 2u16, Ordering::Release)
        .unwrap();
    q.submit(&seg, false).unwrap();
    q.submit(&seg, false).unwrap();
    assert!(q.kick().unwrap());
    assert_eq!(q.kick_fd().read().unwrap(), 2);
}

#[test]
fn kick_honours_no_notify_without_event_idx() {
    let mut q = queue(8, false);
    q.mem
        .store(q.layout().used_flags(), 1u16, Ordering::Release)
        .unwrap();
    q.submit(&[Segment::to_device(GuestAddress(0), 1)], false)
        .unwrap();
    assert!(!q.kick().unwrap());
}

#[test]
fn wait_arms_used_event_and_times_out() {
    let mut q = queue(8, true);
    let head = q
        .submit(&[Segment::to_device(GuestAddress(0), 1)], false)
        .unwrap();
    assert!(matches!(q.wait(), Err(FrontendError::Timeout { .. })));
    let ev: u16 = q
        .mem
        .load(q.layout().used_event(), Ordering::Acquire)
        .unwrap();
    assert_eq!(ev, 0);
    complete(&q, head, 1);
    q.call_fd().write(1).unwrap();
    q.wait().unwrap();
    assert_eq!(q.pop_used().unwrap().map(|c| c.head), Some(head));
}

#[test]
fn raw_table_can_loop_and_frees_its_slots() {
    use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
    let mut q = queue(8, false);
    let d = |next| RawDesc {
        addr: 0x1000,
        len: 16,
        flags: VRING_DESC_F_NEXT as u16,
        next,
    };
    let head = q
        .submit_table(&[d(RawNext::Entry(1)), d(RawNext::Entry(0))])
        .unwrap();
    let first = read_desc(&q, q.layout().desc_addr(head));
    let second = read_desc(&q, q.layout().desc_addr(first.next()));
    assert_eq!(second.next(), head, "the chain loops back to its head");
    assert_eq!(q.free_descriptors(), 6);
    complete(&q, head, 0);
    q.pop_used().unwrap();
    assert_eq!(q.free_descriptors(), 8);
    assert!(q.submit_table(&[d(RawNext::Entry(5))]).is_err());
}
