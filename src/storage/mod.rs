//! Storage: the images and block devices behind exports. Knows nothing of virtio or vhost.

pub mod image;

pub use image::{Image, ImageError, OpenOptions};
