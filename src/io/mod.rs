//! Byte-stream mechanics shared by every stage: decompression, hashing on the way,
//! atomic files, sparse writes, the retry policy and bounds on untrusted input.

pub mod atomic;
pub mod decompress;
pub mod growing;
pub mod hash;
pub mod limits;
pub mod retry;
pub mod scratch;
pub mod sparse;
pub mod tls;
