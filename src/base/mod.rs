//! Base images: the catalog, downloads, checksum files and verification.

pub mod acquire;
pub mod build;
pub mod catalog;
pub mod checksum;
pub mod download;
pub mod signature;

pub use acquire::{
    acquire, acquire_blocking, fetch_file, fetch_file_blocking, AcquireOptions, BaseSource,
    CachedBase, ResolvedBase,
};
pub use checksum::ChecksumMismatch;
