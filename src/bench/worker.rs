//! One queue's load loop: keeps `iodepth` requests in flight, records latency, verifies data.
//!
//! Per batch the loop reaps every completion, resubmits into the freed slots and kicks once
//! (the kick itself is skipped when EVENT_IDX says the backend is still polling), so the
//! syscalls are a kick plus poll/read of the call eventfd per batch, not per request.
//! With verify, each worker owns its blocks exclusively and never has two requests on the
//! same block in flight, so "the last completed write" is well defined.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use super::histogram::Histogram;
use super::pattern::{self, Rng, SECTOR};
use super::Rw;
use crate::frontend::{BlkCompletion, BlkQueue, BlkStatus, FrontendError, Request, SECTOR_SIZE};

/// Block generation flag: a request on the block is in flight.
const IN_FLIGHT: u32 = 1 << 31;
/// Block generation value: a write failed, so the content is unknown.
const UNKNOWN: u32 = IN_FLIGHT - 1;

/// What one worker does.
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    pub rw: Rw,
    pub bs: u32,
    /// First block (in units of `bs`) of this worker's share of the region.
    pub first_block: u64,
    pub nblocks: u64,
    pub verify: bool,
    /// Write every block once before the timed phase (reads-only runs with verify).
    pub fill_first: bool,
    /// Read back and verify every written block after the timed phase.
    pub check_after: bool,
    pub seconds: Duration,
    /// Sequential runs stop after one pass over the region (`seconds` is then a limit).
    pub once: bool,
    pub seed: u64,
}

/// What one worker measured.
#[derive(Default)]
pub(super) struct Stats {
    pub reads: u64,
    pub writes: u64,
    pub errors: u64,
    pub mismatches: u64,
    pub verified_sectors: u64,
    pub hist: Histogram,
    pub elapsed: Duration,
}

#[derive(Clone, Copy)]
struct SlotOp {
    write: bool,
    block: u64,
    gen: u32,
    start: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Write every block once, in order (before verified reads).
    Fill,
    /// The measured phase: only its requests count in ops and latency.
    Timed { deadline: Instant },
    /// Read back every block written so far and verify it (after verified writes).
    Check,
}

/// Runs the plan on `q`: optional fill, the barrier, the timed phase, optional check.
pub(super) fn run(q: BlkQueue, plan: Plan, start: &Barrier) -> Result<Stats, FrontendError> {
    let mut w = Worker::new(q, plan);
    let filled = if plan.fill_first {
        w.drive(Phase::Fill)
    } else {
        Ok(())
    };
    start.wait();
    filled?;
    let t0 = Instant::now();
    w.drive(Phase::Timed {
        deadline: t0 + plan.seconds,
    })?;
    w.stats.elapsed = t0.elapsed();
    if plan.check_after {
        w.drive(Phase::Check)?;
    }
    Ok(w.stats)
}

struct Worker {
    q: BlkQueue,
    plan: Plan,
    rng: Rng,
    /// Per block of this worker: last completed write generation, 0 = never written.
    gens: Vec<u32>,
    next_gen: u32,
    seq_next: u64,
    /// Sequential blocks issued in the timed phase.
    seq_issued: u64,
    /// Next block of the fill or check pass.
    pass_next: u64,
    slots: Vec<SlotOp>,
    done: Vec<BlkCompletion>,
    buf: Vec<u8>,
    stats: Stats,
}

impl Worker {
    fn new(q: BlkQueue, plan: Plan) -> Self {
        let depth = usize::from(q.depth());
        let now = Instant::now();
        let idle = SlotOp {
            write: false,
            block: 0,
            gen: 0,
            start: now,
        };
        let verify_len = if plan.verify {
            plan.nblocks as usize
        } else {
            0
        };
        Self {
            q,
            rng: Rng::new(plan.seed),
            gens: vec![0; verify_len],
            next_gen: 1,
            seq_next: 0,
            seq_issued: 0,
            pass_next: 0,
            slots: vec![idle; depth],
            done: Vec::with_capacity(depth),
            buf: vec![0; if plan.verify { plan.bs as usize } else { 0 }],
            stats: Stats::default(),
            plan,
        }
    }

    /// Keeps every slot busy until the phase has no more work, then drains.
    fn drive(&mut self, phase: Phase) -> Result<(), FrontendError> {
        self.pass_next = 0;
        let now = Instant::now();
        for slot in 0..self.q.depth() {
            if !self.issue(slot, phase, now)? {
                break;
            }
        }
        self.q.kick()?;
        while self.q.in_flight() > 0 {
            self.done.clear();
            if self.q.reap(&mut self.done)? == 0 {
                self.q.wait()?;
                continue;
            }
            let now = Instant::now();
            for i in 0..self.done.len() {
                let c = self.done[i];
                let Some(slot) = c.slot else { continue };
                self.complete(slot, c, phase, now)?;
                self.issue(slot, phase, now)?;
            }
            self.q.kick()?;
        }
        Ok(())
    }

    /// Picks the next operation; None when the phase has no more work.
    fn next_op(&mut self, phase: Phase, now: Instant) -> Option<(bool, u64)> {
        let n = self.plan.nblocks;
        let (write, block) = match phase {
            Phase::Fill if self.pass_next < n => {
                self.pass_next += 1;
                (true, self.pass_next - 1)
            }
            Phase::Fill => return None,
            Phase::Check => {
                // All earlier requests have drained, so no block is in flight here.
                while self.pass_next < n {
                    let b = self.pass_next;
                    self.pass_next += 1;
                    if !matches!(self.gens[b as usize], 0 | UNKNOWN) {
                        return Some((false, b));
                    }
                }
                return None;
            }
            Phase::Timed { deadline } if now >= deadline => return None,
            Phase::Timed { .. } => {
                let write = match self.plan.rw {
                    Rw::Read | Rw::Randread => false,
                    Rw::Write | Rw::Randwrite => true,
                    Rw::Mixed => self.rng.below(100) < 30,
                };
                let block = match self.plan.rw {
                    Rw::Read | Rw::Write => {
                        if self.plan.once && self.seq_issued >= n {
                            return None;
                        }
                        self.seq_issued += 1;
                        let b = self.seq_next;
                        self.seq_next = (b + 1) % n;
                        b
                    }
                    // One pass in a scrambled order: every block once (a first write to each
                    // chunk of a fresh snapshot, in random order).
                    Rw::Randwrite if self.plan.once => {
                        if self.seq_issued >= n {
                            return None;
                        }
                        let k = self.seq_issued;
                        self.seq_issued += 1;
                        ((u128::from(k) * u128::from(coprime_stride(n))) % u128::from(n)) as u64
                    }
                    Rw::Randread | Rw::Randwrite | Rw::Mixed => self.rng.below(n),
                };
                (write, block)
            }
        };
        if !self.plan.verify {
            return Some((write, block));
        }
        // Verify never has two requests on one block: probe to the next idle block. The
        // caller guarantees nblocks >= depth, so one exists.
        let mut b = block;
        while self.gens[b as usize] & IN_FLIGHT != 0 {
            b = (b + 1) % n;
        }
        Some((write, b))
    }

    /// Submits the next operation into `slot`. Returns false when there was none.
    fn issue(&mut self, slot: u16, phase: Phase, now: Instant) -> Result<bool, FrontendError> {
        let Some((write, block)) = self.next_op(phase, now) else {
            return Ok(false);
        };
        let bs = self.plan.bs;
        let offset = (self.plan.first_block + block) * u64::from(bs);
        let mut gen = 0;
        if self.plan.verify {
            if write {
                gen = self.next_gen;
                self.next_gen = if gen + 1 >= UNKNOWN { 1 } else { gen + 1 };
                pattern::fill(&mut self.buf, offset, gen);
                self.q.write_data(slot, &self.buf)?;
            }
            self.gens[block as usize] |= IN_FLIGHT;
        }
        let sector = offset / SECTOR_SIZE;
        let req = if write {
            Request::Write { sector, len: bs }
        } else {
            Request::Read { sector, len: bs }
        };
        self.q.submit(slot, req)?;
        self.slots[usize::from(slot)] = SlotOp {
            write,
            block,
            gen,
            start: now,
        };
        Ok(true)
    }

    fn complete(
        &mut self,
        slot: u16,
        c: BlkCompletion,
        phase: Phase,
        now: Instant,
    ) -> Result<(), FrontendError> {
        let op = self.slots[usize::from(slot)];
        if matches!(phase, Phase::Timed { .. }) {
            let lat = now.saturating_duration_since(op.start).as_nanos();
            self.stats
                .hist
                .record(u64::try_from(lat).unwrap_or(u64::MAX));
            if op.write {
                self.stats.writes += 1;
            } else {
                self.stats.reads += 1;
            }
        }
        let ok = c.status == Some(BlkStatus::Ok);
        if !ok {
            self.stats.errors += 1;
        }
        if !self.plan.verify {
            return Ok(());
        }
        let b = op.block as usize;
        let last = self.gens[b] & !IN_FLIGHT;
        if op.write {
            self.gens[b] = if ok { op.gen } else { UNKNOWN };
            return Ok(());
        }
        self.gens[b] = last;
        if ok && last != 0 && last != UNKNOWN {
            self.q.read_data(slot, &mut self.buf)?;
            let offset = (self.plan.first_block + op.block) * u64::from(self.plan.bs);
            for (i, sector) in self.buf.chunks_exact(SECTOR).enumerate() {
                if !pattern::sector_matches(sector, offset + (i * SECTOR) as u64, last) {
                    self.stats.mismatches += 1;
                }
            }
            self.stats.verified_sectors += self.buf.len() as u64 / SECTOR as u64;
        }
        Ok(())
    }
}

/// A stride near 0.618 n with no factor in common with `n`: `k * stride mod n` visits every
/// block once for k in 0..n, in a scattered order.
fn coprime_stride(n: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let mut s = (n as f64 * 0.618_034) as u64 | 1;
    while gcd(s, n) != 1 {
        s += 2;
    }
    s
}
