//! `Scanner`: finds message boundaries in a relayed byte stream without
//! buffering messages, so results of any size stream through.
//!
//! Bytes are forwarded exactly as they arrive; the scanner only follows
//! along, keeping the 5-byte header and a short prefix of each message body
//! (enough to classify a query or read a transaction status) across chunk
//! boundaries.

use super::CodecError;

/// Longest body prefix kept for a message.
pub const MAX_PREFIX: usize = 96;

/// The start of one message, with as much of its body as was asked for.
#[derive(Debug)]
pub struct MessageStart<'a> {
    pub tag: u8,
    /// Body length (without the tag and length word).
    pub body_len: usize,
    /// The first `min(body_len, prefix_len(tag))` body bytes.
    pub prefix: &'a [u8],
}

/// Streaming message-boundary tracker for one direction.
#[derive(Debug)]
pub struct Scanner {
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current message still to come.
    remaining: usize,
    prefix: [u8; MAX_PREFIX],
    prefix_len: usize,
    prefix_want: usize,
    body_len: usize,
    prefix_len_for: fn(u8) -> usize,
}

impl Scanner {
    /// `prefix_len_for(tag)` says how many body bytes to collect (≤ MAX_PREFIX).
    pub fn new(prefix_len_for: fn(u8) -> usize) -> Self {
        Self {
            header: [0; 5],
            header_len: 0,
            remaining: 0,
            prefix: [0; MAX_PREFIX],
            prefix_len: 0,
            prefix_want: 0,
            body_len: 0,
            prefix_len_for,
        }
    }

    /// True when the stream is between two messages.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0 && self.prefix_want == 0
    }

    /// Walks `chunk`, calling `on_start` once per message as soon as its
    /// header and wanted prefix are known.
    pub fn scan(
        &mut self,
        chunk: &[u8],
        mut on_start: impl FnMut(MessageStart<'_>),
    ) -> Result<(), CodecError> {
        self.walk(chunk, |piece| {
            if let Piece::Prefix(m) = piece {
                on_start(m)
            }
        })
    }

    /// Walks `chunk`, reporting every byte as part of a [`Piece`], in stream
    /// order: each message's `Header` (once all 5 bytes are in), its `Body`
    /// segments, and its `Prefix` after the body segment that completes it.
    /// Re-emitting the `Header` and `Body` bytes reproduces the stream, so a
    /// caller can drop whole messages.
    pub fn walk(
        &mut self,
        mut chunk: &[u8],
        mut on: impl FnMut(Piece<'_>),
    ) -> Result<(), CodecError> {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(chunk.len());
                let (body, rest) = chunk.split_at(take);
                self.remaining -= take;
                chunk = rest;
                on(Piece::Body(body));
                if self.prefix_want > self.prefix_len {
                    let more = (self.prefix_want - self.prefix_len).min(take);
                    self.prefix[self.prefix_len..self.prefix_len + more]
                        .copy_from_slice(&body[..more]);
                    self.prefix_len += more;
                    if self.prefix_len == self.prefix_want {
                        self.emit(&mut on);
                    }
                }
                continue;
            }
            // Fast path: a whole header in the chunk.
            if self.header_len == 0 && chunk.len() >= 5 {
                self.header.copy_from_slice(&chunk[..5]);
                chunk = &chunk[5..];
            } else {
                let take = (5 - self.header_len).min(chunk.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&chunk[..take]);
                self.header_len += take;
                chunk = &chunk[take..];
                if self.header_len < 5 {
                    return Ok(());
                }
            }
            self.header_len = 0;
            let len = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]);
            if len < 4 {
                return Err(CodecError::BadMessageLength(len));
            }
            self.body_len = len as usize - 4;
            self.remaining = self.body_len;
            self.prefix_len = 0;
            self.prefix_want = (self.prefix_len_for)(self.header[0])
                .min(MAX_PREFIX)
                .min(self.body_len);
            on(Piece::Header {
                tag: self.header[0],
                body_len: self.body_len,
                bytes: self.header,
            });
            if self.prefix_want == 0 {
                self.emit(&mut on);
            } else if chunk.len() >= self.prefix_want {
                // Fast path: the whole prefix is in this chunk; no copy needed.
                let take = self.remaining.min(chunk.len());
                let (body, rest) = chunk.split_at(take);
                self.remaining -= take;
                chunk = rest;
                on(Piece::Body(body));
                let want = self.prefix_want;
                self.prefix_want = 0;
                on(Piece::Prefix(MessageStart {
                    tag: self.header[0],
                    body_len: self.body_len,
                    prefix: &body[..want],
                }));
            }
        }
        Ok(())
    }

    fn emit(&mut self, on: &mut impl FnMut(Piece<'_>)) {
        on(Piece::Prefix(MessageStart {
            tag: self.header[0],
            body_len: self.body_len,
            prefix: &self.prefix[..self.prefix_len],
        }));
        self.prefix_want = 0;
        self.prefix_len = 0;
    }
}

/// A piece of the stream, as [`Scanner::walk`] reports it.
#[derive(Debug)]
pub enum Piece<'a> {
    /// A message's header is complete.
    Header {
        tag: u8,
        body_len: usize,
        bytes: [u8; 5],
    },
    /// Body bytes of the current message.
    Body(&'a [u8]),
    /// The wanted prefix of the current message is known.
    Prefix(MessageStart<'a>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn scan_in_pieces(stream: &[u8], piece: usize) -> Vec<(u8, usize, Vec<u8>)> {
        let mut s = Scanner::new(|tag| if tag == b'Q' { 8 } else { 1 });
        let mut seen = Vec::new();
        for chunk in stream.chunks(piece) {
            s.scan(chunk, |m| seen.push((m.tag, m.body_len, m.prefix.to_vec())))
                .unwrap();
        }
        assert!(s.at_boundary());
        seen
    }

    #[test]
    fn finds_every_message_however_the_stream_is_cut() {
        let mut stream = msg(b'Q', b"SELECT 1\0");
        stream.extend(msg(b'D', &[7; 300]));
        stream.extend(msg(b'Z', b"I"));
        stream.extend(msg(b'S', b""));
        let whole = scan_in_pieces(&stream, stream.len());
        assert_eq!(whole.len(), 4);
        assert_eq!(whole[0], (b'Q', 9, b"SELECT 1".to_vec()));
        assert_eq!(whole[2], (b'Z', 1, b"I".to_vec()));
        assert_eq!(whole[3], (b'S', 0, Vec::new()));
        for piece in 1..20 {
            assert_eq!(scan_in_pieces(&stream, piece), whole, "piece size {piece}");
        }
    }

    #[test]
    fn walking_reproduces_the_stream_and_can_drop_messages() {
        let mut stream = msg(b'P', b"s\0select 1\0\0\0");
        stream.extend(msg(b'S', b""));
        stream.extend(msg(b'Q', b"drop me\0"));
        stream.extend(msg(b'X', b""));
        for piece in 1..stream.len() + 1 {
            let mut s = Scanner::new(|_| 4);
            let (mut all, mut kept) = (Vec::new(), Vec::new());
            let mut keep = true;
            for chunk in stream.chunks(piece) {
                s.walk(chunk, |p| match p {
                    Piece::Header { tag, bytes, .. } => {
                        keep = tag != b'Q';
                        all.extend_from_slice(&bytes);
                        if keep {
                            kept.extend_from_slice(&bytes);
                        }
                    }
                    Piece::Body(b) => {
                        all.extend_from_slice(b);
                        if keep {
                            kept.extend_from_slice(b);
                        }
                    }
                    Piece::Prefix(_) => {}
                })
                .unwrap();
            }
            assert_eq!(all, stream, "piece size {piece}");
            assert_eq!(kept.len(), stream.len() - 13, "piece size {piece}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator: no dependency, same bytes each run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2_000 {
            let len = (next() % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let mut s = Scanner::new(|_| MAX_PREFIX);
            for chunk in bytes.chunks(1 + (next() % 7) as usize) {
                if s.walk(chunk, |_| {}).is_err() {
                    break;
                }
            }
            let _ = crate::proxy::codec::startup::parse(&bytes);
        }
    }

    #[test]
    fn a_length_below_four_is_an_error() {
        let mut s = Scanner::new(|_| 0);
        assert!(s.scan(&[b'Q', 0, 0, 0, 3], |_| {}).is_err());
    }
}
