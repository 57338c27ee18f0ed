//! A file one thread is still writing while another reads it: the writer reports how many
//! bytes it has handed to the kernel and, at the end, the finished file's digest; the
//! reader (an upload that overlaps packing) sends what is there and waits for more.
//! Dropping the writer's side without [`Feed::complete`] tells the reader the file will
//! never be finished.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use tokio::io::AsyncReadExt as _;
use tokio::sync::watch;

/// What the reader sees.
#[derive(Debug, Clone, Default)]
pub struct Growth {
    /// A handle on the file (a second descriptor: it stays readable when the file is
    /// renamed at the end).
    pub file: Option<Arc<File>>,
    /// Bytes written so far; everything before this offset is final.
    pub written: u64,
    /// `(digest, size)` once the file is complete.
    pub complete: Option<(String, u64)>,
}

/// The writer's side.
#[derive(Debug)]
pub struct Feed {
    tx: watch::Sender<Growth>,
}

/// A feed and the receiver that follows it.
pub fn channel() -> (Arc<Feed>, watch::Receiver<Growth>) {
    let (tx, rx) = watch::channel(Growth::default());
    (Arc::new(Feed { tx }), rx)
}

impl Feed {
    /// Announces the file being written: `file` is the reader's own open of it (its own
    /// offset, never a duplicate of the writer's descriptor; opened before any rename).
    pub fn start(&self, file: File) {
        self.tx.send_modify(|g| g.file = Some(Arc::new(file)));
    }
    /// The file is complete: `size` bytes hashing to `digest`.
    pub fn complete(&self, digest: &str, size: u64) {
        self.tx.send_modify(|g| {
            g.written = size;
            g.complete = Some((digest.to_string(), size));
        });
    }
    fn advance(&self, written: u64) {
        self.tx.send_modify(|g| g.written = written);
    }
}

/// The file's bytes as a stream that follows the writer: what is written is read as soon
/// as it is there, the stream waits for more, and it ends when the writer reports the file
/// complete and every byte has been read. It fails when the writer gives up.
pub fn follow(
    feed: watch::Receiver<Growth>,
) -> impl futures_util::Stream<Item = io::Result<bytes::Bytes>> + Send + 'static {
    struct Follower {
        feed: watch::Receiver<Growth>,
        file: Option<tokio::fs::File>,
        offset: u64,
    }
    let start = Follower {
        feed,
        file: None,
        offset: 0,
    };
    futures_util::stream::unfold(Some(start), |state| async move {
        let mut st = state?;
        loop {
            let g = st.feed.borrow_and_update().clone();
            if let (None, Some(f)) = (&st.file, &g.file) {
                match f.try_clone() {
                    Ok(f) => st.file = Some(tokio::fs::File::from_std(f)),
                    Err(e) => return Some((Err(e), None)),
                }
            }
            if let Some(file) = st.file.as_mut().filter(|_| g.written > st.offset) {
                let n = (g.written - st.offset).min(READ) as usize;
                let mut buf = vec![0u8; n];
                if let Err(e) = file.read_exact(&mut buf).await {
                    return Some((Err(e), None));
                }
                st.offset += n as u64;
                return Some((Ok(bytes::Bytes::from(buf)), Some(st)));
            }
            if let Some((_, size)) = g.complete {
                if st.offset == size {
                    return None;
                }
                let e = io::Error::other(format!("{size} bytes written, {} read", st.offset));
                return Some((Err(e), None));
            }
            if st.feed.changed().await.is_err() && st.feed.borrow().complete.is_none() {
                let e = io::Error::other("packing stopped before the layer was complete");
                return Some((Err(e), None));
            }
        }
    })
}

/// How much [`follow`] reads at a time.
const READ: u64 = 64 << 10;

/// A writer that reports every byte it has passed to the file.
pub struct Reporting<W> {
    inner: W,
    written: u64,
    feed: Option<Arc<Feed>>,
}

impl<W> Reporting<W> {
    pub fn new(inner: W, feed: Option<Arc<Feed>>) -> Self {
        Reporting {
            inner,
            written: 0,
            feed,
        }
    }
}

impl<W: Write> Write for Reporting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        if let Some(f) = &self.feed {
            f.advance(self.written);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_sees_every_written_byte_and_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let (feed, mut rx) = channel();
        feed.start(File::open(&path).unwrap());
        let mut w = Reporting::new(file, Some(feed.clone()));
        w.write_all(b"hello").unwrap();
        assert_eq!(rx.borrow_and_update().written, 5);
        assert!(rx.borrow().complete.is_none());
        feed.complete("sha256:x", 5);
        let g = rx.borrow_and_update().clone();
        assert_eq!(g.complete, Some(("sha256:x".to_string(), 5)));
        // The reader's handle reads what was written, also after a rename.
        std::fs::rename(&path, dir.path().join("g")).unwrap();
        let mut s = String::new();
        use std::io::{Read, Seek};
        let mut f = g.file.unwrap().try_clone().unwrap();
        f.seek(io::SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }

    /// The stream follows a writer in another thread to the end, byte for byte, and
    /// fails when the writer stops before completing the file.
    #[test]
    fn follow_reads_a_growing_file_to_the_end_and_fails_when_abandoned() {
        use futures_util::StreamExt as _;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        for finish in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            let file = File::create(&path).unwrap();
            let (feed, rx) = channel();
            feed.start(File::open(&path).unwrap());
            let writer = std::thread::spawn(move || {
                let mut w = Reporting::new(file, Some(feed.clone()));
                let mut all = Vec::new();
                for i in 0..40u32 {
                    let piece = vec![i as u8; 100_000 + i as usize];
                    w.write_all(&piece).unwrap();
                    all.extend_from_slice(&piece);
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                if finish {
                    feed.complete("sha256:x", all.len() as u64);
                }
                all
            });
            let got: Vec<io::Result<bytes::Bytes>> = rt.block_on(follow(rx).collect());
            let written = writer.join().unwrap();
            let (ok, err): (Vec<_>, Vec<_>) = got.into_iter().partition(|r| r.is_ok());
            let read: Vec<u8> = ok.into_iter().flat_map(|b| b.unwrap().to_vec()).collect();
            if finish {
                assert!(err.is_empty());
                assert_eq!(read, written);
            } else {
                assert_eq!(
                    err.len(),
                    1,
                    "an abandoned file must end the stream with an error"
                );
                assert!(written.starts_with(&read));
            }
        }
    }

    #[test]
    fn dropping_the_feed_unfinished_closes_the_channel() {
        let (feed, mut rx) = channel();
        drop(feed);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt.block_on(rx.changed()).is_err());
        assert!(rx.borrow().complete.is_none());
    }
}
