//! Helpers shared by the fuzz targets: cutting one input into chunks, and
//! walking a stream with a [`Scanner`] while checking what it promises.

use dynabase::proxy::codec::scanner::{Piece, Scanner};

/// Splits `data` into a chunk-size schedule (its first bytes) and a stream,
/// then cuts the stream into chunks of those sizes (1..=64, cycling), so the
/// fuzzer decides where reads end.
pub fn chunked(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let n = usize::from(data.first().copied().unwrap_or(0) % 8);
    let (sizes, stream) = data
        .get(1..)
        .unwrap_or_default()
        .split_at(n.min(data.len().saturating_sub(1)));
    let sizes: Vec<usize> = if sizes.is_empty() {
        vec![stream.len().max(1)]
    } else {
        sizes.iter().map(|&s| usize::from(s % 64) + 1).collect()
    };
    let mut chunks = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let take = sizes[i % sizes.len()].min(rest.len());
        let (chunk, after) = rest.split_at(take);
        chunks.push(chunk);
        rest = after;
        i += 1;
    }
    (chunks, stream)
}

/// A message start as the scanner reported it.
pub type Start = (u8, usize, Vec<u8>);

/// Walks `chunks` with a fresh scanner; returns the message starts seen,
/// the header and body bytes re-emitted, and whether the stream was refused
/// (`None`) or else whether it ended between two messages.
pub fn walk(
    prefix_len_for: fn(u8) -> usize,
    chunks: &[&[u8]],
) -> (Vec<Start>, Vec<u8>, Option<bool>) {
    let mut scanner = Scanner::new(prefix_len_for);
    let mut starts = Vec::new();
    let mut bytes = Vec::new();
    for chunk in chunks {
        let walked = scanner.walk(chunk, |piece| match piece {
            Piece::Header {
                bytes: h, body_len, ..
            } => {
                assert_eq!(
                    u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize,
                    body_len + 4
                );
                bytes.extend_from_slice(&h);
            }
            Piece::Body(b) => bytes.extend_from_slice(b),
            Piece::Prefix(m) => {
                assert!(m.prefix.len() <= m.body_len);
                assert!(m.prefix.len() <= dynabase::proxy::codec::scanner::MAX_PREFIX);
                starts.push((m.tag, m.body_len, m.prefix.to_vec()));
            }
        });
        if walked.is_err() {
            return (starts, bytes, None);
        }
    }
    let at_boundary = scanner.at_boundary();
    (starts, bytes, Some(at_boundary))
}

/// The scanner's contract on one input: however the stream is cut, it sees
/// the same messages and re-emits exactly the bytes it was given, except an
/// incomplete header at the end (held until its last byte comes) or a
/// refused one.
pub fn check_scanner(prefix_len_for: fn(u8) -> usize, data: &[u8]) -> Vec<Start> {
    let (chunks, stream) = chunked(data);
    let (starts, bytes, refused) = walk(prefix_len_for, &chunks);
    let (whole_starts, whole_bytes, whole_refused) = walk(prefix_len_for, &[stream]);
    assert_eq!(
        starts, whole_starts,
        "message starts depend on the chunking"
    );
    assert_eq!(refused, whole_refused, "refusal depends on the chunking");
    assert_eq!(
        bytes, whole_bytes,
        "re-emitted bytes depend on the chunking"
    );
    assert!(
        stream.starts_with(&bytes),
        "walk does not reproduce the stream"
    );
    let held = stream.len() - bytes.len();
    match refused {
        None => assert!(held >= 5, "a refused header was re-emitted"),
        Some(at_boundary) => {
            assert!(held < 5, "more than a partial header is held back");
            assert!(!at_boundary || held == 0, "bytes held at a boundary");
        }
    }
    starts
}
