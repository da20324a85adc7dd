//! SPDY/3.1 framing, as containerd's CRI streaming server (Go's `moby/spdystream`)
//! speaks it: control frames (SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY,
//! HEADERS, WINDOW_UPDATE) and data frames. Header blocks are zlib streams with the SPDY/3
//! dictionary, one compression context per direction of a connection.
//!
//! spdystream does no flow control (it neither sends nor honours WINDOW_UPDATE), so
//! neither does this module: windows are ignored in both directions.

use bytes::{Buf, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

const VERSION: u16 = 3;
const FLAG_FIN: u8 = 0x01;
/// Header blocks larger than this are refused (spdystream's limit is similar).
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Frames larger than this are refused: SPDY lengths are 24 bits, data frames far less.
pub(crate) const MAX_FRAME: usize = (1 << 24) - 1;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SpdyError {
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    #[error("SPDY header compression: {0}")]
    Compression(String),
}

pub(crate) type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    SynStream {
        stream_id: u32,
        associated: u32,
        priority: u8,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    /// (flags, id, value) entries.
    Settings(Vec<(u8, u32, u32)>),
    Ping(u32),
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    /// A control frame of a type this module does not know (skipped, as the spec asks).
    Unknown(u16),
}

/// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1):
/// length-prefixed common header names and values, then a run of common text.
pub(crate) fn dictionary() -> &'static [u8] {
    static DICT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
            "accept-encoding", "accept-language", "accept-ranges", "age", "allow",
            "authorization", "cache-control", "connection", "content-base", "content-encoding",
            "content-language", "content-length", "content-location", "content-md5",
            "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host",
            "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since",
            "last-modified", "location", "max-forwards", "pragma", "proxy-authenticate",
            "proxy-authorization", "range", "referer", "retry-after", "server", "te", "trailer",
            "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
            "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1",
            "url", "public", "set-cookie", "keep-alive", "origin",
        ];
        const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
        let mut dict = Vec::with_capacity(1423);
        for word in WORDS {
            dict.extend_from_slice(&(word.len() as u32).to_be_bytes());
            dict.extend_from_slice(word.as_bytes());
        }
        dict.extend_from_slice(TAIL.as_bytes());
        dict
    })
}

/// Encodes frames of one direction of a connection (owns its compression context).
pub(crate) struct Encoder {
    compress: Compress,
    started: bool,
}

impl Default for Encoder {
    fn default() -> Self {
        Self {
            compress: Compress::new(Compression::default(), true),
            started: false,
        }
    }
}

impl Encoder {
    fn header_block(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            // SPDY header names are lower case.
            let name = name.to_ascii_lowercase();
            raw.extend_from_slice(&(name.len() as u32).to_be_bytes());
            raw.extend_from_slice(name.as_bytes());
            raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
            raw.extend_from_slice(value.as_bytes());
        }
        let error = |e: &dyn std::fmt::Display| SpdyError::Compression(e.to_string());
        if !self.started {
            self.compress
                .set_dictionary(dictionary())
                .map_err(|e| error(&e))?;
            self.started = true;
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let start = self.compress.total_in();
        loop {
            let consumed = (self.compress.total_in() - start) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(raw.len() + 64);
            }
            self.compress
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| error(&e))?;
            // Done when all input is in and the flush did not fill the buffer.
            if (self.compress.total_in() - start) as usize == raw.len()
                && out.len() < out.capacity()
            {
                return Ok(out);
            }
        }
    }

    pub(crate) fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let control = |out: &mut Vec<u8>, kind: u16, flags: u8, body: &[u8]| {
            out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.push(flags);
            out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(body);
        };
        let fin_flag = |fin: bool| if fin { FLAG_FIN } else { 0 };
        match frame {
            Frame::SynStream {
                stream_id,
                associated,
                priority,
                fin,
                headers,
            } => {
                let mut body = Vec::new();
                body.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                body.extend_from_slice(&(associated & 0x7fff_ffff).to_be_bytes());
                body.push((priority & 0x07) << 5);
                body.push(0); // credential slot
                body.extend_from_slice(&self.header_block(headers)?);
                control(out, SYN_STREAM, fin_flag(*fin), &body);
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
            | Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    SYN_REPLY
                } else {
                    HEADERS
                };
                let mut body = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&self.header_block(headers)?);
                control(out, kind, fin_flag(*fin), &body);
            }
            Frame::RstStream { stream_id, status } => {
                let mut body = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(out, RST_STREAM, 0, &body);
            }
            Frame::Settings(entries) => {
                let mut body = (entries.len() as u32).to_be_bytes().to_vec();
                for (flags, id, value) in entries {
                    body.push(*flags);
                    body.extend_from_slice(&id.to_be_bytes()[1..]);
                    body.extend_from_slice(&value.to_be_bytes());
                }
                control(out, SETTINGS, 0, &body);
            }
            Frame::Ping(id) => control(out, PING, 0, &id.to_be_bytes()),
            Frame::GoAway { last_good, status } => {
                let mut body = (last_good & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(out, GOAWAY, 0, &body);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut body = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
                control(out, WINDOW_UPDATE, 0, &body);
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if data.len() > MAX_FRAME {
                    return Err(SpdyError::Protocol(format!(
                        "data frame of {} bytes is too large",
                        data.len()
                    )));
                }
                out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                out.push(fin_flag(*fin));
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
            }
            Frame::Unknown(kind) => control(out, *kind, 0, &[]),
        }
        Ok(())
    }
}

/// Decodes frames of one direction of a connection (owns its decompression context).
pub(crate) struct Decoder {
    decompress: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            decompress: Decompress::new(true),
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Decoder {
    fn inflate(&mut self, block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let error = |e: &dyn std::fmt::Display| SpdyError::Compression(e.to_string());
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let start = self.decompress.total_in();
        loop {
            let consumed = (self.decompress.total_in() - start) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before_out = out.len();
            match self.decompress.decompress_vec(
                &block[consumed..],
                &mut out,
                FlushDecompress::Sync,
            ) {
                Ok(Status::StreamEnd) => return Ok(out),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.decompress
                        .set_dictionary(dictionary())
                        .map_err(|e| error(&e))?;
                    continue;
                }
                Err(e) => return Err(error(&e)),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::Protocol("header block too large".into()));
            }
            let all_in = (self.decompress.total_in() - start) as usize == block.len();
            if all_in && out.len() < out.capacity() {
                return Ok(out);
            }
            if all_in && out.len() == before_out {
                return Ok(out);
            }
        }
    }

    fn header_block(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let raw = self.inflate(block)?;
        let bad = || SpdyError::Protocol("truncated header block".into());
        let mut rest = raw.as_slice();
        let mut take = |n: usize| -> Result<&[u8], SpdyError> {
            if rest.len() < n {
                return Err(bad());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let count = be32(take(4)?) as usize;
        let mut headers = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let len = be32(take(4)?) as usize;
            let name = String::from_utf8_lossy(take(len)?).into_owned();
            let len = be32(take(4)?) as usize;
            let value = take(len)?;
            // Several values of one name are joined by NUL.
            for v in value.split(|b| *b == 0) {
                headers.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
            }
        }
        Ok(headers)
    }

    /// Takes one whole frame off the front of `buf`, if it holds one.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let flags = buf[4];
        let length = (u32::from_be_bytes([0, buf[5], buf[6], buf[7]])) as usize;
        if buf.len() < 8 + length {
            return Ok(None);
        }
        let head = buf.split_to(8);
        let body = buf.split_to(length).freeze();
        let fin = flags & FLAG_FIN != 0;
        if head[0] & 0x80 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: be32(&head[0..4]) & 0x7fff_ffff,
                fin,
                data: body,
            }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        if version != VERSION {
            return Err(SpdyError::Protocol(format!(
                "unsupported version {version}"
            )));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let short = |n: usize| {
            if body.len() < n {
                Err(SpdyError::Protocol(format!(
                    "control frame {kind} of {} bytes is too short",
                    body.len()
                )))
            } else {
                Ok(())
            }
        };
        let id = |b: &[u8]| be32(b) & 0x7fff_ffff;
        let frame = match kind {
            SYN_STREAM => {
                short(10)?;
                Frame::SynStream {
                    stream_id: id(&body[0..4]),
                    associated: id(&body[4..8]),
                    priority: body[8] >> 5,
                    fin,
                    headers: self.header_block(&body[10..])?,
                }
            }
            SYN_REPLY | HEADERS => {
                short(4)?;
                let stream_id = id(&body[0..4]);
                let headers = self.header_block(&body[4..])?;
                if kind == SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            RST_STREAM => {
                short(8)?;
                Frame::RstStream {
                    stream_id: id(&body[0..4]),
                    status: be32(&body[4..8]),
                }
            }
            SETTINGS => {
                short(4)?;
                let count = be32(&body[0..4]) as usize;
                let mut entries = Vec::new();
                let mut rest = body.slice(4..);
                for _ in 0..count {
                    if rest.len() < 8 {
                        break;
                    }
                    let flags = rest[0];
                    let setting = u32::from_be_bytes([0, rest[1], rest[2], rest[3]]);
                    let value = be32(&rest[4..8]);
                    entries.push((flags, setting, value));
                    rest.advance(8);
                }
                Frame::Settings(entries)
            }
            PING => {
                short(4)?;
                Frame::Ping(be32(&body[0..4]))
            }
            GOAWAY => {
                short(4)?;
                Frame::GoAway {
                    last_good: id(&body[0..4]),
                    status: if body.len() >= 8 {
                        be32(&body[4..8])
                    } else {
                        0
                    },
                }
            }
            WINDOW_UPDATE => {
                short(8)?;
                Frame::WindowUpdate {
                    stream_id: id(&body[0..4]),
                    delta: id(&body[4..8]),
                }
            }
            other => Frame::Unknown(other),
        };
        Ok(Some(frame))
    }
}

/// The value of header `name` (case-insensitive).
#[cfg(test)]
pub(crate) fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frames: &[Frame]) -> Vec<Frame> {
        let mut encoder = Encoder::default();
        let mut wire = Vec::new();
        for f in frames {
            encoder.encode(f, &mut wire).unwrap();
        }
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        // Fed a byte at a time: frames split anywhere must still decode.
        for b in wire {
            buf.extend_from_slice(&[b]);
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                out.push(frame);
            }
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        let dict = dictionary();
        assert_eq!(dict.len(), 1423);
        assert_eq!(&dict[..11], b"\0\0\0\x07options");
        assert!(dict.ends_with(b",*,enq=0."));
    }

    #[test]
    fn frames_survive_a_roundtrip_with_one_compression_context() {
        let headers = |t: &str| vec![("streamtype".to_string(), t.to_string())];
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated: 0,
                priority: 0,
                fin: false,
                headers: headers("error"),
            },
            Frame::SynStream {
                stream_id: 3,
                associated: 0,
                priority: 0,
                fin: false,
                headers: headers("stdin"),
            },
            Frame::SynReply {
                stream_id: 3,
                fin: false,
                headers: vec![],
            },
            Frame::Data {
                stream_id: 3,
                fin: true,
                data: Bytes::from_static(b"hello"),
            },
            Frame::RstStream {
                stream_id: 5,
                status: 5,
            },
            Frame::Settings(vec![(0, 7, 65536)]),
            Frame::Ping(1),
            Frame::WindowUpdate {
                stream_id: 3,
                delta: 1000,
            },
            Frame::Headers {
                stream_id: 1,
                fin: true,
                headers: vec![("a".into(), "b".into())],
            },
            Frame::GoAway {
                last_good: 3,
                status: 0,
            },
        ];
        assert_eq!(roundtrip(&frames), frames);
    }

    #[test]
    fn header_names_are_lower_case_and_nul_separates_values() {
        let mut encoder = Encoder::default();
        let mut wire = Vec::new();
        let frame = Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: vec![("StreamType".into(), "a\0b".into())],
        };
        encoder.encode(&frame, &mut wire).unwrap();
        let mut buf = BytesMut::from(&wire[..]);
        let decoded = Decoder::default().decode(&mut buf).unwrap().unwrap();
        let Frame::SynReply { headers, .. } = decoded else {
            panic!("not a reply: {decoded:?}")
        };
        assert_eq!(
            headers,
            vec![
                ("streamtype".to_string(), "a".to_string()),
                ("streamtype".to_string(), "b".to_string())
            ]
        );
        assert_eq!(header(&headers, "streamType"), Some("a"));
    }

    #[test]
    fn data_frame_layout_is_as_the_spec() {
        let mut wire = Vec::new();
        Encoder::default()
            .encode(
                &Frame::Data {
                    stream_id: 5,
                    fin: true,
                    data: Bytes::from_static(b"ab"),
                },
                &mut wire,
            )
            .unwrap();
        assert_eq!(wire, [0, 0, 0, 5, 1, 0, 0, 2, b'a', b'b']);
        let mut ping = Vec::new();
        Encoder::default()
            .encode(&Frame::Ping(7), &mut ping)
            .unwrap();
        assert_eq!(ping, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7]);
    }

    /// Two SYN_STREAMs whose header blocks Python's zlib (not this module) compressed
    /// with the dictionary, in one context: an independent check of the decoder.
    #[test]
    fn decodes_header_blocks_of_another_zlib() {
        #[rustfmt::skip]
        let wire: &[u8] = &[
            0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x28, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x02, 0xa6, 0x23, 0x46, 0x70, 0x3a, 0x2b, 0x29,
            0x4a, 0x4d, 0xcc, 0x85, 0x16, 0x25, 0xac, 0xa9, 0xa0, 0x80, 0x06, 0x00, 0x00, 0x00, 0xff, 0xff,
            0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x24, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x02, 0x65, 0x1c, 0x0c, 0x29, 0x60, 0x62, 0x4e, 0xc9, 0x07, 0x97, 0xd1, 0xc0, 0x22,
            0xbb, 0x08, 0x44, 0x33, 0x59, 0x18, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff,
        ];
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(wire);
        let first = decoder.decode(&mut buf).unwrap().unwrap();
        let second = decoder.decode(&mut buf).unwrap().unwrap();
        let headers = |f: Frame| match f {
            Frame::SynStream { headers, .. } => headers,
            other => panic!("not a SYN_STREAM: {other:?}"),
        };
        assert_eq!(
            headers(first),
            [("streamtype".to_string(), "error".to_string())]
        );
        let second = headers(second);
        assert_eq!(header(&second, "streamType"), Some("stdout"));
        assert_eq!(header(&second, "port"), Some("80"));
    }

    #[test]
    fn unknown_versions_are_refused() {
        let mut buf = BytesMut::from(&[0x80u8, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(Decoder::default().decode(&mut buf).is_err());
    }
}
