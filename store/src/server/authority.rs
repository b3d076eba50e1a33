//! Works around etcd's Go clients sending a whole URL as the HTTP/2 `:authority` (etcdctl 3.4
//! for `endpoint status`/`hashkv`, clientv3 3.5.0 always): Go's server accepts
//! `http://127.0.0.1:2379`, the Rust HTTP/2 stack resets the stream with PROTOCOL_ERROR.
//!
//! [`FixAuthority`] sits between the TCP socket and the HTTP/2 server and rewrites such an
//! authority in the client's header blocks to its `host:port` part. The rewritten value is
//! never longer than the original, so the server's HPACK dynamic table always holds at least
//! the entries the client's encoder still references, and indices keep matching.

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Frames larger than this are passed through untouched (and the filter stops).
const MAX_BUFFERED_FRAME: usize = 1 << 20;

/// An HTTP/2 server-side stream whose client header blocks get a valid `:authority`.
pub struct FixAuthority<S> {
    inner: S,
    raw: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    preface_done: bool,
    passthrough: bool,
}

impl<S> FixAuthority<S> {
    pub fn new(inner: S) -> Self {
        FixAuthority {
            inner,
            raw: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            preface_done: false,
            passthrough: false,
        }
    }

    /// Moves whatever complete units `raw` holds into `out`.
    fn process(&mut self) {
        if !self.preface_done && !self.passthrough {
            let n = self.raw.len().min(PREFACE.len());
            if self.raw[..n] != PREFACE[..n] {
                self.passthrough = true;
            } else if n == PREFACE.len() {
                self.out.extend(self.raw.drain(..n));
                self.preface_done = true;
            } else {
                return;
            }
        }
        if self.passthrough {
            self.out.append(&mut self.raw);
            return;
        }
        let mut pos = 0;
        while self.raw.len() - pos >= 9 {
            let h = &self.raw[pos..pos + 9];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            if len > MAX_BUFFERED_FRAME {
                self.passthrough = true;
                break;
            }
            if self.raw.len() - pos < 9 + len {
                break;
            }
            let (kind, flags) = (h[3], h[4]);
            let frame = &self.raw[pos..pos + 9 + len];
            match (kind == FRAME_HEADERS && flags & FLAG_END_HEADERS != 0)
                .then(|| rewrite_headers_frame(frame))
                .flatten()
            {
                Some(fixed) => self.out.extend_from_slice(&fixed),
                None => self.out.extend_from_slice(frame),
            }
            pos += 9 + len;
        }
        self.raw.drain(..pos);
        if self.passthrough {
            self.out.append(&mut self.raw);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FixAuthority<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let filled = rb.filled();
                    if filled.is_empty() {
                        // End of stream: hand over any incomplete frame as it is.
                        if this.raw.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        this.out.append(&mut this.raw);
                        continue;
                    }
                    this.raw.extend_from_slice(filled);
                    this.process();
                }
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixAuthority<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for FixAuthority<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// A HEADERS frame with a fixed authority, or `None` to keep it as it is.
fn rewrite_headers_frame(frame: &[u8]) -> Option<Vec<u8>> {
    let flags = frame[4];
    let payload = &frame[9..];
    let mut start = 0;
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        pad = usize::from(*payload.first()?);
        start = 1;
    }
    let priority = if flags & FLAG_PRIORITY != 0 {
        let p = payload.get(start..start + 5)?;
        start += 5;
        Some(p)
    } else {
        None
    };
    let end = payload.len().checked_sub(pad)?;
    let block = payload.get(start..end)?;
    let fixed = fix_block(block)?;
    let len = fixed.len() + priority.map_or(0, <[u8]>::len);
    let mut out = Vec::with_capacity(9 + len);
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8]);
    out.push(frame[3]);
    // Padding is dropped along the way.
    out.push(flags & !FLAG_PADDED);
    out.extend_from_slice(&frame[5..9]);
    if let Some(p) = priority {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(&fixed);
    Some(out)
}

/// HPACK integer with an `n`-bit prefix at `b[i]`: (value, next index).
fn read_int(b: &[u8], i: usize, n: u8) -> Option<(usize, usize)> {
    let mask = (1u16 << n) - 1;
    let first = u16::from(*b.get(i)?) & mask;
    if first < mask {
        return Some((usize::from(first), i + 1));
    }
    let mut value = usize::from(mask);
    let mut shift = 0;
    let mut j = i + 1;
    loop {
        let byte = *b.get(j)?;
        j += 1;
        value = value.checked_add(usize::from(byte & 0x7f).checked_shl(shift)?)?;
        if byte & 0x80 == 0 {
            return Some((value, j));
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

/// An HPACK string at `b[i]`: (huffman-coded, bytes, next index).
fn read_string(b: &[u8], i: usize) -> Option<(bool, &[u8], usize)> {
    let huffman = *b.get(i)? & 0x80 != 0;
    let (len, start) = read_int(b, i, 7)?;
    let bytes = b.get(start..start.checked_add(len)?)?;
    Some((huffman, bytes, start + len))
}

fn write_raw_string(out: &mut Vec<u8>, s: &[u8]) {
    let len = s.len();
    if len < 127 {
        out.push(len as u8);
    } else {
        out.push(127);
        let mut rest = len - 127;
        while rest >= 128 {
            out.push((rest as u8 & 0x7f) | 0x80);
            rest >>= 7;
        }
        out.push(rest as u8);
    }
    out.extend_from_slice(s);
}

/// Walks a header block; returns a copy with a fixed `:authority`, or `None` when nothing
/// needs fixing (or the block cannot be parsed: the server will judge it).
fn fix_block(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len());
    let mut changed = false;
    let mut i = 0;
    while i < b.len() {
        let first = b[i];
        if first & 0x80 != 0 {
            let (_, next) = read_int(b, i, 7)?;
            out.extend_from_slice(&b[i..next]);
            i = next;
            continue;
        }
        if first & 0xe0 == 0x20 {
            let (_, next) = read_int(b, i, 5)?;
            out.extend_from_slice(&b[i..next]);
            i = next;
            continue;
        }
        let prefix = if first & 0xc0 == 0x40 { 6 } else { 4 };
        let (name_index, mut next) = read_int(b, i, prefix)?;
        let mut is_authority = name_index == 1;
        if name_index == 0 {
            let (huffman, name, after) = read_string(b, next)?;
            let name = if huffman {
                huffman_decode(name)?
            } else {
                name.to_vec()
            };
            is_authority = name == b":authority";
            next = after;
        }
        let (huffman, value, after) = read_string(b, next)?;
        let fixed = if is_authority {
            let decoded = if huffman {
                huffman_decode(value)?
            } else {
                value.to_vec()
            };
            fix_authority(&decoded)
        } else {
            None
        };
        match fixed {
            Some(v) => {
                out.extend_from_slice(&b[i..next]);
                write_raw_string(&mut out, &v);
                changed = true;
            }
            None => out.extend_from_slice(&b[i..after]),
        }
        i = after;
    }
    changed.then_some(out)
}

/// A valid authority no longer than `value`, or `None` when `value` is valid already.
pub fn fix_authority(value: &[u8]) -> Option<Vec<u8>> {
    let valid = |v: &[u8]| http::uri::Authority::try_from(v).is_ok();
    if valid(value) {
        return None;
    }
    let text = String::from_utf8_lossy(value);
    let after_scheme = text.rsplit("://").next().unwrap_or("");
    let mut host_port: String = after_scheme
        .chars()
        .take_while(|c| !matches!(c, '/' | ',' | ';' | ' '))
        .collect();
    // "#initially=[http://h:p]" (clientv3 3.5.0): the bracket closes the list, not an IPv6 host.
    if !host_port.contains('[') && host_port.ends_with(']') {
        host_port.pop();
    }
    if !host_port.is_empty() && host_port.len() <= value.len() && valid(host_port.as_bytes()) {
        return Some(host_port.into_bytes());
    }
    let fallback: &[u8] = if value.len() >= 9 { b"localhost" } else { b"x" };
    Some(fallback.to_vec())
}

/// RFC 7541 Appendix B code lengths for symbols 0..=255 (letters: 'A' + length - 5); EOS has
/// length 30. The code is canonical, so lengths alone define it.
const CODE_LENGTHS: &str = "ISXXXXXXXTZXXZXXXXXXXXZXXXXXXXXXBFFHIBDGFFDGDBBBAAABBBBBBBCDKBHFIBCCCCCCCCCCCCCCCCCCCCCCDCDIOIJBKABABABBBACCBBBABCBAABCCCCCKGJIXPRPPRRRSRSSSSSTSTTRSTSSSSQRSRSSTRQPRRSSQSRRTQRSSQQRQSRSSPRRRSRRSVVPORSRUVVVWWVTUOQVWWVWTQQVVXWWWPTPQRQQSRRUUTTVSVWVVWWWWWXWWWWWV";

/// (code length, code) → symbol.
fn decode_table() -> &'static HashMap<(u8, u32), u8> {
    static TABLE: OnceLock<HashMap<(u8, u32), u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let lens: Vec<u8> = CODE_LENGTHS.bytes().map(|c| c - b'A' + 5).collect();
        let mut order: Vec<usize> = (0..lens.len()).collect();
        order.sort_by_key(|&s| (lens[s], s));
        let mut table = HashMap::new();
        let mut code: u32 = 0;
        let mut prev = lens[order[0]];
        for (n, &sym) in order.iter().enumerate() {
            if n > 0 {
                code = (code + 1) << (lens[sym] - prev);
            }
            prev = lens[sym];
            table.insert((lens[sym], code), sym as u8);
        }
        table
    })
}

/// Decodes an HPACK Huffman string; `None` when malformed.
pub fn huffman_decode(b: &[u8]) -> Option<Vec<u8>> {
    let table = decode_table();
    let mut out = Vec::with_capacity(b.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0u8);
    for byte in b {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            if let Some(&sym) = table.get(&(len, code)) {
                out.push(sym);
                code = 0;
                len = 0;
            } else if len >= 30 {
                return None;
            }
        }
    }
    // What is left must be padding: fewer than 8 bits, all ones.
    if len >= 8 || code != (1u32 << len) - 1 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7541 C.4.1: "www.example.com" Huffman-coded.
    const WWW_EXAMPLE: &[u8] = &[
        0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
    ];

    #[test]
    fn huffman_matches_rfc_example() {
        assert_eq!(huffman_decode(WWW_EXAMPLE).unwrap(), b"www.example.com");
        assert_eq!(huffman_decode(&[0x00]), None);
    }

    #[test]
    fn authorities() {
        let cases: &[(&str, Option<&str>)] = &[
            ("127.0.0.1:2379", None),
            ("localhost", None),
            ("http://127.0.0.1:2379", Some("127.0.0.1:2379")),
            ("https://[::1]:2379", Some("[::1]:2379")),
            ("#initially=[http://127.0.0.1:2379]", Some("127.0.0.1:2379")),
            ("/some/socket/path.sock", Some("localhost")),
        ];
        for (input, want) in cases {
            let got = fix_authority(input.as_bytes()).map(|v| String::from_utf8(v).unwrap());
            assert_eq!(got.as_deref(), *want, "{input}");
        }
    }

    fn headers_frame(block: &[u8]) -> Vec<u8> {
        let len = block.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(block);
        f
    }

    #[test]
    fn rewrites_literal_authority_only() {
        // :method GET (indexed 2), :authority literal with incremental indexing (raw string).
        let mut block = vec![0x82, 0x41];
        write_raw_string(&mut block, b"http://127.0.0.1:2379");
        block.push(0x84); // :path / (indexed 4)
        let fixed = rewrite_headers_frame(&headers_frame(&block)).unwrap();
        let mut want_block = vec![0x82, 0x41];
        write_raw_string(&mut want_block, b"127.0.0.1:2379");
        want_block.push(0x84);
        assert_eq!(fixed, headers_frame(&want_block));
        // A valid authority, and garbage, are left alone.
        let mut ok = vec![0x82, 0x41];
        write_raw_string(&mut ok, b"127.0.0.1:2379");
        assert_eq!(rewrite_headers_frame(&headers_frame(&ok)), None);
        assert_eq!(rewrite_headers_frame(&headers_frame(&[0x41, 0xff])), None);
    }

    #[tokio::test]
    async fn stream_passes_other_frames_through() {
        use tokio::io::AsyncReadExt;
        let mut block = vec![0x82, 0x41];
        write_raw_string(&mut block, b"http://h:1");
        let data_frame = [0u8, 0, 3, 0, 1, 0, 0, 0, 1, 7, 8, 9];
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(&block));
        input.extend(data_frame);
        let mut want = PREFACE.to_vec();
        let mut fixed_block = vec![0x82, 0x41];
        write_raw_string(&mut fixed_block, b"h:1");
        want.extend(headers_frame(&fixed_block));
        want.extend(data_frame);
        let mut s = FixAuthority::new(std::io::Cursor::new(input));
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, want);
        // Not HTTP/2: untouched.
        let mut s = FixAuthority::new(std::io::Cursor::new(b"GET / HTTP/1.1\r\n\r\n".to_vec()));
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
    }
}
