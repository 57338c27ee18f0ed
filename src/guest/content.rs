//! What a file the build writes into the guest holds: bytes made on the host, or a
//! host file copied as it is. Shared by the staging tarballs ([`super::script`]) and
//! the host-side rewrites ([`super::patch`]).

use std::path::PathBuf;

/// One file's content.
#[derive(Clone)]
pub enum StageData {
    Bytes(Vec<u8>),
    File(PathBuf),
}
