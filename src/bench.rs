//! `snapblk bench`: a load generator for any vhost-user-blk backend.
