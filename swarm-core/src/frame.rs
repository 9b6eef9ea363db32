//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes.
//!
//! [`FrameDecoder`] is the sans-I/O core: feed it bytes as they arrive and
//! it hands back whole frames. It never trusts the length header with
//! memory: the buffer grows with the bytes actually received (at most
//! twice what arrived, never more than the frame's length), so a peer that
//! announces a 60 MiB frame and sends ten bytes costs ten bytes, not 60 MiB.
//! A header above the decoder's maximum is refused at once with
//! [`FrameError::TooLarge`]. [`read_frame`] and [`write_frame`] run the
//! format over any tokio stream (TCP today, TLS later).
//!
//! ```
//! use swarm_core::frame::FrameDecoder;
//! let mut d = FrameDecoder::new(1024);
//! let wire = [0, 0, 0, 3, b'a', b'b', b'c', 0, 0];
//! let (used, frame) = d.feed(&wire).unwrap();
//! assert_eq!((used, frame.as_deref()), (7, Some(&b"abc"[..])));
//! // The rest is the start of the next header.
//! assert_eq!(d.feed(&wire[used..]).unwrap(), (2, None));
//! ```

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// Why reading or writing a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length header (or an outgoing frame) exceeds the maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The announced (or actual) length.
        len: usize,
        /// The maximum allowed.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended after {got} of {want} bytes of a frame")]
    Truncated {
        /// Bytes of the frame (header included) received.
        got: usize,
        /// Bytes the frame needed (header included; 4 while the header is incomplete).
        want: usize,
    },
    /// The stream ended cleanly between frames.
    #[error("stream closed")]
    Closed,
    /// The underlying stream failed.
    #[error("frame i/o failed: {0}")]
    Io(#[from] std::io::Error),
}

const HEADER: usize = 4;

/// Incremental decoder of length-prefixed frames. See the [module docs](self).
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    header: [u8; HEADER],
    header_len: usize,
    /// Length of the frame being received, once its header is complete.
    want: Option<usize>,
    body: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder { max, header: [0; HEADER], header_len: 0, want: None, body: Vec::new() }
    }

    /// Feeds bytes. Returns how many of `input` were consumed and, when a
    /// frame completed, the frame; bytes after a completed frame are left
    /// for the next call. An error leaves the decoder unusable (close the
    /// stream).
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Vec<u8>>), FrameError> {
        let mut used = 0;
        let want = match self.want {
            Some(w) => w,
            None => {
                let take = (HEADER - self.header_len).min(input.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&input[..take]);
                self.header_len += take;
                used += take;
                if self.header_len < HEADER {
                    return Ok((used, None));
                }
                let len = u32::from_be_bytes(self.header) as usize;
                if len > self.max {
                    return Err(FrameError::TooLarge { len, max: self.max });
                }
                self.want = Some(len);
                len
            }
        };
        let rest = &input[used..];
        let take = (want - self.body.len()).min(rest.len());
        if take > 0 {
            // Grow with the data that arrived, never to the announced
            // length up front. The final chunk reserves exactly.
            if self.body.len() + take == want {
                self.body.reserve_exact(take);
            } else {
                self.body.reserve(take);
            }
            self.body.extend_from_slice(&rest[..take]);
            used += take;
        }
        if self.body.len() < want {
            return Ok((used, None));
        }
        self.want = None;
        self.header_len = 0;
        Ok((used, Some(std::mem::take(&mut self.body))))
    }

    /// Bytes of the current frame received so far (header included).
    pub fn pending(&self) -> usize {
        match self.want {
            Some(_) => HEADER + self.body.len(),
            None => self.header_len,
        }
    }

    /// Bytes currently allocated for the frame being received.
    pub fn allocated(&self) -> usize {
        self.body.capacity()
    }

    /// The error for a stream that ends now: [`FrameError::Closed`] between
    /// frames, [`FrameError::Truncated`] inside one.
    pub fn end_of_stream(&self) -> FrameError {
        match self.want {
            None if self.header_len == 0 => FrameError::Closed,
            None => FrameError::Truncated { got: self.header_len, want: HEADER },
            Some(w) => FrameError::Truncated { got: self.pending(), want: HEADER + w },
        }
    }
}

/// Reads one frame of at most `max` bytes from a buffered stream, reading
/// only what the frame needs (later bytes stay in the stream's buffer).
pub async fn read_frame<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut d = FrameDecoder::new(max);
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Err(d.end_of_stream());
        }
        let (used, frame) = d.feed(buf)?;
        r.consume(used);
        if let Some(f) = frame {
            return Ok(f);
        }
    }
}

/// Writes one frame (not flushed). Refuses frames over `max` bytes.
///
/// A small frame's length and body go to `w` in one write: over TLS each
/// write is a record and, on a socket with `TCP_NODELAY`, a segment of its
/// own, so two writes per frame doubled the records, the system calls and
/// the packets of every message (the leader's largest cost with a thousand
/// agents). A frame over [`COALESCE_MAX`] is written after its length
/// rather than copied: one more write is nothing next to its size.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8], max: usize) -> Result<(), FrameError> {
    if frame.len() > max || u32::try_from(frame.len()).is_err() {
        return Err(FrameError::TooLarge { len: frame.len(), max });
    }
    let len = (frame.len() as u32).to_be_bytes();
    if frame.len() > COALESCE_MAX {
        w.write_all(&len).await?;
        w.write_all(frame).await?;
    } else {
        let mut wire = Vec::with_capacity(4 + frame.len());
        wire.extend_from_slice(&len);
        wire.extend_from_slice(frame);
        w.write_all(&wire).await?;
    }
    Ok(())
}

/// Largest frame [`write_frame`] copies to write it in one go (64 KiB).
pub const COALESCE_MAX: usize = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_header_allocates_only_what_arrived() {
        let mut d = FrameDecoder::new(64 << 20);
        let mut wire = (60u32 << 20).to_be_bytes().to_vec();
        wire.extend_from_slice(&[7; 10]);
        let (used, frame) = d.feed(&wire).unwrap();
        assert_eq!((used, frame), (14, None));
        assert!(d.allocated() <= 64, "allocated {} bytes for 10 received", d.allocated());
        // Ending the stream there says how much was missing.
        let err = d.end_of_stream().to_string();
        assert_eq!(err, format!("stream ended after 14 of {} bytes of a frame", 4 + (60 << 20)));
    }

    #[test]
    fn a_header_over_the_maximum_is_refused_before_any_body() {
        let mut d = FrameDecoder::new(1000);
        let err = d.feed(&1001u32.to_be_bytes()).unwrap_err();
        assert_eq!(err.to_string(), "frame of 1001 bytes exceeds the maximum of 1000 bytes");
        assert_eq!(d.allocated(), 0);
    }

    #[test]
    fn frames_split_anywhere_reassemble() {
        let frames: Vec<Vec<u8>> = vec![vec![], vec![1], (0..=255).collect(), vec![9; 1000]];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend_from_slice(&(f.len() as u32).to_be_bytes());
            wire.extend_from_slice(f);
        }
        for chunk in [1, 2, 3, 5, 7, 64, wire.len()] {
            let mut d = FrameDecoder::new(4096);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                let mut piece = piece;
                while !piece.is_empty() {
                    let (used, f) = d.feed(piece).unwrap();
                    got.extend(f);
                    piece = &piece[used..];
                }
            }
            // An empty frame completes with its header alone.
            assert_eq!(got, frames, "chunks of {chunk}");
            assert!(matches!(d.end_of_stream(), FrameError::Closed));
        }
    }

    #[tokio::test]
    async fn read_and_write_round_trip_and_refuse_oversized_frames() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hello", 16).await.unwrap();
        write_frame(&mut wire, b"", 16).await.unwrap();
        let err = write_frame(&mut wire, &[0; 17], 16).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 17, max: 16 }), "{err}");
        let mut r = tokio::io::BufReader::new(&wire[..]);
        assert_eq!(read_frame(&mut r, 16).await.unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 16).await.unwrap(), b"");
        assert!(matches!(read_frame(&mut r, 16).await, Err(FrameError::Closed)));
        let mut r = tokio::io::BufReader::new(&[0u8, 0, 0, 9, 1, 2][..]);
        let err = read_frame(&mut r, 16).await.unwrap_err();
        assert_eq!(err.to_string(), "stream ended after 6 of 13 bytes of a frame");
    }

    #[tokio::test]
    async fn small_frames_are_one_write_and_large_ones_are_not_copied() {
        /// Records the size of every write.
        #[derive(Default)]
        struct Writes(Vec<usize>, Vec<u8>);
        impl AsyncWrite for Writes {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.0.push(buf.len());
                self.1.extend_from_slice(buf);
                std::task::Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
        }
        let big = vec![7u8; COALESCE_MAX + 1];
        let mut w = Writes::default();
        write_frame(&mut w, b"hello", 1 << 20).await.unwrap();
        write_frame(&mut w, &big, 1 << 20).await.unwrap();
        assert_eq!(w.0, vec![9, 4, COALESCE_MAX + 1]);
        let mut r = tokio::io::BufReader::new(&w.1[..]);
        assert_eq!(read_frame(&mut r, 1 << 20).await.unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 1 << 20).await.unwrap(), big);
    }

    /// Feeds `wire` in pieces of the given sizes; returns the frames and
    /// the first error. Checks on the way that memory follows the bytes.
    fn feed_all(max: usize, wire: &[u8], cuts: &[usize]) -> (Vec<Vec<u8>>, Option<FrameError>) {
        let mut d = FrameDecoder::new(max);
        let (mut frames, mut at, mut cut) = (Vec::new(), 0, 0);
        while at < wire.len() {
            let n = cuts.get(cut).map_or(wire.len(), |c| 1 + c % 64).min(wire.len() - at);
            cut += 1;
            let mut piece = &wire[at..at + n];
            at += n;
            while !piece.is_empty() {
                match d.feed(piece) {
                    Ok((used, f)) => {
                        assert!(used > 0 && used <= piece.len());
                        frames.extend(f);
                        piece = &piece[used..];
                    }
                    Err(e) => return (frames, Some(e)),
                }
                let body = d.pending().saturating_sub(HEADER);
                assert!(d.allocated() <= 2 * body + 64, "{} bytes allocated for {body} received", d.allocated());
            }
        }
        (frames, None)
    }

    fn fuzz_bytes(seed: u64) {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, RngSeed, TestRunner};
        let config =
            Config { cases: 2000, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..Config::default() };
        let bytes = (proptest::collection::vec(any::<u8>(), 0..300), proptest::collection::vec(any::<usize>(), 0..40));
        // Arbitrary bytes: frames or an error, never a panic, never memory
        // beyond what arrived.
        TestRunner::new(config.clone())
            .run(&bytes, |(wire, cuts)| {
                let (frames, err) = feed_all(100, &wire, &cuts);
                assert!(frames.iter().all(|f| f.len() <= 100));
                if let Some(e) = err {
                    assert!(matches!(e, FrameError::TooLarge { max: 100, .. }), "{e}");
                }
                // The async reader agrees with the decoder.
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let mut r = tokio::io::BufReader::new(&wire[..]);
                let mut read = Vec::new();
                let end = rt.block_on(async {
                    loop {
                        match read_frame(&mut r, 100).await {
                            Ok(f) => read.push(f),
                            Err(e) => break e,
                        }
                    }
                });
                assert_eq!(read, frames);
                assert!(matches!(end, FrameError::Closed | FrameError::Truncated { .. } | FrameError::TooLarge { .. }));
                Ok(())
            })
            .unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
        // Well-formed streams, cut anywhere, come back whole.
        let frames = (
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..6),
            proptest::collection::vec(any::<usize>(), 0..40),
        );
        TestRunner::new(config)
            .run(&frames, |(frames, cuts)| {
                let mut wire = Vec::new();
                for f in &frames {
                    wire.extend_from_slice(&(f.len() as u32).to_be_bytes());
                    wire.extend_from_slice(f);
                }
                let (got, err) = feed_all(120, &wire, &cuts);
                assert!(err.is_none());
                assert_eq!(got, frames);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
    }

    #[test]
    fn arbitrary_bytes_fixed_seed() {
        fuzz_bytes(0xf4a3_0001);
    }

    #[test]
    fn arbitrary_bytes_fresh_seed() {
        fuzz_bytes(crate::harness::test_seed("frame::tests::arbitrary_bytes_fresh_seed"));
    }
}
