//! Host-side vhost-user-blk frontend used by tests and `snapblk bench`.
