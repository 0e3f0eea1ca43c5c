//! `cow inspect`: reads a persistent COW without changing it and reports its header, geometry,
//! exception table and the status line a snapshot on it would show.

use std::fmt;

use super::persistent::{Header, Persistent};
use super::store::{ExceptionStore, StoreKind, Usage};
use crate::storage::block::device::BlockDevice;
use crate::storage::error::CowError;
use crate::storage::units::{binary_units, SECTOR_BYTES};

/// What `inspect` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CowReport {
    pub name: String,
    pub header: Header,
    pub cow_sectors: u64,
    pub chunk_sectors: u64,
    pub exceptions_per_area: u64,
    pub exceptions: u64,
    /// Areas in use (the current one included).
    pub areas: u64,
    pub next_free: u64,
    /// `Invalid` or `<allocated>/<total> <metadata>`.
    pub status: String,
    /// The numbers of the status line, while the store is valid.
    pub usage: Option<Usage>,
    /// Set when the COW was read while another process holds it for writing (a daemon serving
    /// it): what holds it, and that the report is a live view.
    pub live: Option<String>,
}

/// Inspects the COW on `dev`, named `name` in errors. Never writes.
pub fn inspect(dev: &dyn BlockDevice, name: &str) -> Result<CowReport, CowError> {
    let l = Persistent::open(dev, name, StoreKind::Persistent, 0, 512, false)?;
    let geo = l.store.geometry();
    let usage = l.store.usage();
    Ok(CowReport {
        name: name.to_owned(),
        header: l.header,
        cow_sectors: usage.total_sectors,
        chunk_sectors: geo.cs.sectors(),
        exceptions_per_area: geo.epa(),
        exceptions: l.store.exception_count(),
        areas: l.store.current_area().0 + 1,
        next_free: l.store.next_free(),
        status: if l.header.valid {
            usage.to_string()
        } else {
            "Invalid".to_owned()
        },
        usage: l.header.valid.then_some(usage),
        live: None,
    })
}

impl fmt::Display for CowReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "COW:              {}", self.name)?;
        writeln!(f, "magic:            {:#010x} (SnAp)", self.header.magic)?;
        writeln!(
            f,
            "valid:            {}",
            if self.header.valid { "yes" } else { "no" }
        )?;
        writeln!(f, "version:          {}", self.header.version)?;
        let b = |sectors: u64| binary_units(sectors * SECTOR_BYTES);
        writeln!(
            f,
            "chunk size:       {} sectors ({})",
            self.chunk_sectors,
            b(self.chunk_sectors)
        )?;
        writeln!(
            f,
            "COW size:         {} sectors ({})",
            self.cow_sectors,
            b(self.cow_sectors)
        )?;
        writeln!(f, "entries per area: {}", self.exceptions_per_area)?;
        writeln!(f, "exceptions:       {}", self.exceptions)?;
        writeln!(f, "areas:            {}", self.areas)?;
        writeln!(f, "next free chunk:  {}", self.next_free)?;
        match &self.usage {
            Some(u) => write!(f, "status:           {} ({})", self.status, u.describe())?,
            None => write!(f, "status:           {}", self.status)?,
        }
        match &self.live {
            Some(note) => write!(f, "\nnote:             {note}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::block::device::MemDevice;
    use crate::storage::units::ChunkIndex;

    #[test]
    fn reports_a_store_with_exceptions() {
        let dev = MemDevice::new(8192 * 512);
        let mut l = Persistent::open(&dev, "c.cow", StoreKind::Persistent, 8, 512, true).unwrap();
        for old in 0..3 {
            let new = l.store.prepare().unwrap();
            let b = [(ChunkIndex(old), new)];
            l.store.plan_commit(&b).run(&dev).unwrap();
            l.store.complete_commit(&b);
        }
        let r = inspect(&dev, "c.cow").unwrap();
        assert_eq!((r.exceptions, r.areas, r.chunk_sectors), (3, 1, 8));
        assert_eq!(r.status, "40/8192 16");
        let text = r.to_string();
        assert!(text.contains("exceptions:       3") && text.contains("40/8192 16"));
    }

    #[test]
    fn blank_and_garbage_cows_are_clear_errors() {
        let dev = MemDevice::new(65536);
        let e = inspect(&dev, "blank.cow").unwrap_err().to_string();
        assert!(e.contains("blank.cow") && e.contains("magic 0"), "{e}");
        dev.write_at(b"junk", 0).unwrap();
        let e = inspect(&dev, "junk.cow").unwrap_err().to_string();
        assert!(e.contains("Invalid or corrupt snapshot"), "{e}");
        assert!(
            dev.contents()[4..].iter().all(|&b| b == 0),
            "inspect never writes"
        );
    }
}
