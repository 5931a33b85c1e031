//! gRPC's C core (grpcio, which the `spiffe` Python package uses) names a unix socket's path,
//! percent-encoded, as the request's `:authority` since grpc 1.57 (grpc/grpc#33571), e.g.
//! `%2Frun%2Fwl.sock`; the `http` crate under hyper refuses any `%` in a host, and h2 answers
//! such a request with a PROTOCOL_ERROR reset (hyperium/h2#487, grpc/grpc#38142). The Workload
//! API has no use for the authority, so on unix sockets the client's byte stream passes through
//! [`relay`], which replaces each `%` of a literal `:authority` value with `_` before hyper reads
//! it. The value keeps its length, so the HPACK dynamic tables of both ends stay in step and no
//! frame changes size; nothing else is touched. A Huffman-coded value is left as it is.

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// The HTTP/2 client preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame accepted (2^24 - 1 is HTTP/2's bound).
const MAX_FRAME: usize = (1 << 24) - 1;

/// Copies `client` to `server` frame by frame, the `:authority` made acceptable; ends at either
/// end's close or at a malformed stream (hyper then sees the stream end).
pub(super) async fn relay(
    mut client: impl AsyncRead + Unpin,
    mut server: impl AsyncWrite + Unpin,
) -> std::io::Result<()> {
    let mut preface = [0u8; 24];
    client.read_exact(&mut preface).await?;
    server.write_all(&preface).await?;
    if &preface != PREFACE {
        // Not HTTP/2 with prior knowledge: hyper refuses it.
        return Ok(());
    }
    let mut block: Vec<([u8; 9], Vec<u8>)> = Vec::new();
    loop {
        let mut header = [0u8; 9];
        client.read_exact(&mut header).await?;
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        if len > MAX_FRAME {
            return Ok(());
        }
        let mut payload = vec![0u8; len];
        client.read_exact(&mut payload).await?;
        let (kind, flags) = (header[3], header[4]);
        if kind == HEADERS || (kind == CONTINUATION && !block.is_empty()) {
            block.push((header, payload));
            if flags & END_HEADERS != 0 {
                rewrite(&mut block);
                for (h, p) in block.drain(..) {
                    server.write_all(&h).await?;
                    server.write_all(&p).await?;
                }
                server.flush().await?;
            }
            continue;
        }
        server.write_all(&header).await?;
        server.write_all(&payload).await?;
        server.flush().await?;
    }
}

/// Rewrites the `:authority` of one header block (a HEADERS frame and its CONTINUATIONs), in
/// place.
fn rewrite(block: &mut [([u8; 9], Vec<u8>)]) {
    // Where each frame's fragment lies in its payload.
    let mut ranges = Vec::with_capacity(block.len());
    for (header, payload) in block.iter() {
        let (mut start, mut end) = (0, payload.len());
        if header[3] == HEADERS {
            if header[4] & PADDED != 0 {
                let Some(&pad) = payload.first() else { return };
                start = 1;
                end = end.saturating_sub(usize::from(pad));
            }
            if header[4] & PRIORITY != 0 {
                start += 5;
            }
        }
        if start > end {
            return;
        }
        ranges.push((start, end));
    }
    let mut fragment: Vec<u8> = Vec::new();
    for ((_, payload), (start, end)) in block.iter().zip(&ranges) {
        fragment.extend_from_slice(&payload[*start..*end]);
    }
    let positions = percents_in_authority(&fragment);
    // Back from a position in the fragment to its frame and offset.
    for position in positions {
        let mut at = position;
        for ((_, payload), (start, end)) in block.iter_mut().zip(&ranges) {
            let len = end - start;
            if at < len {
                payload[start + at] = b'_';
                break;
            }
            at -= len;
        }
    }
}

/// The positions of `%` in each plain (not Huffman-coded) literal `:authority` value of an
/// HPACK header block (RFC 7541 §6); nothing past a malformed representation.
pub(super) fn percents_in_authority(block: &[u8]) -> Vec<usize> {
    let mut found = Vec::new();
    let mut at = 0;
    while at < block.len() {
        let first = block[at];
        let name_prefix = if first & 0x80 != 0 {
            // Indexed header field.
            let Some(next) = integer(block, at, 7) else {
                break;
            };
            at = next;
            continue;
        } else if first & 0xc0 == 0x40 {
            6
        } else if first & 0xe0 == 0x20 {
            // Dynamic table size update.
            let Some(next) = integer(block, at, 5) else {
                break;
            };
            at = next;
            continue;
        } else {
            4
        };
        let Some((index, next)) = integer_value(block, at, name_prefix) else {
            break;
        };
        at = next;
        let mut authority = index == 1; // static table entry 1: `:authority`
        if index == 0 {
            let Some((name, huffman, next)) = string(block, at) else {
                break;
            };
            authority = !huffman && &block[name.clone()] == b":authority";
            at = next;
        }
        let Some((value, huffman, next)) = string(block, at) else {
            break;
        };
        if authority && !huffman {
            found.extend(value.filter(|i| block[*i] == b'%'));
        }
        at = next;
    }
    found
}

/// An HPACK integer with an `n`-bit prefix at `at`: the position after it.
fn integer(block: &[u8], at: usize, n: u32) -> Option<usize> {
    integer_value(block, at, n).map(|(_, next)| next)
}

/// An HPACK integer (RFC 7541 §5.1) and the position after it.
fn integer_value(block: &[u8], at: usize, n: u32) -> Option<(usize, usize)> {
    let max = (1usize << n) - 1;
    let mut value = usize::from(*block.get(at)?) & max;
    let mut at = at + 1;
    if value < max {
        return Some((value, at));
    }
    let mut shift = 0u32;
    loop {
        let byte = *block.get(at)?;
        at += 1;
        value = value.checked_add(usize::from(byte & 0x7f).checked_shl(shift)?)?;
        if byte & 0x80 == 0 {
            return Some((value, at));
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

/// An HPACK string literal (RFC 7541 §5.2): its bytes' range, whether Huffman-coded, and the
/// position after it.
fn string(block: &[u8], at: usize) -> Option<(std::ops::Range<usize>, bool, usize)> {
    let huffman = *block.get(at)? & 0x80 != 0;
    let (len, start) = integer_value(block, at, 7)?;
    let end = start.checked_add(len)?;
    (end <= block.len()).then_some((start..end, huffman, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percents_of_a_literal_authority_are_found_and_nothing_else() {
        // :method GET (indexed 2), :authority "a%2Fb" with incremental indexing (static name 1),
        // a new-name literal "x-p" = "1%" (not the authority), then a never-indexed literal
        // with the new name ":authority" = "%c".
        let mut block = vec![0x82, 0x41, 5];
        block.extend_from_slice(b"a%2Fb");
        block.extend_from_slice(&[0x40, 3]);
        block.extend_from_slice(b"x-p");
        block.push(2);
        block.extend_from_slice(b"1%");
        block.extend_from_slice(&[0x10, 10]);
        block.extend_from_slice(b":authority");
        block.push(2);
        block.extend_from_slice(b"%c");
        assert_eq!(percents_in_authority(&block), vec![4, block.len() - 2]);
        // A Huffman-coded value is left alone; a truncated block stops the scan.
        assert!(percents_in_authority(&[0x41, 0x82, b'%', b'%']).is_empty());
        assert!(percents_in_authority(&[0x41, 9, b'%']).is_empty());
    }

    #[tokio::test]
    async fn the_relay_rewrites_the_authority_across_continuation_frames() {
        let mut input = PREFACE.to_vec();
        // HEADERS (no END_HEADERS) carrying `0x41 5 "a%` then CONTINUATION `2Fb"` (END_HEADERS).
        input.extend_from_slice(&[0, 0, 4, HEADERS, 0, 0, 0, 0, 1, 0x41, 5, b'a', b'%']);
        input.extend_from_slice(&[
            0,
            0,
            3,
            CONTINUATION,
            END_HEADERS,
            0,
            0,
            0,
            1,
            b'2',
            b'F',
            b'b',
        ]);
        // A DATA frame with a `%` passes as it is.
        input.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 0, 1, b'%']);
        let mut out = Vec::new();
        let _ = relay(&input[..], &mut out).await;
        let mut want = input.clone();
        want[24 + 9 + 3] = b'_';
        assert_eq!(out, want);
    }
}
