//! Base images: the catalog, downloads, checksum files and verification.

pub mod catalog;
