//! Request bodies in (JSON or YAML, bounded) and replies out (JSON, or a stream of watch
//! events).

use std::convert::Infallible;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};

/// Largest request body accepted (upstream's limit is 3 MiB).
pub(crate) const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

pub(crate) type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// A reply, before it becomes an HTTP response.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: ReplyBody,
}

pub(crate) enum ReplyBody {
    Json(Value),
    Stream(BoxStream<'static, Bytes>),
    Raw(&'static str, Bytes),
    /// A stream of bytes of the given content type (`pods/log`).
    RawStream(&'static str, BoxStream<'static, Bytes>),
}

impl Reply {
    pub(crate) fn json(status: StatusCode, value: Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: ReplyBody::Json(value),
        }
    }

    pub(crate) fn stream(stream: BoxStream<'static, Bytes>) -> Self {
        Self {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: ReplyBody::Stream(stream),
        }
    }

    pub(crate) fn text(status: StatusCode, text: &'static str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: ReplyBody::Raw(
                "text/plain; charset=utf-8",
                Bytes::from_static(text.as_bytes()),
            ),
        }
    }

    pub(crate) fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Warnings reach kubectl through `Warning: 299 - "..."` headers.
    pub(crate) fn with_warnings(mut self, warnings: Vec<String>) -> Self {
        for w in warnings {
            let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
            self.headers
                .push(("Warning".into(), format!("299 - \"{escaped}\"")));
        }
        self
    }

    pub(crate) fn into_response(self) -> http::Response<Body> {
        let (content_type, body): (&'static str, Body) = match self.body {
            ReplyBody::Json(value) => {
                let bytes = serde_json::to_vec(&value).unwrap_or_default();
                (
                    "application/json",
                    Full::new(Bytes::from(bytes)).boxed_unsync(),
                )
            }
            ReplyBody::Stream(stream) => {
                let frames = stream.map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
                ("application/json", StreamBody::new(frames).boxed_unsync())
            }
            ReplyBody::RawStream(content_type, stream) => {
                let frames = stream.map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
                (content_type, StreamBody::new(frames).boxed_unsync())
            }
            ReplyBody::Raw(content_type, bytes) => (content_type, Full::new(bytes).boxed_unsync()),
        };
        let mut response = http::Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        // A 101 (pods/exec and friends) has no body to type.
        if self.status != StatusCode::SWITCHING_PROTOCOLS {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            );
        }
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::try_from(name.as_str()),
                HeaderValue::try_from(value.as_str()),
            ) {
                headers.append(name, value);
            }
        }
        response
    }
}

pub(crate) fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim())
        .unwrap_or("application/json")
}

pub(crate) fn accepts_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|accept| {
            accept.split(',').any(|part| {
                let part = part.replace(' ', "");
                part.starts_with("application/json")
                    && part.contains("as=Table")
                    && part.contains("g=meta.k8s.io")
            })
        })
}

/// Decodes an object from JSON or YAML, as a JSON object.
pub(crate) fn decode_object(headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    let value = decode_value(content_type(headers), body)?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a single object",
        ));
    }
    Ok(value)
}

pub(crate) fn decode_value(content_type: &str, body: &[u8]) -> ApiResult<Value> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    match content_type {
        "application/yaml" | "application/apply-patch+yaml" => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("the YAML body is not valid UTF-8"))?;
            serde_saphyr::from_str::<Value>(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
        }
        "application/json"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/json-patch+json"
        | "" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}"))),
        // kubectl's typed clients send protobuf; the envelope names the kind.
        crate::protobuf::CONTENT_TYPE => crate::protobuf::decode(body, "", "", "")
            .map_err(|e| ApiError::bad_request(format!("error decoding protobuf: {e}"))),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

/// Reads a request body, refusing more than [`MAX_BODY_BYTES`]. An oversize body is
/// still read to its end (up to a bound) so that the client receives the 413 instead of a
/// connection reset in the middle of sending.
pub(crate) async fn read_limited(mut body: hyper::body::Incoming) -> ApiResult<Bytes> {
    const DRAIN_LIMIT: usize = 8 * MAX_BODY_BYTES;
    let mut collected = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= MAX_BODY_BYTES {
                collected.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(ApiError::too_large(MAX_BODY_BYTES));
    }
    Ok(collected.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_accept_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"),
        );
        assert!(accepts_table(&headers));
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        assert!(!accepts_table(&headers));
    }

    #[test]
    fn decodes_json_and_yaml_and_refuses_others() {
        assert_eq!(
            decode_value("application/json", b"{\"a\":1}").unwrap()["a"],
            1
        );
        assert_eq!(
            decode_value("application/yaml", b"a: 1\nb: [x]\n").unwrap()["b"][0],
            "x"
        );
        assert_eq!(
            decode_value("application/json", b"{").unwrap_err().code,
            400
        );
        assert_eq!(decode_value("text/html", b"{}").unwrap_err().code, 415);
    }
}
