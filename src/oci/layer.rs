//! The containerDisk layer: `disk/` (0555) holding one file `disk/NAME` (0440), both owned
//! by 107:107 (`qemu`), written in one streaming pass
//! disk → tar → compressor → blob file, hashing the tar (the config's diff_id) and the
//! compressed bytes (the blob digest) on the way. Memory stays constant in the disk size.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use crate::cache::TempFile;
use crate::recipe::Compression;

/// KubeVirt runs QEMU as this user and group.
pub const QEMU_ID: u64 = 107;
/// The user and group name written into the tar headers.
pub const QEMU_NAME: &str = "qemu";
/// Layer file mtime when `SOURCE_DATE_EPOCH` is not set: 2000-01-01T00:00:00Z.
pub const DEFAULT_MTIME: u64 = 946_684_800;
/// Read size of the streaming pass.
const CHUNK: usize = 1 << 20;

/// What one layer pass produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// `sha256:…` of the compressed blob.
    pub digest: String,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// `sha256:…` of the uncompressed tar.
    pub diff_id: String,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
    pub media_type: &'static str,
}

/// The layer media type for a compression.
pub fn media_type(compression: Compression) -> &'static str {
    match compression {
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
    }
}

/// The mtime for layer entries: `SOURCE_DATE_EPOCH` when set, a fixed date otherwise.
pub fn mtime_from_env() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        _ => Ok(DEFAULT_MTIME),
    }
}

/// A writer that hashes and counts what passes through. The state is shared so it can be
/// read after the writer has been moved into a compressor thread.
#[derive(Clone)]
struct Tap {
    state: Arc<Mutex<(Sha256, u64)>>,
}

impl Tap {
    fn new() -> Self {
        Tap {
            state: Arc::new(Mutex::new((Sha256::new(), 0))),
        }
    }
    fn update(&self, data: &[u8]) {
        let mut s = self.state.lock().expect("hash state lock");
        s.0.update(data);
        s.1 += data.len() as u64;
    }
    fn result(&self) -> (String, u64) {
        let s = self.state.lock().expect("hash state lock");
        (
            format!("sha256:{}", hex::encode(s.0.clone().finalize())),
            s.1,
        )
    }
}

struct TapWriter<W> {
    inner: W,
    tap: Tap,
    progress: Option<crate::progress::Bytes>,
}

impl<W: Write> Write for TapWriter<W> {
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

/// The compressor at the end of the tar stream.
enum Sink {
    Gzip(gzp::par::compress::ParCompress<'static, gzp::deflate::Gzip, TapWriter<BufWriter<File>>>),
    Zstd(zstd::stream::write::Encoder<'static, TapWriter<BufWriter<File>>>),
    None(TapWriter<BufWriter<File>>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Gzip(w) => w.write(buf),
            Sink::Zstd(w) => w.write(buf),
            Sink::None(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Gzip(w) => w.flush(),
            Sink::Zstd(w) => w.flush(),
            Sink::None(w) => w.flush(),
        }
    }
}

impl Sink {
    fn finish(self) -> Result<()> {
        match self {
            Sink::Gzip(mut w) => {
                use gzp::ZWriter;
                w.finish().context("finishing the gzip stream")?;
            }
            Sink::Zstd(w) => {
                let mut inner = w.finish().context("finishing the zstd stream")?;
                inner.flush().context("flushing the layer blob")?;
            }
            Sink::None(mut w) => w.flush().context("flushing the layer blob")?,
        }
        Ok(())
    }
}

/// Default compression levels: gzip 6 (what `gzip` and Go's registries use), zstd 3.
pub fn default_level(compression: Compression) -> u32 {
    match compression {
        Compression::Gzip => 6,
        Compression::Zstd => 3,
        Compression::None => 0,
    }
}

/// The effective compression level; an out-of-range level is an error.
pub fn check_level(compression: Compression, level: Option<u32>) -> Result<u32> {
    let level = level.unwrap_or_else(|| default_level(compression));
    match compression {
        Compression::Gzip if !(1..=9).contains(&level) => {
            bail!("gzip compression level must be 1-9, not {level}")
        }
        Compression::Zstd if !(1..=19).contains(&level) => {
            bail!("zstd compression level must be 1-19, not {level}")
        }
        _ => Ok(level),
    }
}

/// Options for [`write_layer`].
#[derive(Debug, Clone)]
pub struct LayerOptions {
    pub compression: Compression,
    pub level: Option<u32>,
    /// Entry mtime (seconds since the epoch).
    pub mtime: u64,
    /// Compression threads (0: all cores).
    pub threads: usize,
}

/// Writes the layer for `disk` named `disk/NAME` into `blobs_dir` (an OCI layout's
/// `blobs/sha256`): streamed into a temp file there, renamed to its digest at the end,
/// so a failure leaves no partial blob.
pub fn write_layer(
    disk: &Path,
    name: &str,
    blobs_dir: &Path,
    opts: &LayerOptions,
) -> Result<Layer> {
    validate_disk_name(name)?;
    let file = File::open(disk).with_context(|| format!("opening disk {}", disk.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("reading metadata of {}", disk.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", disk.display());
    }
    let disk_size = meta.len();
    std::fs::create_dir_all(blobs_dir)
        .with_context(|| format!("creating {}", blobs_dir.display()))?;
    let mut temp = TempFile::new_in(blobs_dir)?;
    let out = temp
        .file()
        .try_clone()
        .context("duplicating the blob file handle")?;

    let blob_tap = Tap::new();
    let tar_tap = Tap::new();
    let blob_writer = TapWriter {
        inner: BufWriter::with_capacity(CHUNK, out),
        tap: blob_tap.clone(),
        progress: None,
    };
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        opts.threads
    };
    let level = opts
        .level
        .unwrap_or_else(|| default_level(opts.compression));
    let sink = match opts.compression {
        Compression::Gzip => {
            if !(1..=9).contains(&level) {
                bail!("gzip compression level must be 1-9, not {level}");
            }
            Sink::Gzip(
                gzp::par::compress::ParCompressBuilder::<gzp::deflate::Gzip>::new()
                    .num_threads(threads)
                    .context("setting gzip threads")?
                    .compression_level(gzp::Compression::new(level))
                    .from_writer(blob_writer),
            )
        }
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(blob_writer, level as i32)
                .context("starting the zstd encoder")?;
            enc.multithread(threads as u32)
                .context("enabling multi-threaded zstd")?;
            Sink::Zstd(enc)
        }
        Compression::None => Sink::None(blob_writer),
    };
    let tar_writer = TapWriter {
        inner: sink,
        tap: tar_tap.clone(),
        progress: Some(crate::progress::bytes("packing", Some(disk_size))),
    };

    let mut builder = tar::Builder::new(tar_writer);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    set_common(&mut dir, 0o555, opts.mtime)?;
    dir.set_size(0);
    builder
        .append_data(&mut dir, "disk/", io::empty())
        .context("writing the disk/ directory entry")?;
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    set_common(&mut header, 0o440, opts.mtime)?;
    header.set_size(disk_size);
    let reader = SizeGuard {
        inner: BufReader::with_capacity(CHUNK, file),
        remaining: disk_size,
        path: disk.to_path_buf(),
    };
    builder
        .append_data(&mut header, format!("disk/{name}"), reader)
        .with_context(|| format!("streaming {} into the layer", disk.display()))?;
    builder.finish().context("finishing the tar stream")?;
    let mut tar_writer = builder.into_inner().context("finishing the tar stream")?;
    tar_writer.flush().context("flushing the tar stream")?;
    if let Some(p) = tar_writer.progress.take() {
        p.finish();
    }
    tar_writer.inner.finish()?;
    temp.file()
        .sync_all()
        .context("syncing the layer blob to disk")?;

    let (digest, size) = blob_tap.result();
    let (diff_id, tar_size) = tar_tap.result();
    let dest = blobs_dir.join(digest.trim_start_matches("sha256:"));
    temp.persist(&dest)?;
    Ok(Layer {
        digest,
        size,
        diff_id,
        tar_size,
        media_type: media_type(opts.compression),
    })
}

fn set_common(h: &mut tar::Header, mode: u32, mtime: u64) -> Result<()> {
    h.set_mode(mode);
    h.set_uid(QEMU_ID);
    h.set_gid(QEMU_ID);
    h.set_username(QEMU_NAME)
        .context("setting the tar user name")?;
    h.set_groupname(QEMU_NAME)
        .context("setting the tar group name")?;
    h.set_mtime(mtime);
    Ok(())
}

/// A disk name must be one plain path component.
pub fn validate_disk_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.len() > 200
    {
        bail!("invalid disk file name {name:?}: it must be one file name such as disk.qcow2");
    }
    Ok(())
}

/// Fails the pass when the disk changes size while it is read (the tar header already
/// holds the size; a short read would otherwise produce a corrupt layer).
struct SizeGuard<R> {
    inner: R,
    remaining: u64,
    path: PathBuf,
}

impl<R: Read> Read for SizeGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        crate::interrupt::check_io()?;
        let want = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was being packed", self.path.display()),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names_are_single_components() {
        assert!(validate_disk_name("disk.qcow2").is_ok());
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(validate_disk_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn media_types_follow_the_compression() {
        assert!(media_type(Compression::Gzip).ends_with("+gzip"));
        assert!(media_type(Compression::Zstd).ends_with("+zstd"));
        assert!(media_type(Compression::None).ends_with(".tar"));
    }
}
