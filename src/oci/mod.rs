//! The OCI image format, and nothing but the format: the containerDisk layer, config,
//! manifest and index, layouts and archives, references, and reading images back
//! safely. No network and no command line here: registries live in `registry`.

pub mod archive;
pub mod dest;
pub mod docker_archive;
pub mod image;
pub mod layer;
pub mod layout;
pub mod pack;
pub mod read;
pub mod reference;
pub mod storage;

pub use dest::ImageRef;
pub use layer::Compression;
pub use layout::Layout;
pub use pack::{PackSpec, PackedImage};
pub use reference::RemoteRef;
