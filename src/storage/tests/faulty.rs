//! `FaultyDevice`: an in-memory device for crash and error tests. It remembers which writes are
//! not yet durable (no flush since), can "crash" into a new device where a seeded random subset
//! of those writes is lost or torn at 512-byte granularity, fails chosen operations, and can
//! refuse writes past a size limit with ENOSPC.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::bench::Rng;
use crate::storage::block::device::{check_range, BlockDevice, MemDevice};

/// Which operations fail. Counts are 1-based and count from when the plan was set.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    pub fail_read: Option<u64>,
    pub fail_write: Option<u64>,
    pub fail_flush: Option<u64>,
    /// Every write (and zeroing/discard) fails from now on.
    pub fail_all_writes: bool,
    /// Writes ending past this byte fail with ENOSPC.
    pub size_limit: Option<u64>,
}

/// A power-loss instant shared by several devices: the `at`-th write or flush among all of
/// them happens after the crash, so each device freezes what may survive at that moment.
#[derive(Debug)]
pub struct CrashClock {
    ticks: AtomicU64,
    at: u64,
}

impl CrashClock {
    pub fn new(at: u64) -> Arc<CrashClock> {
        Arc::new(CrashClock {
            ticks: AtomicU64::new(0),
            at,
        })
    }

    /// True once the crash instant has passed.
    pub fn passed(&self) -> bool {
        self.ticks.load(Ordering::SeqCst) >= self.at
    }
}

type Image = (Vec<u8>, Vec<(u64, Vec<u8>)>);

#[derive(Debug, Default)]
struct State {
    clock: Option<Arc<CrashClock>>,
    /// Durable image and unflushed writes at the crash instant.
    frozen: Option<Image>,
    durable: Vec<u8>,
    unflushed: Vec<(u64, Vec<u8>)>,
    plan: FaultPlan,
    reads: u64,
    writes: u64,
    flushes: u64,
}

impl State {
    /// The durable image and the unflushed writes at the crash instant (now, if it has not
    /// come).
    fn at_crash(&self) -> (&Vec<u8>, &Vec<(u64, Vec<u8>)>) {
        match &self.frozen {
            Some((d, u)) => (d, u),
            None => (&self.durable, &self.unflushed),
        }
    }
}

/// A fault-injecting device over a `MemDevice`.
#[derive(Debug)]
pub struct FaultyDevice {
    mem: MemDevice,
    state: Mutex<State>,
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} error"))
}

impl FaultyDevice {
    /// A zero-filled device of `size` bytes, all of it durable.
    pub fn new(size: usize) -> FaultyDevice {
        FaultyDevice::from_bytes(vec![0; size])
    }

    pub fn from_bytes(data: Vec<u8>) -> FaultyDevice {
        FaultyDevice {
            state: Mutex::new(State {
                durable: data.clone(),
                ..State::default()
            }),
            mem: MemDevice::from_bytes(data),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shares a crash instant with other devices (see `CrashClock`).
    pub fn with_clock(self, clock: Arc<CrashClock>) -> FaultyDevice {
        self.lock().clock = Some(clock);
        self
    }

    /// Counts a write or flush on the clock, freezing the image when the instant passes.
    fn tick(s: &mut State) {
        if let Some(c) = &s.clock {
            let t = c.ticks.fetch_add(1, Ordering::SeqCst) + 1;
            if t >= c.at && s.frozen.is_none() {
                s.frozen = Some((s.durable.clone(), s.unflushed.clone()));
            }
        }
    }

    /// Replaces the fault plan and restarts the operation counts.
    pub fn set_faults(&self, plan: FaultPlan) {
        let mut s = self.lock();
        s.plan = plan;
        s.reads = 0;
        s.writes = 0;
        s.flushes = 0;
    }

    /// The device as it could be after a power loss now: the durable image plus, in order, each
    /// unflushed write kept whole, dropped, or torn (a random subset of its sectors kept).
    pub fn crash(&self, seed: u64) -> FaultyDevice {
        let s = self.lock();
        let mut rng = Rng::new(seed);
        let (durable, unflushed) = s.at_crash();
        let mut image = durable.clone();
        for (offset, data) in unflushed {
            let o = *offset as usize;
            match rng.next_u64() % 3 {
                0 => image[o..o + data.len()].copy_from_slice(data),
                1 => {}
                _ => {
                    for (i, sector) in data.chunks(512).enumerate() {
                        if rng.next_u64() % 2 == 0 {
                            let at = o + i * 512;
                            image[at..at + sector.len()].copy_from_slice(sector);
                        }
                    }
                }
            }
        }
        FaultyDevice::from_bytes(image)
    }

    /// The device as it is after the process was killed at the crash instant (the machine
    /// stayed up): every write made before it, flushed or not.
    pub fn killed(&self) -> FaultyDevice {
        let s = self.lock();
        let (durable, unflushed) = s.at_crash();
        let mut image = durable.clone();
        for (offset, data) in unflushed {
            let o = *offset as usize;
            image[o..o + data.len()].copy_from_slice(data);
        }
        FaultyDevice::from_bytes(image)
    }

    fn before_write(&self, offset: u64, len: u64) -> io::Result<MutexGuard<'_, State>> {
        let mut s = self.lock();
        check_range(s.durable.len() as u64, offset, len)?;
        FaultyDevice::tick(&mut s);
        s.writes += 1;
        if s.plan.fail_all_writes || s.plan.fail_write == Some(s.writes) {
            return Err(injected("write"));
        }
        if let Some(limit) = s.plan.size_limit {
            if offset + len > limit {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        Ok(s)
    }
}

impl BlockDevice for FaultyDevice {
    fn size(&self) -> u64 {
        self.mem.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        {
            let mut s = self.lock();
            s.reads += 1;
            if s.plan.fail_read == Some(s.reads) {
                return Err(injected("read"));
            }
        }
        self.mem.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.before_write(offset, buf.len() as u64)?;
        self.mem.write_at(buf, offset)?;
        s.unflushed.push((offset, buf.to_vec()));
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut s = self.lock();
        FaultyDevice::tick(&mut s);
        s.flushes += 1;
        if s.plan.fail_flush == Some(s.flushes) {
            return Err(injected("flush"));
        }
        s.durable = self.mem.contents();
        s.unflushed.clear();
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut s = self.before_write(offset, len)?;
        self.mem.write_zeroes(offset, len)?;
        s.unflushed.push((offset, vec![0; len as usize]));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushed_writes_survive_every_crash() {
        let d = FaultyDevice::new(8192);
        d.write_at(&[1; 512], 0).unwrap();
        d.flush().unwrap();
        d.write_at(&[2; 1024], 512).unwrap();
        for seed in 0..20 {
            let c = d.crash(seed);
            let mut b = [0u8; 512];
            c.read_at(&mut b, 0).unwrap();
            assert_eq!(b, [1; 512]);
        }
        let kept: usize = (0..50)
            .map(|seed| {
                let mut b = [0u8; 1024];
                d.crash(seed).read_at(&mut b, 512).unwrap();
                b.iter().filter(|&&x| x == 2).count()
            })
            .sum();
        assert!(
            kept > 0 && kept < 50 * 1024,
            "some writes dropped, some kept"
        );
    }

    #[test]
    fn nth_operation_fails_once() {
        let d = FaultyDevice::new(4096);
        d.set_faults(FaultPlan {
            fail_write: Some(2),
            ..FaultPlan::default()
        });
        d.write_at(&[1], 0).unwrap();
        assert!(d.write_at(&[1], 0).is_err());
        d.write_at(&[1], 0).unwrap();
        d.set_faults(FaultPlan {
            size_limit: Some(1024),
            ..FaultPlan::default()
        });
        let e = d.write_at(&[1; 512], 1024).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }
}
