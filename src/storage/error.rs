//! Errors of the snapshot engine: `CowError` for setup, metadata and control operations,
//! `IoError` for the data path (read, write, flush, discard).

use std::io;

use thiserror::Error;

/// Errors opening, loading, inspecting or managing snapshots.
#[derive(Debug, Error)]
pub enum CowError {
    #[error("{cow}: Chunk size is not a power of 2 ({value} sectors)")]
    ChunkNotPowerOfTwo { cow: String, value: u64 },
    #[error("{cow}: Chunk size is too high ({value} sectors, at most 2097152)")]
    ChunkTooHigh { cow: String, value: u64 },
    #[error("{cow}: Chunk size not set")]
    ChunkNotSet { cow: String },
    #[error("{cow}: chunk size of {value} sectors is not a multiple of the {which} logical block size ({block} bytes)")]
    ChunkNotBlockMultiple {
        cow: String,
        value: u64,
        block: u32,
        which: &'static str,
    },
    #[error("{cow}: Invalid or corrupt snapshot (magic {magic:#010x})")]
    BadMagic { cow: String, magic: u32 },
    #[error("{cow}: no snapshot header (magic 0: a blank COW)")]
    NoHeader { cow: String },
    #[error("{cow}: unable to handle snapshot disk version {version}")]
    BadVersion { cow: String, version: u32 },
    #[error("{cow}: COW of {sectors} sectors is too small for a header and an exception area of {chunk_size}-sector chunks")]
    CowTooSmall {
        cow: String,
        sectors: u64,
        chunk_size: u64,
    },
    #[error("{cow}: exception {index} maps origin chunk {old} to COW chunk {new}, past the end of the COW ({chunks} chunks)")]
    EntryPastEnd {
        cow: String,
        index: u64,
        old: u64,
        new: u64,
        chunks: u64,
    },
    #[error(
        "{cow}: exception {index} maps origin chunk {old} to COW chunk {new}, a metadata chunk"
    )]
    EntryOnMetadata {
        cow: String,
        index: u64,
        old: u64,
        new: u64,
    },
    #[error("{cow}: exception {index} has chunk number {value}, not below 2^56")]
    ChunkNumberTooLarge { cow: String, index: u64, value: u64 },
    #[error("{cow}: exception {index} duplicates origin chunk {old}")]
    DuplicateEntry { cow: String, index: u64, old: u64 },
    #[error("{cow}: exception {index} reuses COW chunk {new}")]
    DuplicateTarget { cow: String, index: u64, new: u64 },
    #[error("{cow}: exception area {area} (chunk {chunk}) lies past the end of the COW")]
    AreaPastEnd { cow: String, area: u64, chunk: u64 },
    #[error("{cow}: metadata I/O failed")]
    Io {
        cow: String,
        #[source]
        source: io::Error,
    },
    #[error("no snapshot with id {0}")]
    NoSuchSnapshot(u64),
    #[error("{cow}: only a persistent (P) snapshot can be merged")]
    MergeNotPersistent { cow: String },
    #[error("{cow}: an invalid snapshot cannot be merged")]
    MergeInvalid { cow: String },
    #[error("the origin is already merging snapshot {0}")]
    MergeBusy(u64),
    #[error("the origin is merging: snapshots cannot be added or the merging one removed")]
    Merging,
    #[error("no merge is in progress")]
    NoMerge,
    #[error("{cow}: the origin was written since the snapshot was created ({copies} chunks copied out); its creation state cannot be rebuilt: delete the snapshot and create it again")]
    ResetOriginChanged { cow: String, copies: u64 },
    #[error("{cow}: I/O to the snapshot is still in flight; pause its exports first")]
    ResetBusy { cow: String },
    #[error("{cow}: Merge failed")]
    MergeFailed {
        cow: String,
        #[source]
        source: Option<io::Error>,
    },
}

/// Errors of the data path; each maps to an `io::Error` for a `BlockDevice` caller.
#[derive(Debug, Error)]
pub enum IoError {
    #[error("{cow}: snapshot is invalid")]
    Invalid { cow: String },
    #[error("{cow}: snapshot overflowed its COW")]
    Overflow { cow: String },
    #[error("{len} bytes at offset {offset} do not fit a device of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("discard is not enabled on this snapshot")]
    DiscardNotEnabled,
    #[error("no snapshot with id {0}")]
    NoSuchSnapshot(u64),
    #[error("origin I/O failed")]
    Origin(#[source] io::Error),
    #[error("{cow}: COW I/O failed")]
    Cow {
        cow: String,
        #[source]
        source: io::Error,
    },
}

impl From<IoError> for io::Error {
    fn from(e: IoError) -> io::Error {
        let kind = match &e {
            IoError::OutOfRange { .. } => io::ErrorKind::InvalidInput,
            IoError::DiscardNotEnabled => io::ErrorKind::Unsupported,
            IoError::NoSuchSnapshot(_) => io::ErrorKind::NotFound,
            IoError::Origin(s) | IoError::Cow { source: s, .. } => s.kind(),
            IoError::Invalid { .. } | IoError::Overflow { .. } => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
