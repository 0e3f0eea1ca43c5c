//! Exports of graph nodes: each a vhost-user-blk socket served on its own thread, started and
//! stopped while the daemon runs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use log::{error, info, warn};

use super::{Manager, ManagerError};
use crate::graph::Graph;
use crate::model::ExportSpec;
use crate::qos::{ExportQos, QosGroup};
use crate::storage::derive_serial;
use crate::vhost::stats::{QueueStats, StatsSnapshot};
use crate::vhost::{bind_socket, serve, Backing, DiskContext, Export, Shutdown};
use crate::virtio_blk::DiskGeometry;

/// Helper threads per queue for device-graph exports.
pub const GRAPH_THREADS_PER_QUEUE: usize = 32;

pub(super) struct RunningExport {
    pub spec: ExportSpec,
    pub stop: Arc<Shutdown>,
    pub thread: Option<JoinHandle<()>>,
    pub stats: Vec<Arc<QueueStats>>,
    pub connected: Arc<AtomicBool>,
    pub disk: Arc<DiskContext>,
}

impl Manager {
    pub fn export_add(&self, spec: ExportSpec) -> Result<(), ManagerError> {
        spec.qos.validate().map_err(|e| {
            ManagerError::InvalidArgument(format!("export {}: {e}", spec.socket.display()))
        })?;
        if !spec.socket.is_absolute() {
            return Err(ManagerError::InvalidArgument(format!(
                "socket path {} must be absolute",
                spec.socket.display()
            )));
        }
        if self.reserved.iter().any(|r| r == &spec.socket) {
            return Err(ManagerError::InUse(format!(
                "{} is the control socket",
                spec.socket.display()
            )));
        }
        {
            let g = self.lock();
            if g.exports.contains_key(&spec.socket) {
                return Err(ManagerError::InUse(format!(
                    "socket {} is already exported",
                    spec.socket.display()
                )));
            }
            let others: Vec<&ExportSpec> = g
                .state
                .graph
                .exports
                .iter()
                .filter(|e| e.node == spec.node)
                .collect();
            if let Some(why) = spec.shares_badly(&others) {
                return Err(ManagerError::InUse(why));
            }
            let files = g
                .state
                .graph
                .origins
                .iter()
                .map(|o| &o.image)
                .chain(g.state.graph.snapshots.iter().map(|s| &s.cow));
            for f in files {
                if f == &spec.socket {
                    return Err(ManagerError::InUse(format!(
                        "{} is an image or COW file",
                        spec.socket.display()
                    )));
                }
            }
        }
        self.start_export(spec.clone())?;
        self.lock().state.graph.exports.push(spec);
        self.save()
    }

    /// The origin a node belongs to (itself for an origin).
    pub(super) fn origin_of(&self, node: &str) -> Option<String> {
        let g = self.lock();
        if g.state.graph.origins.iter().any(|o| o.name == node) {
            return Some(node.to_owned());
        }
        g.state
            .graph
            .snapshots
            .iter()
            .find(|s| s.name == node)
            .map(|s| s.origin.clone())
    }

    pub(super) fn start_export(&self, spec: ExportSpec) -> Result<(), ManagerError> {
        if let Some(origin) = self.origin_of(&spec.node) {
            if let Some(why) = self.lock().blocked.get(&origin) {
                return Err(ManagerError::InvalidArgument(format!(
                    "node {} is not served: origin {origin} is half merged and its merge cannot resume ({why})",
                    spec.node
                )));
            }
        }
        let group = Self::group_locked(&self.lock(), spec.qos_group.as_deref())?;
        let export = build_export(&self.graph, &spec, group)?;
        let listener = bind_socket(&spec.socket)?;
        let stop = Shutdown::new().map_err(ManagerError::Thread)?;
        let stats = export.disk.stats.clone();
        let connected = export.connected.clone();
        let disk = export.disk.clone();
        let t_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("export-{}", spec.node))
            .spawn(move || {
                if let Err(e) = serve(&export, listener, &t_stop) {
                    error!("export {}: {e}", export.socket.display());
                }
                let _ = std::fs::remove_file(&export.socket);
            })
            .map_err(ManagerError::Thread)?;
        let qos = match (spec.qos.is_empty(), &spec.qos_group) {
            (true, None) => String::new(),
            (_, group) => format!(
                " (QoS {}{})",
                spec.qos.describe(),
                group
                    .as_ref()
                    .map(|g| format!(", group {g}"))
                    .unwrap_or_default()
            ),
        };
        info!(
            "exporting node {} on {}{qos}",
            spec.node,
            spec.socket.display()
        );
        self.lock().exports.insert(
            spec.socket.clone(),
            RunningExport {
                spec,
                stop,
                thread: Some(thread),
                stats,
                connected,
                disk,
            },
        );
        Ok(())
    }

    pub fn export_remove(&self, socket: &Path) -> Result<(), ManagerError> {
        let running =
            self.lock().exports.remove(socket).ok_or_else(|| {
                ManagerError::NotFound(format!("no export on {}", socket.display()))
            })?;
        stop_export(running);
        self.lock()
            .state
            .graph
            .exports
            .retain(|e| e.socket != socket);
        self.save()
    }

    pub(super) fn remove_exports_of(&self, node: &str) {
        let sockets: Vec<PathBuf> = self
            .lock()
            .exports
            .values()
            .filter(|e| e.spec.node == node)
            .map(|e| e.spec.socket.clone())
            .collect();
        for s in sockets {
            if let Err(e) = self.export_remove(&s) {
                warn!("cannot remove export {}: {e}", s.display());
            }
        }
    }

    /// Export specs with their statistics and whether a frontend is connected.
    pub fn exports(&self) -> Vec<(ExportSpec, StatsSnapshot, bool)> {
        self.lock()
            .exports
            .values()
            .map(|e| {
                let stats = StatsSnapshot::sum(e.stats.iter().map(|s| &**s));
                let connected = e.connected.load(Ordering::Relaxed);
                (e.spec.clone(), stats, connected)
            })
            .collect()
    }
}

pub(super) fn stop_export(mut e: RunningExport) {
    e.stop.trigger();
    if let Some(t) = e.thread.take() {
        let _ = t.join();
    }
    info!(
        "stopped export of {} on {}",
        e.spec.node,
        e.spec.socket.display()
    );
}

/// Builds the export of one graph node.
pub fn build_export(
    graph: &Graph,
    spec: &ExportSpec,
    group: Option<Arc<QosGroup>>,
) -> Result<Export, ManagerError> {
    let node = graph.node(&spec.node)?;
    node.check_block_size(&spec.node, spec.logical_block_size)
        .map_err(|e| ManagerError::InvalidArgument(e.to_string()))?;
    let read_only_rbd = node.direct.origin_rbd().filter(|r| r.read_only());
    if let (Some(rbd), None, false) = (read_only_rbd, node.direct.snapshot, spec.readonly) {
        return Err(ManagerError::InvalidArgument(format!(
            "origin {} is the read-only RBD snapshot {}: export it read-only, or export a \
             snapshot (a clone) of it",
            spec.node,
            rbd.spec()
        )));
    }
    let block = u64::from(spec.logical_block_size);
    if block == 0 || !block.is_power_of_two() || block < 512 {
        return Err(ManagerError::InvalidArgument(format!(
            "export {}: logical block size {block} is not 512 or 4096",
            spec.socket.display()
        )));
    }
    let blocks = node.dev.size() / block;
    if blocks == 0 {
        return Err(ManagerError::InvalidArgument(format!(
            "node {} is smaller than one {block}-byte block",
            spec.node
        )));
    }
    if blocks * block < node.dev.size() {
        warn!(
            "export {}: node {} is {} bytes, not a whole number of {block}-byte blocks: the \
             guest sees {} bytes, the last {} are not served",
            spec.socket.display(),
            spec.node,
            node.dev.size(),
            blocks * block,
            node.dev.size() - blocks * block
        );
    }
    let serial = spec
        .serial
        .clone()
        .unwrap_or_else(|| derive_serial(&node.identity, 0));
    let geometry = DiskGeometry {
        capacity_sectors: blocks * block / 512,
        logical_block_size: spec.logical_block_size,
        readonly: spec.readonly,
        discard: node.discard,
        serial: serial.as_bytes().iter().copied().take(20).collect(),
    };
    Ok(Export::new(
        spec.socket.clone(),
        geometry,
        spec.num_queues,
        spec.queue_size,
        Backing::Device {
            dev: node.dev,
            threads: GRAPH_THREADS_PER_QUEUE,
            direct: Some(node.direct),
        },
        !spec.writethrough,
        ExportQos::new(&spec.qos, group),
    ))
}
