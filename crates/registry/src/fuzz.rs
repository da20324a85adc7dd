//! Fuzz entry point for the registry's upload handling, driven by `crates/fuzz`: the
//! bytes are a script of requests (starting uploads, sending chunks with `Content-Range`,
//! finishing them with a digest, reading blobs back with `Range`, and raw requests to any
//! path) answered by a real [`Registry`] in a temporary directory. It must never panic,
//! and the answers must agree with a model of what was uploaded, so a panic here is a
//! defect of the registry, never of the input.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::auth::{StaticTokens, TokenAuthenticator};
use crate::server::{Body, Registry};
use korvet_image::Digest;

const REPO: &str = "fuzz/app";
const TOKEN: &str = "fuzz-token";

thread_local! {
    // One runtime per fuzzing thread: building one per input would dominate the cost.
    static RUNTIME: tokio::runtime::Runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => panic!("the fuzz target's runtime could not be built: {e}"),
    };
}

/// Runs the request script in `data` against a new registry.
pub fn fuzz_upload(data: &[u8]) {
    // On tmpfs where there is one: finishing an upload fsyncs, which on a disk would
    // make this target a hundred times slower.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    let dir = match dir {
        Ok(dir) => dir,
        Err(e) => panic!("no temporary directory for the registry: {e}"),
    };
    let registry = match Registry::open(dir.path()) {
        Ok(registry) => Arc::new(registry),
        Err(e) => panic!("a registry could not be opened in an empty directory: {e}"),
    };
    RUNTIME.with(|runtime| runtime.block_on(Script::new(registry, data).run()));
}

/// An upload in progress as the client knows it.
struct Upload {
    id: String,
    data: Vec<u8>,
}

struct Script<'a> {
    registry: Arc<Registry>,
    auth: TokenAuthenticator,
    input: &'a [u8],
    uploads: Vec<Upload>,
    /// Blobs finished so far, by digest.
    blobs: HashMap<String, Vec<u8>>,
}

impl<'a> Script<'a> {
    fn new(registry: Arc<Registry>, input: &'a [u8]) -> Self {
        Script {
            registry,
            auth: TokenAuthenticator::new(Arc::new(StaticTokens::new().with(TOKEN, "fuzz"))),
            input,
            uploads: Vec::new(),
            blobs: HashMap::new(),
        }
    }

    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.input.split_first()?;
        self.input = rest;
        Some(b)
    }

    /// A length byte, then that many bytes (fewer at the end of the input).
    fn bytes(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte().unwrap_or(0));
        let (taken, rest) = self.input.split_at(n.min(self.input.len()));
        self.input = rest;
        taken
    }

    /// Text up to the next newline (or the end): unlike a length, a terminator survives
    /// mutations that insert into or cut from the text.
    fn text(&mut self) -> String {
        let end = self
            .input
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(self.input.len());
        let text = String::from_utf8_lossy(&self.input[..end]).into_owned();
        self.input = self.input.get(end + 1..).unwrap_or_default();
        text
    }

    async fn run(mut self) {
        while let Some(op) = self.byte() {
            match op % 8 {
                0 => self.start().await,
                1 => self.chunk().await,
                2 => self.finish().await,
                3 => self.status().await,
                4 => self.cancel().await,
                5 => self.monolithic().await,
                6 => self.get_blob().await,
                _ => self.raw().await,
            }
        }
    }

    /// Sends a request; `None` when the script's header values or path make no valid
    /// request, which a client could not send either.
    async fn send(&self, request: http::request::Builder, body: &[u8]) -> Option<Response<Body>> {
        let request = request.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        let request: Request<Full<Bytes>> =
            request.body(Full::new(Bytes::copy_from_slice(body))).ok()?;
        let response = self.registry.handle(request, &self.auth).await;
        assert!(
            !response.status().is_server_error(),
            "the registry failed with {}",
            response.status()
        );
        Some(response)
    }

    /// The upload a script byte names, or one that does not exist.
    fn pick(&mut self) -> Option<usize> {
        let b = usize::from(self.byte().unwrap_or(0));
        (b < self.uploads.len()).then_some(b)
    }

    fn upload_path(&self, upload: Option<usize>) -> String {
        let id = match upload {
            Some(i) => self.uploads[i].id.clone(),
            None => "00000000-0000-4000-8000-000000000000".to_string(),
        };
        format!("/v2/{REPO}/blobs/uploads/{id}")
    }

    async fn start(&mut self) {
        let Some(response) = self
            .send(Request::post(format!("/v2/{REPO}/blobs/uploads/")), &[])
            .await
        else {
            return;
        };
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let id = header_text(&response, "Docker-Upload-UUID");
        assert_eq!(header_text(&response, "Range"), "0-0");
        self.uploads.push(Upload {
            id,
            data: Vec::new(),
        });
    }

    /// PATCH with a chunk, and a `Content-Range` that is right, wrong, or the script's.
    async fn chunk(&mut self) {
        let upload = self.pick();
        let mode = self.byte().unwrap_or(0) % 4;
        let chunk = self.bytes();
        let size = upload.map_or(0, |i| self.uploads[i].data.len());
        let end = (size + chunk.len()).saturating_sub(1);
        let content_range = match mode {
            0 => None,
            1 => Some(format!("{size}-{end}")),
            2 => Some(format!("{}-{}", size + 1, end + 1)),
            _ => Some(self.text()),
        };
        let mut request = Request::patch(self.upload_path(upload));
        if let Some(range) = &content_range {
            request = request.header(header::CONTENT_RANGE, range.as_str());
        }
        let Some(response) = self.send(request, chunk).await else {
            return;
        };
        let Some(i) = upload else {
            // Unknown, or refused for its Content-Range first.
            assert!(response.status().is_client_error(), "{}", response.status());
            return;
        };
        match (mode, response.status()) {
            (0 | 1 | 3, StatusCode::ACCEPTED) => {}
            // A start other than the bytes received so far is refused.
            (2 | 3, StatusCode::RANGE_NOT_SATISFIABLE) => return,
            (_, status) => panic!("a chunk with Content-Range {content_range:?} got {status}"),
        }
        self.uploads[i].data.extend_from_slice(chunk);
        let size = self.uploads[i].data.len();
        assert_eq!(
            header_text(&response, "Range"),
            format!("0-{}", size.saturating_sub(1))
        );
    }

    /// PUT with the right digest, a wrong one or the script's, and maybe a last chunk.
    async fn finish(&mut self) {
        let upload = self.pick();
        let mode = self.byte().unwrap_or(0) % 3;
        let last = self.bytes();
        let mut whole = upload.map_or_else(Vec::new, |i| self.uploads[i].data.clone());
        whole.extend_from_slice(last);
        let digest = match mode {
            0 => Digest::of(&whole).to_string(),
            1 => Digest::of(b"something else").to_string(),
            _ => self.text(),
        };
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("digest", &digest)
            .finish();
        let path = format!("{}?{query}", self.upload_path(upload));
        let Some(response) = self.send(Request::put(path), last).await else {
            return;
        };
        let Some(i) = upload else {
            assert!(response.status().is_client_error(), "{}", response.status());
            return;
        };
        let right = digest == Digest::of(&whole).to_string();
        match response.status() {
            StatusCode::CREATED => {
                assert!(right, "a wrong digest {digest} was accepted");
                assert_eq!(header_text(&response, "Docker-Content-Digest"), digest);
                self.uploads.remove(i);
                self.blobs.insert(digest, whole);
            }
            StatusCode::BAD_REQUEST if !right => {
                // A digest that is not one ends nothing; a wrong one ends the upload.
                if digest.parse::<Digest>().is_ok() {
                    self.uploads.remove(i);
                }
            }
            status => panic!("finishing with {digest} (right: {right}) got {status}"),
        }
    }

    async fn status(&mut self) {
        let upload = self.pick();
        let Some(response) = self.send(Request::get(self.upload_path(upload)), &[]).await else {
            return;
        };
        match upload {
            Some(i) => {
                assert_eq!(response.status(), StatusCode::NO_CONTENT);
                let size = self.uploads[i].data.len();
                assert_eq!(
                    header_text(&response, "Range"),
                    format!("0-{}", size.saturating_sub(1))
                );
            }
            None => assert_eq!(response.status(), StatusCode::NOT_FOUND),
        }
    }

    async fn cancel(&mut self) {
        let upload = self.pick();
        let Some(response) = self
            .send(Request::delete(self.upload_path(upload)), &[])
            .await
        else {
            return;
        };
        match upload {
            Some(i) => {
                assert_eq!(response.status(), StatusCode::NO_CONTENT);
                self.uploads.remove(i);
            }
            None => assert_eq!(response.status(), StatusCode::NOT_FOUND),
        }
    }

    /// POST with `?digest=`: the whole blob in one request.
    async fn monolithic(&mut self) {
        let right = self.byte().unwrap_or(0).is_multiple_of(2);
        let data = self.bytes();
        let digest = if right {
            Digest::of(data)
        } else {
            Digest::of(b"something else")
        };
        let path = format!("/v2/{REPO}/blobs/uploads/?digest={digest}");
        let Some(response) = self.send(Request::post(path), data).await else {
            return;
        };
        if right || Digest::of(data) == digest {
            assert_eq!(response.status(), StatusCode::CREATED);
            self.blobs.insert(digest.to_string(), data.to_vec());
        } else {
            assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        }
    }

    /// GET a finished blob, whole or with the script's `Range`.
    async fn get_blob(&mut self) {
        let pick = usize::from(self.byte().unwrap_or(0));
        let range = self.text();
        let mut digests: Vec<&String> = self.blobs.keys().collect();
        digests.sort();
        let Some(&digest) = digests.get(pick % digests.len().max(1)) else {
            return;
        };
        let data = &self.blobs[digest];
        let mut request = Request::get(format!("/v2/{REPO}/blobs/{digest}"));
        if !range.is_empty() {
            request = request.header(header::RANGE, range.as_str());
        }
        let Some(response) = self.send(request, &[]).await else {
            return;
        };
        let status = response.status();
        let content_range = header_text(&response, "Content-Range");
        let body = match response.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => panic!("reading blob {digest}: {e}"),
        };
        match status {
            StatusCode::OK => assert_eq!(&body[..], &data[..]),
            StatusCode::PARTIAL_CONTENT => {
                let expected = format!("bytes {{}}-{{}}/{}", data.len());
                let (start, end) = content_range
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split_once('/'))
                    .and_then(|(r, _)| r.split_once('-'))
                    .and_then(|(s, e)| Some((s.parse::<usize>().ok()?, e.parse::<usize>().ok()?)))
                    .unwrap_or_else(|| panic!("Content-Range {content_range:?}, not {expected}"));
                assert!(
                    start <= end && end < data.len(),
                    "{content_range} of {}",
                    data.len()
                );
                assert_eq!(&body[..], &data[start..=end], "Range {range:?}");
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                assert_eq!(content_range, format!("bytes */{}", data.len()));
            }
            other => panic!("GET of blob {digest} with Range {range:?} got {other}"),
        }
    }

    /// Any method on any path, with the script's `Range` and `Content-Range`.
    async fn raw(&mut self) {
        let method = match self.byte().unwrap_or(0) % 6 {
            0 => Method::GET,
            1 => Method::HEAD,
            2 => Method::POST,
            3 => Method::PUT,
            4 => Method::PATCH,
            _ => Method::DELETE,
        };
        let path = self.text();
        let range = self.text();
        let body = self.bytes();
        let request = Request::builder()
            .method(method)
            .uri(format!("/v2/{path}"))
            .header(header::RANGE, range.as_str())
            .header(header::CONTENT_RANGE, range.as_str());
        // It cannot touch the script's uploads: their ids are random.
        let _ = self.send(request, body).await;
    }
}

fn header_text(response: &Response<Body>, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}
