//! The landing stage of held origin writes (held.rs has the first stage): a committed batch's
//! data is written into the origin, through a gate token where every chunk is safe (through
//! the synchronous gate where a snapshot read or a merge is in the way), then completed.

use std::io;
use std::sync::mpsc::Receiver;

use log::error;

use super::copy::GateMode;
use super::datapath::Data;
use super::engine::{Health, Origin};
use super::held::Held;

/// The second stage: lands batches in the order the first stage committed them (so held
/// writes land in arrival order), writing held data into the origin.
pub(super) fn land_thread(rx: Receiver<Landing>) {
    while let Ok(first) = rx.recv() {
        for item in std::iter::once(first).chain(rx.try_iter()) {
            item.run(true);
        }
    }
}

/// Work for the landing stage.
pub(super) enum Landing {
    /// Held writes whose copies are committed: write them into the origin.
    Committed(Vec<Held>),
    /// A held write that waits for something: the synchronous path waits with it.
    Gated(Held),
}

impl Landing {
    pub fn last_seq(&self) -> u64 {
        match self {
            Landing::Committed(hs) => hs.last().map_or(0, |h| h.seq),
            Landing::Gated(h) => h.seq,
        }
    }

    /// Lands the item; `each`: completes a batch's writes one by one, as each lands.
    pub fn run(self, each: bool) {
        match self {
            Landing::Committed(mut hs) => {
                let Some(origin) = hs.first().map(|h| h.origin.clone()) else {
                    return;
                };
                // One by one, the queue resubmits while the rest land; on the held thread (COWs
                // in memory) the batch lands at once, cheaper there. Write-through: one flush.
                let step = if each && !hs.iter().any(|h| h.durable) {
                    1
                } else {
                    hs.len().max(1)
                };
                for h in hs.chunks_mut(step) {
                    let outcomes = origin.write_origin(h);
                    origin.land(h, outcomes);
                }
            }
            Landing::Gated(h) => {
                let origin = h.origin.clone();
                let r =
                    origin.origin_data_as(Data::Bytes(&h.data), h.offset, GateMode::Held(h.seq));
                origin.land(&mut [h], vec![r.map_err(io::Error::from)]);
            }
        }
    }
}

impl Origin {
    /// Writes planned held writes (which overlap no earlier one) into the origin once their
    /// copies are committed: under one lock, each whose chunks are all safe gets a gate token;
    /// the others (a snapshot read of the origin still in flight there, a merge) go through
    /// the gate, which waits. A snapshot whose copy failed went invalid; the write goes on.
    fn write_origin(&self, hs: &[Held]) -> Vec<io::Result<()>> {
        let tokens: Vec<Option<u64>> = {
            let mut g = self.lock();
            let merging = g.merge.is_some();
            hs.iter()
                .map(|h| {
                    let end = h.offset + h.data.len() as u64;
                    // Every valid snapshot holds every chunk now (no snapshot can be added while
                    // a write is held): only a snapshot read of the origin still in flight there
                    // makes the write wait.
                    let reading = g.snaps.iter().any(|s| {
                        let cs = s.cs();
                        s.health != Health::Invalid
                            && !s.reads.is_empty()
                            && (cs.chunk_of(h.offset).0..=cs.chunk_of(end - 1).0)
                                .any(|c| s.reads.contains_key(&c))
                    });
                    if merging || reading {
                        return None;
                    }
                    let token = g.next_token;
                    g.next_token += 1;
                    g.origin_writes.insert(token, (h.offset, end));
                    Some(token)
                })
                .collect()
        };
        let outcomes = hs
            .iter()
            .zip(&tokens)
            .map(|(h, t)| match t {
                Some(_) => self.dev.write_at(&h.data, h.offset),
                None => self
                    .origin_data_as(Data::Bytes(&h.data), h.offset, GateMode::Held(h.seq))
                    .map_err(io::Error::from),
            })
            .collect();
        let mut g = self.lock();
        for t in tokens.into_iter().flatten() {
            g.origin_writes.remove(&t);
        }
        self.notify();
        outcomes
    }

    /// Ends held writes with their outcomes: makes the durable ones durable, drops them from
    /// the held set and calls their `done`.
    fn land(&self, hs: &mut [Held], mut outcomes: Vec<io::Result<()>>) {
        if hs.iter().any(|h| h.durable) {
            if let Err(e) = self.dev.flush() {
                error!("{}: flushing held writes: {e}", self.name);
                for (h, r) in hs.iter().zip(outcomes.iter_mut()) {
                    if h.durable && r.is_ok() {
                        *r = Err(io::Error::new(e.kind(), e.to_string()));
                    }
                }
            }
        }
        {
            let mut g = self.lock();
            for h in hs.iter() {
                g.held.landed(h);
            }
            self.notify();
        }
        for (h, r) in hs.iter_mut().zip(outcomes) {
            if let Err(e) = &r {
                error!("{}: held write at byte {} failed: {e}", self.name, h.offset);
            }
            if let Some(done) = h.done.take() {
                done(r);
            }
        }
    }
}
