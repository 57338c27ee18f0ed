//! Streaming decompression, the one dispatch for every compressed stream diskforge
//! reads: `.xz`, `.gz` and `.zst` downloads (bytes pushed in as they arrive, a
//! [`Decoder`] writes them on) and OCI layers (a [`reader`] pulls from the blob), so
//! nothing is ever held in memory whole.

use std::io::{self, Read, Write};

use anyhow::{Context, Result};

/// How a download is compressed, from its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Gzip,
    Zstd,
}

impl Compression {
    /// From the last path segment of a URL or a file name.
    pub fn from_name(name: &str) -> Compression {
        let name = name.split(['?', '#']).next().unwrap_or(name);
        if name.ends_with(".xz") {
            Compression::Xz
        } else if name.ends_with(".gz") {
            Compression::Gzip
        } else if name.ends_with(".zst") || name.ends_with(".zstd") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// From an OCI layer media type (`…tar+gzip`, `…tar+zstd`, `…tar`); Docker's
    /// `…tar.gzip` too. `None` for a media type that is not a layer diskforge can read.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
            Some(Compression::Gzip)
        } else if media_type.ends_with("+zstd") {
            Some(Compression::Zstd)
        } else if media_type.ends_with(".tar") || media_type.ends_with("diff.tar") {
            Some(Compression::None)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// A reader that decompresses what `inner` yields.
pub fn reader<'a, R: Read + 'a>(compression: Compression, inner: R) -> Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(inner),
        Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(inner)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(inner)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(io::BufReader::new(inner))
                .context("starting a zstd decoder")?,
        ),
    })
}

/// A writer that decompresses into `W`.
pub enum Decoder<W: Write> {
    Xz(xz2::write::XzDecoder<W>),
    Gzip(flate2::write::MultiGzDecoder<W>),
    Zstd(zstd::stream::write::Decoder<'static, W>),
}

impl<W: Write> Decoder<W> {
    /// `None` for uncompressed content.
    pub fn new(compression: Compression, inner: W) -> Result<Option<Decoder<W>>> {
        Ok(match compression {
            Compression::None => None,
            // Multi-stream: `xz` files made by concatenation (pixz, parallel xz) are valid.
            Compression::Xz => Some(Decoder::Xz(xz2::write::XzDecoder::new_multi_decoder(inner))),
            Compression::Gzip => Some(Decoder::Gzip(flate2::write::MultiGzDecoder::new(inner))),
            Compression::Zstd => Some(Decoder::Zstd(
                zstd::stream::write::Decoder::new(inner).context("starting a zstd decoder")?,
            )),
        })
    }

    /// Flushes the decoder, checks the stream ended properly, and returns the inner writer.
    pub fn finish(self) -> Result<W> {
        match self {
            Decoder::Xz(mut d) => d.finish().context("finishing xz decompression"),
            Decoder::Gzip(d) => d.finish().context("finishing gzip decompression"),
            Decoder::Zstd(mut d) => {
                d.flush().context("finishing zstd decompression")?;
                Ok(d.into_inner())
            }
        }
    }
}

impl<W: Write> Write for Decoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Decoder::Xz(d) => d.write(buf),
            Decoder::Gzip(d) => d.write(buf),
            Decoder::Zstd(d) => d.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Decoder::Xz(d) => d.flush(),
            Decoder::Gzip(d) => d.flush(),
            Decoder::Zstd(d) => d.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Compression::from_name("a.qcow2.xz"), Compression::Xz);
        assert_eq!(Compression::from_name("a.raw.gz?x=1"), Compression::Gzip);
        assert_eq!(Compression::from_name("a.img.zst"), Compression::Zstd);
        assert_eq!(Compression::from_name("a.qcow2"), Compression::None);
        let oci = "application/vnd.oci.image.layer.v1.tar";
        assert_eq!(Compression::from_media_type(oci), Some(Compression::None));
        assert_eq!(
            Compression::from_media_type(&format!("{oci}+gzip")),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_media_type(&format!("{oci}+zstd")),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::from_media_type("text/plain"), None);
    }

    #[test]
    fn roundtrip_each_format_in_small_pushes() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let xz = {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&data[..], 1).unwrap();
        for (c, bytes) in [
            (Compression::Xz, xz),
            (Compression::Gzip, gz),
            (Compression::Zstd, zst),
        ] {
            let mut d = Decoder::new(c, Vec::new()).unwrap().unwrap();
            for chunk in bytes.chunks(1000) {
                d.write_all(chunk).unwrap();
            }
            assert_eq!(d.finish().unwrap(), data, "{c:?}");
            let mut back = Vec::new();
            reader(c, &bytes[..])
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "{c:?}");
        }
    }
}
