//! `snapblk serve --image rbd:POOL/IMAGE[@SNAP]`: one RBD image as one disk. It is served as an
//! origin without snapshots: reads and writes go to librbd from the queue threads, flushes,
//! discards and write-zeroes through a few helper threads per queue.

use std::sync::Arc;

use log::info;

use super::{serve_all, DaemonError, ServeOptions};
use crate::notify;
use crate::qos::ExportQos;
use crate::storage::{derive_serial, BlockDevice, DirectNode, Origin, OriginConfig, Rbd, RbdSpec};
use crate::vhost::{bind_socket, Backing, Export, Shutdown};
use crate::virtio_blk::DiskGeometry;

/// Helper threads per queue: only flushes, discards and write-zeroes reach them.
const RBD_THREADS_PER_QUEUE: usize = 4;

pub(super) fn run(
    opts: ServeOptions,
    spec: &RbdSpec,
    shutdown: &Arc<Shutdown>,
) -> Result<(), DaemonError> {
    let name = spec.to_string();
    let rbd = Rbd::open(spec, &opts.ceph).map_err(|source| DaemonError::Rbd {
        image: name.clone(),
        source,
    })?;
    let readonly = opts.readonly || rbd.read_only();
    let block = u64::from(opts.logical_block_size);
    let capacity_sectors = rbd.size() / block * block / 512;
    if capacity_sectors == 0 {
        return Err(DaemonError::RbdTooSmall {
            image: name,
            size: rbd.size(),
            block: opts.logical_block_size,
        });
    }
    let dev: Arc<dyn BlockDevice> = Arc::new(rbd);
    let origin = Arc::new(Origin::new(dev.clone(), &name, OriginConfig::default()));
    let serial = opts
        .serial
        .clone()
        .unwrap_or_else(|| derive_serial(std::path::Path::new(&name), 0));
    let geometry = DiskGeometry {
        capacity_sectors,
        logical_block_size: opts.logical_block_size,
        readonly,
        discard: !readonly,
        serial: serial.as_bytes().iter().copied().take(20).collect(),
    };
    let export = Export::new(
        opts.socket.clone(),
        geometry,
        opts.num_queues,
        opts.queue_size,
        Backing::Device {
            dev: dev.clone(),
            threads: RBD_THREADS_PER_QUEUE,
            direct: Some(DirectNode {
                origin,
                snapshot: None,
                o_direct: false,
            }),
        },
        !opts.writethrough,
        ExportQos::new(&opts.qos, None),
    );
    info!(
        "serving {name} ({} bytes, serial {serial}, {} queue(s){}) on {}",
        capacity_sectors * 512,
        opts.num_queues,
        if readonly { ", read-only" } else { "" },
        opts.socket.display()
    );
    let listener = bind_socket(&opts.socket)?;
    notify::tell(&format!(
        "READY=1\nSTATUS=serving {}",
        opts.socket.display()
    ));
    let result = serve_all(vec![(export, listener)], shutdown);
    dev.flush()
        .map_err(|source| DaemonError::Flush { what: name, source })?;
    result?;
    info!("stopped cleanly");
    Ok(())
}
