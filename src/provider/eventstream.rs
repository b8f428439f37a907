//! AWS event stream framing (`application/vnd.amazon.eventstream`), as
//! Bedrock's `ConverseStream` sends it: each message is a 12-byte prelude
//! (total length, headers length, both big-endian u32, then the CRC32 of
//! those 8 bytes), the headers, the payload, and the CRC32 of everything
//! before it. A header is a 1-byte name length, the name, a 1-byte type
//! and the value; strings (type 7) are what Bedrock sends (`:message-type`,
//! `:event-type`, `:exception-type`, `:content-type`), other types are
//! read past. [`Decoder`] reads messages from a byte stream as it arrives;
//! [`encode`] writes one (the simulator's side).
//!
//! Small enough to keep here rather than take aws-smithy-eventstream and
//! the aws-smithy-types it brings (docs/internals/dependencies.md); the
//! CRCs are crc32fast's.

use bytes::{Buf, Bytes, BytesMut};

/// Prelude (12 bytes) plus the message CRC (4).
const OVERHEAD: usize = 16;
/// The largest message accepted (AWS's limit is 16 MiB of payload).
const MAX_MESSAGE: usize = 24 << 20;

/// One decoded message: its string headers and its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
}

impl Message {
    /// The string header `name`, if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads messages out of bytes as they arrive.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    /// Adds bytes that arrived.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Whether bytes of an unfinished message are waiting.
    pub fn pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next whole message, None until one has arrived; `Err` for a
    /// stream that is not event stream framing (a CRC that does not match,
    /// lengths that do not add up).
    pub fn next_message(&mut self) -> Result<Option<Message>, String> {
        if self.buf.len() < 12 {
            return Ok(None);
        }
        let total =
            u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        let headers_len =
            u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
        let prelude_crc =
            u32::from_be_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]]);
        if crc32fast::hash(&self.buf[..8]) != prelude_crc {
            return Err("event stream prelude CRC does not match".into());
        }
        if total < OVERHEAD || total > MAX_MESSAGE || headers_len > total - OVERHEAD {
            return Err(format!(
                "event stream message of {total} bytes with {headers_len} bytes of headers"
            ));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        let frame = self.buf.split_to(total).freeze();
        let message_crc = u32::from_be_bytes([
            frame[total - 4],
            frame[total - 3],
            frame[total - 2],
            frame[total - 1],
        ]);
        if crc32fast::hash(&frame[..total - 4]) != message_crc {
            return Err("event stream message CRC does not match".into());
        }
        let headers = read_headers(&frame[12..12 + headers_len])?;
        let payload = frame.slice(12 + headers_len..total - 4);
        Ok(Some(Message { headers, payload }))
    }
}

fn read_headers(mut b: &[u8]) -> Result<Vec<(String, String)>, String> {
    let short = || "event stream header cut short".to_string();
    let mut out = Vec::new();
    while b.has_remaining() {
        let n = b.get_u8() as usize;
        if b.remaining() < n + 1 {
            return Err(short());
        }
        let name = String::from_utf8_lossy(&b[..n]).into_owned();
        b.advance(n);
        let kind = b.get_u8();
        let fixed = match kind {
            0 | 1 => 0,
            2 => 1,
            3 => 2,
            4 => 4,
            5 | 8 => 8,
            9 => 16,
            6 | 7 => {
                if b.remaining() < 2 {
                    return Err(short());
                }
                let len = b.get_u16() as usize;
                if b.remaining() < len {
                    return Err(short());
                }
                if kind == 7 {
                    out.push((name, String::from_utf8_lossy(&b[..len]).into_owned()));
                }
                b.advance(len);
                continue;
            }
            other => return Err(format!("event stream header type {other} is unknown")),
        };
        if b.remaining() < fixed {
            return Err(short());
        }
        b.advance(fixed);
    }
    Ok(out)
}

/// One message with string `headers` and `payload`, framed.
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = OVERHEAD + h.len() + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_pieces_and_refuses_bad_crcs() {
        let a = encode(
            &[(":message-type", "event"), (":event-type", "messageStart")],
            br#"{"role":"assistant"}"#,
        );
        let b = encode(&[(":message-type", "event")], b"");
        let mut whole = a.to_vec();
        whole.extend_from_slice(&b);
        let mut d = Decoder::default();
        let mut got = Vec::new();
        // A byte at a time: messages span reads.
        for byte in &whole {
            d.push(&[*byte]);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].header(":event-type"), Some("messageStart"));
        assert_eq!(&got[0].payload[..], br#"{"role":"assistant"}"#);
        assert!(got[1].payload.is_empty() && !d.pending());
        let mut bad = a.to_vec();
        let last = bad.len() - 5;
        bad[last] ^= 1;
        let mut d = Decoder::default();
        d.push(&bad);
        assert!(d.next_message().unwrap_err().contains("message CRC"));
        let mut d = Decoder::default();
        d.push(b"HTTP/1.1 500 oops\r\n\r\n");
        assert!(d.next_message().is_err());
        // An empty message: 16 bytes, its prelude CRC the IEEE CRC32 of
        // the 8 length bytes (Python's zlib.crc32 gives 0x05c248eb).
        assert_eq!(
            &encode(&[], b"")[..12],
            &[0, 0, 0, 16, 0, 0, 0, 0, 0x05, 0xc2, 0x48, 0xeb]
        );
    }
}
