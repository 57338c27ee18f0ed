//! Hashing on the way: sha256 of files and byte strings, a writer and a reader that hash
//! and count what passes through them, and canonical JSON (the bytes every digest of a
//! JSON document is taken over).

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

/// sha256 of a byte string, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `sha256:<hex>` of a byte string (an OCI digest).
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// sha256 (hex) and size of a file, read in 1 MiB chunks; stops on Ctrl-C.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening {} to hash it", path.display()))?;
    let mut r = HashingReader::new(crate::sys::interrupt::Checked(file));
    io::copy(&mut r, &mut io::sink())
        .with_context(|| format!("reading {} to hash it", path.display()))?;
    let (hex, size) = r.finish();
    Ok((hex, size))
}

/// Hash state that can be read after the writer holding it moved into another thread
/// (a parallel compressor owns its output writer).
#[derive(Clone, Default)]
pub struct Tap(Arc<Mutex<(Sha256, u64)>>);

impl Tap {
    pub fn new() -> Tap {
        Tap::default()
    }
    fn update(&self, data: &[u8]) {
        let mut s = self.0.lock().expect("hash state lock");
        s.0.update(data);
        s.1 += data.len() as u64;
    }
    /// `sha256:<hex>` and byte count of everything seen so far.
    pub fn digest(&self) -> (String, u64) {
        let s = self.0.lock().expect("hash state lock");
        (
            format!("sha256:{}", hex::encode(s.0.clone().finalize())),
            s.1,
        )
    }
}

/// A writer that hashes and counts what it passes on to `inner`, and reports progress.
pub struct HashingWriter<W> {
    inner: W,
    tap: Tap,
    progress: Option<crate::progress::Bytes>,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W, tap: Tap, progress: Option<crate::progress::Bytes>) -> Self {
        HashingWriter {
            inner,
            tap,
            progress,
        }
    }
    pub fn into_inner(self) -> W {
        if let Some(p) = self.progress {
            p.finish();
        }
        self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.tap.update(&buf[..n]);
        if let Some(p) = self.progress.as_mut() {
            p.inc(n as u64);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what it yields.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    /// Hex sha256 and byte count of everything read.
    pub fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.count)
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    /// Hex sha256 of what was read so far.
    pub fn hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// JSON with object keys sorted at every level and no insignificant whitespace: the same
/// value always gives the same bytes, so digests of configs and manifests are stable.
pub fn canonical_json(v: &serde_json::Value) -> Result<Vec<u8>> {
    fn sort(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sort(&m[k]));
                }
                serde_json::Value::Object(out)
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sort(v)).context("serializing JSON")
}

/// Canonical JSON of any serializable value.
pub fn canonical<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    canonical_json(&serde_json::to_value(value).context("serializing JSON")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_and_writers_agree_with_the_one_shot_hash() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let mut r = HashingReader::new(&data[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.finish(), (sha256_hex(&data), data.len() as u64));
        let tap = Tap::new();
        let mut w = HashingWriter::new(Vec::new(), tap.clone(), None);
        w.write_all(&data).unwrap();
        assert_eq!(w.into_inner(), data);
        assert_eq!(tap.digest(), (sha256_digest(&data), data.len() as u64));
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = serde_json::json!({"b": 1, "a": {"d": [ {"z": 0, "y": 1} ], "c": null}});
        assert_eq!(
            String::from_utf8(canonical_json(&a).unwrap()).unwrap(),
            r#"{"a":{"c":null,"d":[{"y":1,"z":0}]},"b":1}"#
        );
    }
}
