//! Writing a disk extracted from a layer with its runs of zeros left as holes: a disk
//! image is mostly zeros, and a layer that expands to gigabytes of them must not fill
//! the scratch directory (the packer reads holes back as zeros the same way).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt as _;

/// The unit of hole detection: the usual filesystem block.
const BLOCK: u64 = 4096;

/// Writes through to `file` at increasing offsets, skipping every whole block of zeros;
/// [`SparseWriter::finish`] sets the file's length, so trailing zeros become a hole too.
pub struct SparseWriter<'a> {
    file: &'a File,
    pos: u64,
}

impl<'a> SparseWriter<'a> {
    /// A writer at the start of `file` (an empty file).
    pub fn new(file: &'a File) -> SparseWriter<'a> {
        SparseWriter { file, pos: 0 }
    }

    /// Sets the file's length to what was written (holes included).
    pub fn finish(self) -> io::Result<u64> {
        self.file.set_len(self.pos)?;
        Ok(self.pos)
    }
}

impl Write for SparseWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut off = 0;
        while off < buf.len() {
            // Pieces end on block boundaries of the file, so a skipped piece is a hole.
            let room = (BLOCK - self.pos % BLOCK) as usize;
            let k = room.min(buf.len() - off);
            let piece = &buf[off..off + k];
            if piece.iter().any(|b| *b != 0) {
                self.file.write_all_at(piece, self.pos)?;
            }
            self.pos += k as u64;
            off += k;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zeros_become_holes_and_data_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        let f = File::create(&path).unwrap();
        let mut w = SparseWriter::new(&f);
        w.write_all(b"head").unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            w.write_all(&zeros).unwrap();
        }
        w.write_all(b"tail").unwrap();
        w.write_all(&zeros).unwrap();
        assert_eq!(w.finish().unwrap(), 8 + (65 << 20));
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.len(), 8 + (65 << 20));
        assert!(
            m.blocks() * 512 < 1 << 20,
            "{} bytes allocated",
            m.blocks() * 512
        );
        let data = std::fs::read(&path).unwrap();
        assert_eq!(&data[..4], b"head");
        assert_eq!(&data[4 + (64 << 20)..8 + (64 << 20)], b"tail");
        assert!(data[4..4 + (64 << 20)].iter().all(|b| *b == 0));
    }
}
