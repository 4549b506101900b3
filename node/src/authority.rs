//! Accepts the `:authority` that etcdctl 3.4 sends on its per-endpoint calls.
//!
//! `etcdctl endpoint status`, `endpoint hashkv`, `defrag` and `move-leader` dial each endpoint
//! on its own, and the grpc-go of etcd 3.4 then sends the endpoint as it was given, such as
//! `http://127.0.0.1:2379`, as the request's `:authority`. That is no authority (RFC 3986: no
//! scheme, no `//`). etcd's Go server ignores it; the h2 crate under tonic resets the stream
//! with PROTOCOL_ERROR, so these commands failed against Cairn for any `http://` or `https://`
//! endpoint.
//!
//! [`AuthorityFix`] reads a connection's bytes before HTTP/2 does. It follows the frames, and
//! in each header block it rewrites an authority `scheme://host:port` to `scheme:_@host:port`:
//! the same host and port, the scheme turned into userinfo, which h2 accepts. The value keeps
//! its length, so the HPACK dynamic table (whose entries count by length, and which the
//! client's encoder and h2's decoder must keep alike) stays the same on both sides, and later
//! references to the entry read the rewritten value. Every other byte passes unchanged. A
//! connection that does not open with the HTTP/2 preface (HTTP/1, for the health pages) is
//! passed on without a look.

use http::uri::Authority;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload every HTTP/2 peer takes (the least SETTINGS_MAX_FRAME_SIZE).
const MIN_MAX_FRAME: usize = 16_384;
/// A header block larger than this is passed on as it is: h2 refuses far smaller ones.
const MAX_BLOCK: usize = 1 << 20;
/// HPACK's static table index of `:authority`.
const AUTHORITY_INDEX: usize = 1;

/// The rewriting reader's state for one connection (see the module documentation).
#[derive(Default)]
pub struct AuthorityFix {
    state: State,
    /// Bytes read but not yet passed on: the preface so far, or the frames of the header
    /// block being gathered followed by the start of the current frame.
    held: Vec<u8>,
    /// Where the current frame starts in `held`.
    frame_at: usize,
    /// The last authority that needed no rewriting, as coded on the wire.
    valid: Vec<u8>,
}

#[derive(Default, PartialEq)]
enum State {
    #[default]
    Preface,
    /// At a frame boundary (or inside a header block's frames, which are held).
    Frame,
    /// Passing on this many more bytes of a frame that needs no look.
    Payload(usize),
    Passthrough,
}

impl AuthorityFix {
    /// Whether every further byte passes unchanged and nothing is held.
    pub fn passes_through(&self) -> bool {
        self.state == State::Passthrough && self.held.is_empty()
    }

    /// Takes the next bytes read from the connection; appends what HTTP/2 may read to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match self.state {
                State::Passthrough => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Payload(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if n == left {
                        State::Frame
                    } else {
                        State::Payload(left - n)
                    };
                }
                State::Preface => {
                    let have = self.held.len();
                    let n = (PREFACE.len() - have).min(input.len());
                    if input[..n] != PREFACE[have..have + n] {
                        self.give_up(out);
                        continue;
                    }
                    self.held.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.held.len() == PREFACE.len() {
                        out.append(&mut self.held);
                        self.state = State::Frame;
                    }
                }
                State::Frame => input = self.frame(input, out),
            }
        }
    }

    /// The connection ended: whatever is held goes on as it is.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.give_up(out);
    }

    /// Passes on what is held and every later byte unchanged.
    fn give_up(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.frame_at = 0;
        self.state = State::Passthrough;
    }

    /// Reads the current frame's header and, for a header block, its payload; returns the
    /// input left over.
    fn frame<'a>(&mut self, mut input: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        let have = self.held.len() - self.frame_at;
        if have < FRAME_HEADER {
            let n = (FRAME_HEADER - have).min(input.len());
            self.held.extend_from_slice(&input[..n]);
            input = &input[n..];
            if have + n < FRAME_HEADER {
                return input;
            }
        }
        let header = &self.held[self.frame_at..self.frame_at + FRAME_HEADER];
        let length = frame_length(header);
        let (kind, flags) = (header[3], header[4]);
        let in_block = self.frame_at > 0;
        if in_block && kind != CONTINUATION {
            // A protocol error of the client's; h2 answers it.
            self.give_up(out);
            return input;
        }
        if kind != HEADERS && !in_block {
            out.append(&mut self.held);
            self.state = if length == 0 {
                State::Frame
            } else {
                State::Payload(length)
            };
            return input;
        }
        let missing = FRAME_HEADER + length - (self.held.len() - self.frame_at);
        if missing > 0 {
            if self.held.len() + missing > MAX_BLOCK {
                self.give_up(out);
                return input;
            }
            let n = missing.min(input.len());
            self.held.extend_from_slice(&input[..n]);
            input = &input[n..];
            if n < missing {
                return input;
            }
        }
        if flags & END_HEADERS == 0 {
            self.frame_at = self.held.len();
            return input;
        }
        match rewrite_frames(&self.held, &mut self.valid) {
            Some(frames) => {
                out.extend_from_slice(&frames);
                self.held.clear();
            }
            None => out.append(&mut self.held),
        }
        self.frame_at = 0;
        input
    }
}

/// The payload length in a frame header.
fn frame_length(header: &[u8]) -> usize {
    usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2])
}

/// The HEADERS frame (with its CONTINUATION frames) in `frames`, rebuilt around a rewritten
/// header block; `None` when nothing needs rewriting or the frames are malformed (h2 then
/// answers them as they are).
fn rewrite_frames(frames: &[u8], valid: &mut Vec<u8>) -> Option<Vec<u8>> {
    let (stream, flags) = (&frames[5..9], frames[4]);
    let mut block = Vec::new();
    let mut priority: &[u8] = &[];
    let mut at = 0;
    while at < frames.len() {
        let length = frame_length(&frames[at..]);
        let mut payload = &frames[at + FRAME_HEADER..at + FRAME_HEADER + length];
        if at == 0 {
            if flags & PADDED != 0 {
                let (&pad, rest) = payload.split_first()?;
                payload = rest.get(..rest.len().checked_sub(usize::from(pad))?)?;
            }
            if flags & PRIORITY != 0 {
                priority = payload.get(..5)?;
                payload = &payload[5..];
            }
        }
        block.extend_from_slice(payload);
        at += FRAME_HEADER + length;
    }
    let block = rewrite_block(&block, valid)?;
    let mut rebuilt = Vec::with_capacity(block.len() + 2 * FRAME_HEADER + priority.len());
    let first = (MIN_MAX_FRAME - priority.len()).min(block.len());
    let chunks: Vec<&[u8]> = std::iter::once(&block[..first])
        .chain(block[first..].chunks(MIN_MAX_FRAME))
        .collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let (kind, prefix, frame_flags) = if i == 0 {
            (HEADERS, priority, flags & (END_STREAM | PRIORITY))
        } else {
            (CONTINUATION, &[][..], 0)
        };
        let end = if i + 1 == chunks.len() {
            END_HEADERS
        } else {
            0
        };
        let length = (prefix.len() + chunk.len()) as u32;
        rebuilt.extend_from_slice(&length.to_be_bytes()[1..]);
        rebuilt.push(kind);
        rebuilt.push(frame_flags | end);
        rebuilt.extend_from_slice(stream);
        rebuilt.extend_from_slice(prefix);
        rebuilt.extend_from_slice(chunk);
    }
    Some(rebuilt)
}

/// `block` with each literal `:authority` that needs it rewritten; `None` when none does or
/// the block is malformed. `valid` is the coded form of the last authority that needed
/// nothing: a client sends the same one on every request, and it is not decoded again.
fn rewrite_block(block: &[u8], valid: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut rewritten = Vec::new();
    let mut copied = 0;
    let mut at = 0;
    while at < block.len() {
        let first = block[at];
        if first & 0x80 != 0 {
            // An indexed field: a reference to a table entry, rewritten when it was added.
            at = integer(block, at, 7)?.1;
            continue;
        }
        if first & 0xe0 == 0x20 {
            // A dynamic table size update.
            at = integer(block, at, 5)?.1;
            continue;
        }
        // A literal field: with incremental indexing (01), without (0000) or never (0001).
        let prefix = if first & 0xc0 == 0x40 { 6 } else { 4 };
        let (index, mut next) = integer(block, at, prefix)?;
        let is_authority = if index == 0 {
            let (name, after) = string(block, next)?;
            next = after;
            name == b":authority"
        } else {
            index == AUTHORITY_INDEX
        };
        let value_at = next;
        at = string_bounds(block, value_at)?.1;
        if !is_authority || block[value_at..at] == *valid {
            continue;
        }
        let (value, _) = string(block, value_at)?;
        match fixed_authority(&value) {
            Some(fixed) => {
                rewritten.extend_from_slice(&block[copied..value_at]);
                put_integer(&mut rewritten, fixed.len(), 7, 0);
                rewritten.extend_from_slice(&fixed);
                copied = at;
            }
            None => {
                valid.clear();
                valid.extend_from_slice(&block[value_at..at]);
            }
        }
    }
    if copied == 0 {
        return None;
    }
    rewritten.extend_from_slice(&block[copied..]);
    Some(rewritten)
}

/// `scheme://host:port` as `scheme:_@host:port`, when the value is no authority and the
/// rewritten one is; same length.
fn fixed_authority(value: &[u8]) -> Option<Vec<u8>> {
    if Authority::try_from(value).is_ok() {
        return None;
    }
    let at = value.windows(3).position(|w| w == b"://")?;
    let mut fixed = value.to_vec();
    fixed[at..at + 3].copy_from_slice(b":_@");
    Authority::try_from(fixed.as_slice())
        .is_ok()
        .then_some(fixed)
}

/// An HPACK integer with a `prefix`-bit prefix at `at`; returns it and where it ends.
fn integer(block: &[u8], at: usize, prefix: u8) -> Option<(usize, usize)> {
    let mask = (1usize << prefix) - 1;
    let mut value = usize::from(*block.get(at)?) & mask;
    let mut at = at + 1;
    if value < mask {
        return Some((value, at));
    }
    let mut shift = 0;
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

/// Appends `value` as an HPACK integer with a `prefix`-bit prefix, under the `flags` bits.
fn put_integer(out: &mut Vec<u8>, value: usize, prefix: u8, flags: u8) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Where the bytes of the HPACK string literal at `at` start and end.
fn string_bounds(block: &[u8], at: usize) -> Option<(usize, usize)> {
    let (length, start) = integer(block, at, 7)?;
    let end = start.checked_add(length)?;
    (end <= block.len()).then_some((start, end))
}

/// An HPACK string literal at `at`, Huffman-decoded when it is coded; returns it and where
/// it ends.
fn string(block: &[u8], at: usize) -> Option<(Vec<u8>, usize)> {
    let huffman = *block.get(at)? & 0x80 != 0;
    let (start, end) = string_bounds(block, at)?;
    let raw = &block[start..end];
    let value = if huffman {
        let mut decoded = Vec::with_capacity(raw.len() * 8 / 5);
        httlib_huffman::decode(raw, &mut decoded, httlib_huffman::DecoderSpeed::FourBits).ok()?;
        decoded
    } else {
        raw.to_vec()
    };
    Some((value, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    use loona_hpack::{Decoder, Encoder};

    /// A frame of `kind` with `flags` on `stream`, carrying `payload`.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        frame.push(kind);
        frame.push(flags);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// What the connection reads after the fix, fed `input` in pieces of `piece` bytes.
    fn through(input: &[u8], piece: usize) -> Vec<u8> {
        let mut fix = AuthorityFix::default();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            fix.feed(chunk, &mut out);
        }
        fix.finish(&mut out);
        out
    }

    /// The header blocks of the HEADERS frames (with their CONTINUATIONs) in `bytes`, after
    /// the preface; asserts every frame is well formed.
    fn blocks(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut at = PREFACE.len();
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        while at < bytes.len() {
            let length = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
            assert!(length <= MIN_MAX_FRAME);
            let (kind, flags) = (bytes[at + 3], bytes[at + 4]);
            let mut payload = &bytes[at + FRAME_HEADER..at + FRAME_HEADER + length];
            if kind == HEADERS {
                if flags & PRIORITY != 0 {
                    payload = &payload[5..];
                }
                blocks.push(payload.to_vec());
            } else if kind == CONTINUATION {
                blocks.last_mut().unwrap().extend_from_slice(payload);
            }
            at += FRAME_HEADER + length;
        }
        blocks
    }

    fn request(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (
                b":path".to_vec(),
                b"/etcdserverpb.Maintenance/Status".to_vec(),
            ),
            (b":authority".to_vec(), authority.to_vec()),
            (b"content-type".to_vec(), b"application/grpc".to_vec()),
        ]
    }

    fn authorities(decoder: &mut Decoder, block: &[u8]) -> Vec<Vec<u8>> {
        decoder
            .decode(block)
            .expect("h2 can decode the block")
            .into_iter()
            .filter(|(name, _)| name == b":authority")
            .map(|(_, value)| value)
            .collect()
    }

    /// A literal `name: value` header with incremental indexing and a literal name.
    fn indexed_literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        block.push(0x40);
        put_integer(block, name.len(), 7, 0);
        block.extend_from_slice(name);
        put_integer(block, value.len(), 7, 0);
        block.extend_from_slice(value);
    }

    #[test]
    fn a_scheme_in_the_authority_becomes_userinfo_and_the_dynamic_table_stays_in_step() {
        // The table holds exactly the two entries the first block adds (63 + 36 bytes); a
        // rewritten value one byte longer would evict the authority and break the second
        // block's reference to it.
        let mut first = Vec::new();
        put_integer(&mut first, 99, 5, 0x20);
        first.extend_from_slice(&[0x83, 0x41]); // :method POST; :authority, incremental
        put_integer(&mut first, 21, 7, 0);
        first.extend_from_slice(b"http://127.0.0.1:2379");
        indexed_literal(&mut first, b"x-a", b"b");
        let second = [0x83, 0xbf, 0xbe]; // POST, then the two entries by index
        let mut third = vec![0x83, 0x41];
        let mut coded = Vec::new();
        httlib_huffman::encode(b"https://10.0.0.7:2379", &mut coded).unwrap();
        put_integer(&mut third, coded.len(), 7, 0x80);
        third.extend_from_slice(&coded);
        third.push(0xbf); // x-a, now the older entry

        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        for (stream, block) in [(1, &first[..]), (3, &second), (5, &third)] {
            input.extend(frame(HEADERS, END_HEADERS, stream, block));
            input.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\0")); // DATA
        }
        let post = (b":method".to_vec(), b"POST".to_vec());
        let header = |name: &[u8], value: &[u8]| (name.to_vec(), value.to_vec());
        for piece in [1, 7, 4096] {
            let out = through(&input, piece);
            let mut decoder = Decoder::new();
            let decoded: Vec<_> = blocks(&out)
                .iter()
                .map(|block| decoder.decode(block).expect("h2 can decode the block"))
                .collect();
            assert_eq!(
                decoded,
                [
                    vec![
                        post.clone(),
                        header(b":authority", b"http:_@127.0.0.1:2379"),
                        header(b"x-a", b"b"),
                    ],
                    vec![
                        post.clone(),
                        header(b":authority", b"http:_@127.0.0.1:2379"),
                        header(b"x-a", b"b"),
                    ],
                    vec![
                        post.clone(),
                        header(b":authority", b"https:_@10.0.0.7:2379"),
                        header(b"x-a", b"b"),
                    ],
                ]
            );
            Authority::try_from(&b"https:_@10.0.0.7:2379"[..]).expect("a valid authority");
        }
    }

    #[test]
    fn huffman_coded_padded_and_continued_blocks_are_rewritten() {
        let value = b"http://127.0.0.1:2379";
        let mut coded = Vec::new();
        httlib_huffman::encode(value, &mut coded).unwrap();
        let mut block = vec![0x82, 0x41]; // :method GET; literal, incremental, name index 1
        put_integer(&mut block, coded.len(), 7, 0x80);
        block.extend_from_slice(&coded);
        block.push(0x84); // :path /
                          // PADDED and PRIORITY on the HEADERS frame, the block split over a CONTINUATION.
        let mut payload = vec![3];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        payload.extend_from_slice(&block[..4]);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &block[4..]));
        let out = through(&input, 5);
        let flags = out[PREFACE.len() + 4];
        assert_eq!(flags, PRIORITY | END_STREAM | END_HEADERS);
        let blocks = blocks(&out);
        assert_eq!(blocks.len(), 1);
        let fields = Decoder::new().decode(&blocks[0]).unwrap();
        assert_eq!(
            fields,
            [
                (b":method".to_vec(), b"GET".to_vec()),
                (b":authority".to_vec(), b"http:_@127.0.0.1:2379".to_vec()),
                (b":path".to_vec(), b"/".to_vec()),
            ]
        );
    }

    #[test]
    fn valid_authorities_other_frames_and_http1_pass_unchanged() {
        let mut encoder = Encoder::new();
        let headers = request(b"127.0.0.1:2379");
        let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        input.extend(frame(0x0, 0, 1, &[0x01; 40_000][..]));
        input.extend(frame(0x6, 0, 0, &[7; 8])); // PING
        for piece in [1, 3, 9, 100_000] {
            assert_eq!(through(&input, piece), input);
        }
        let http1 = b"GET /health HTTP/1.1\r\nHost: http://x\r\n\r\n";
        let mut fix = AuthorityFix::default();
        let mut out = Vec::new();
        fix.feed(&http1[..4], &mut out);
        assert!(fix.passes_through());
        fix.feed(&http1[4..], &mut out);
        assert_eq!(out, http1);
    }

    #[test]
    fn a_large_rewritten_block_is_split_into_frames_h2_takes() {
        let mut encoder = Encoder::new();
        let mut headers = request(b"http://127.0.0.1:2379");
        headers.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
        let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut input = PREFACE.to_vec();
        // One oversized frame: a peer that allowed larger frames would take it.
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let out = through(&input, 1000);
        let blocks = blocks(&out);
        assert_eq!(blocks.len(), 1);
        assert_eq!(
            authorities(&mut Decoder::new(), &blocks[0]),
            [b"http:_@127.0.0.1:2379".to_vec()]
        );
    }

    #[test]
    fn an_authority_after_a_repeated_valid_one_is_still_rewritten() {
        let literal = |value: &[u8]| [&[0x01, value.len() as u8][..], value].concat();
        let mut input = PREFACE.to_vec();
        for (stream, value) in [
            (1, &b"127.0.0.1:2379"[..]),
            (3, b"127.0.0.1:2379"),
            (5, b"http://127.0.0.1:2379"),
        ] {
            input.extend(frame(HEADERS, END_HEADERS, stream, &literal(value)));
        }
        let out = through(&input, 3);
        let blocks = blocks(&out);
        assert_eq!(
            blocks[..2],
            [literal(b"127.0.0.1:2379"), literal(b"127.0.0.1:2379")]
        );
        assert_eq!(blocks[2], literal(b"http:_@127.0.0.1:2379"));
    }

    #[test]
    fn malformed_blocks_and_a_cut_connection_pass_as_they_are() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0x41, 0xff])); // a cut integer
        input.extend(frame(HEADERS, 0, 3, &[0x82])); // no END_HEADERS, then the cut
        assert_eq!(through(&input, 2), input);
        assert!(fixed_authority(b"127.0.0.1:2379").is_none());
        assert!(fixed_authority(b"http://host/path").is_none());
    }
}
