//! A layer's uncompressed tar stream handed from the thread that reads and inflates the blob to
//! the thread that parses the tar and writes files, in bounded chunks: decompression and file
//! writing overlap, and memory stays flat whatever the layer size.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use sha2::{Digest as _, Sha256};

/// Bytes per chunk.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight: at most `DEPTH + 2` chunks exist at a time.
const DEPTH: usize = 8;

/// The producing end: see [`Sender::pump`].
pub(crate) struct Sender {
    tx: SyncSender<io::Result<Vec<u8>>>,
    /// Chunks the reader is done with, to be filled again.
    spare: Receiver<Vec<u8>>,
}

/// The consuming end: reads what was pumped, hashing it (the diffID) as it arrives.
pub(crate) struct ChunkReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    spare: SyncSender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    hasher: Sha256,
    /// Bytes received.
    pub(crate) n_bytes: u64,
    /// The producer's error, repeated to every later read so that it is never taken for an end.
    failed: Option<(io::ErrorKind, String)>,
}

/// A connected pair.
pub(crate) fn pipe() -> (Sender, ChunkReader) {
    let (tx, rx) = sync_channel(DEPTH);
    let (spare_tx, spare_rx) = sync_channel(DEPTH + 2);
    (
        Sender {
            tx,
            spare: spare_rx,
        },
        ChunkReader {
            rx,
            spare: spare_tx,
            chunk: Vec::new(),
            pos: 0,
            hasher: Sha256::new(),
            n_bytes: 0,
            failed: None,
        },
    )
}

impl Sender {
    /// Sends everything `source` yields, then its error if it fails; the reader sees the end
    /// of the stream when this returns. Returns false if the reader went away first (it
    /// stopped extracting), true once the whole stream or its error was handed over.
    pub(crate) fn pump(self, source: &mut impl Read) -> bool {
        loop {
            let mut buf = self
                .spare
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
            buf.resize(CHUNK, 0);
            let (n, err) = fill(source, &mut buf);
            buf.truncate(n);
            if n > 0 && self.tx.send(Ok(buf)).is_err() {
                return false;
            }
            if let Some(err) = err {
                return self.tx.send(Err(err)).is_ok();
            }
            if n < CHUNK {
                return true;
            }
        }
    }
}

/// Reads until `buf` is full, the stream ends or fails: the bytes read, and the error if any.
pub(crate) fn fill(source: &mut impl Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return (filled, Some(err)),
        }
    }
    (filled, None)
}

impl ChunkReader {
    /// `sha256:<hex>` of the bytes received.
    pub(crate) fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if let Some((kind, message)) = &self.failed {
                return Err(io::Error::new(*kind, message.clone()));
            }
            match self.rx.recv() {
                Ok(Ok(next)) => {
                    self.hasher.update(&next);
                    self.n_bytes += next.len() as u64;
                    let done = std::mem::replace(&mut self.chunk, next);
                    self.pos = 0;
                    // A full spare queue only means one more allocation later.
                    let _ = self.spare.try_send(done);
                }
                Ok(Err(err)) => {
                    self.failed = Some((err.kind(), err.to_string()));
                    return Err(err);
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields `data` in pieces of 1000 bytes, then fails if `fail` is set.
    struct Source<'a> {
        data: &'a [u8],
        fail: bool,
    }

    impl Read for Source<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.data.is_empty() && self.fail {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "broken"));
            }
            let n = buf.len().min(self.data.len()).min(1000);
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn data() -> Vec<u8> {
        (0..CHUNK * 3 + 12_345)
            .map(|i| (i * 7 % 251) as u8)
            .collect()
    }

    #[test]
    fn everything_arrives_in_order_and_hashed() {
        let data = data();
        let (tx, mut rx) = pipe();
        let got = std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                let mut got = Vec::new();
                rx.read_to_end(&mut got)
                    .map(|_| (got, rx.digest(), rx.n_bytes))
            });
            assert!(tx.pump(&mut Source {
                data: &data,
                fail: false,
            }));
            reader.join().expect("reader thread")
        });
        let (got, digest, n) = got.expect("read");
        assert_eq!(got, data);
        assert_eq!(n, data.len() as u64);
        assert_eq!(
            digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&data)))
        );
    }

    #[test]
    fn a_source_error_reaches_the_reader_and_stays() {
        let data = data();
        let (tx, mut rx) = pipe();
        let got = std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                let mut got = Vec::new();
                let first = rx.read_to_end(&mut got).expect_err("source failed");
                let again = rx.read(&mut [0u8; 16]).expect_err("still failed");
                (got.len(), first.to_string(), again.kind())
            });
            assert!(tx.pump(&mut Source {
                data: &data,
                fail: true,
            }));
            reader.join().expect("reader thread")
        });
        assert_eq!(
            got,
            (data.len(), "broken".to_string(), io::ErrorKind::InvalidData)
        );
    }

    #[test]
    fn the_pump_stops_when_the_reader_goes_away() {
        let data = vec![0u8; CHUNK * (DEPTH + 4)];
        let (tx, rx) = pipe();
        drop(rx);
        assert!(!tx.pump(&mut Source {
            data: &data,
            fail: false,
        }));
    }
}
