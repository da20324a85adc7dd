//! The OCI distribution API, request by request, against a registry served over HTTPS.

mod common;

use bytes::Bytes;
use http::{Method, StatusCode};
use korvet_registry::client::Client;
use korvet_registry::Digest;
use serde_json::json;

fn code(reply: &korvet_registry::client::Reply) -> String {
    reply.json()["errors"][0]["code"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn push_blob(c: &Client, repo: &str, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    let r = c
        .send(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            &[],
            Bytes::copy_from_slice(data),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    d
}

/// Pushes a config and a layer and returns an OCI image manifest over them.
async fn image_manifest(c: &Client, repo: &str, seed: &str) -> Vec<u8> {
    let config = push_blob(c, repo, format!("{{\"seed\":\"{seed}\"}}").as_bytes()).await;
    let layer = push_blob(c, repo, format!("layer {seed}").as_bytes()).await;
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 10},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer.to_string(), "size": 7}],
    }))
    .unwrap()
}

async fn put_manifest(
    c: &Client,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> korvet_registry::client::Reply {
    c.send(
        Method::PUT,
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("content-type", media_type)],
        Bytes::copy_from_slice(body),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn base_endpoint_health_and_metrics() {
    let s = common::serve().await;
    let r = s
        .anonymous
        .send(Method::GET, "/v2/", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    let r = s
        .client
        .send(Method::GET, "/v2/", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.header("www-authenticate"), None);
    let r = s
        .anonymous
        .send(Method::GET, "/healthz", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let r = s
        .anonymous
        .send(Method::GET, "/metrics", &[], Bytes::new())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains("registry_http_requests_total{method=\"GET\",status=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("registry_sent_bytes_total"), "{text}");
}

#[tokio::test]
async fn monolithic_upload_then_head_get_and_range() {
    let s = common::serve().await;
    let data = b"0123456789abcdef";
    let d = push_blob(&s.client, "test/mono", data).await;
    let path = format!("/v2/test/mono/blobs/{d}");
    let r = s
        .anonymous
        .send(Method::HEAD, &path, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), Some("16"));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    let r = s
        .anonymous
        .send(Method::GET, &path, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(&r.body[..], data);
    let r = s
        .anonymous
        .send(Method::GET, &path, &[("range", "bytes=4-7")], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], b"4567");
    assert_eq!(r.header("content-range"), Some("bytes 4-7/16"));
    // Another repository has no link to it.
    let r = s
        .anonymous
        .send(
            Method::HEAD,
            &format!("/v2/test/other/blobs/{d}"),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Delete unlinks it from the repository.
    let r = s
        .client
        .send(Method::DELETE, &path, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = s
        .anonymous
        .send(Method::GET, &path, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(code(&r), "BLOB_UNKNOWN");
}

#[tokio::test]
async fn chunked_upload_and_out_of_order_chunk() {
    let s = common::serve().await;
    let c = &s.client;
    let r = c
        .send(
            Method::POST,
            "/v2/test/chunked/blobs/uploads/",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let location = r.header("location").unwrap().to_string();
    assert!(r.header("docker-upload-uuid").is_some());
    let r = c
        .send(
            Method::PATCH,
            &location,
            &[("content-range", "0-4")],
            "hello",
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), Some("0-4"));
    let r = c
        .send(
            Method::PATCH,
            &location,
            &[("content-range", "10-14")],
            "later",
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    let r = c
        .send(Method::GET, &location, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("range"), Some("0-4"));
    let r = c
        .send(
            Method::PATCH,
            &location,
            &[("content-range", "5-10")],
            " world",
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // A chunk without Content-Range (streamed) appends too.
    let r = c.send(Method::PATCH, &location, &[], "!").await.unwrap();
    assert_eq!(r.header("range"), Some("0-11"));
    let whole = b"hello world!?";
    let d = Digest::of(whole);
    let r = c
        .send(Method::PUT, &format!("{location}?digest={d}"), &[], "?")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/test/chunked/blobs/{d}").as_str())
    );
    let r = c
        .send(
            Method::GET,
            &format!("/v2/test/chunked/blobs/{d}"),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(&r.body[..], whole);
    // The session is gone once finished.
    let r = c
        .send(Method::GET, &location, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(code(&r), "BLOB_UPLOAD_UNKNOWN");

    // Cancel.
    let r = c
        .send(
            Method::POST,
            "/v2/test/chunked/blobs/uploads/",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    let location = r.header("location").unwrap().to_string();
    let r = c
        .send(Method::DELETE, &location, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = c.send(Method::PATCH, &location, &[], "x").await.unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn upload_survives_a_restart_of_the_registry() {
    let s = common::serve().await;
    let r = s
        .client
        .send(
            Method::POST,
            "/v2/test/restart/blobs/uploads/",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    let location = r.header("location").unwrap().to_string();
    s.client
        .send(Method::PATCH, &location, &[], "first half,")
        .await
        .unwrap();
    let data_dir = s.dir.path().join("data");
    // A second registry on the same directory has no hash state: it re-reads the data.
    let again = std::sync::Arc::new(korvet_registry::Registry::open(&data_dir).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let auth = std::sync::Arc::new(korvet_registry::TokenAuthenticator::new(
        std::sync::Arc::new(korvet_registry::StaticTokens::new().with(common::TOKEN, "alice")),
    ));
    let handle = again.serve(listener, None, auth).unwrap();
    let c = Client::new(
        &format!("http://{}", handle.local_addr()),
        None,
        Some(common::TOKEN),
    )
    .unwrap();
    let d = Digest::of(b"first half,second half");
    let r = c
        .send(
            Method::PUT,
            &format!("{location}?digest={d}"),
            &[],
            "second half",
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

#[tokio::test]
async fn digest_mismatch_is_refused_and_nothing_stored() {
    let s = common::serve().await;
    let wrong = Digest::of(b"something else");
    let r = s
        .client
        .send(
            Method::POST,
            &format!("/v2/test/bad/blobs/uploads/?digest={wrong}"),
            &[],
            "actual content",
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&r), "DIGEST_INVALID");
    let r = s
        .client
        .send(
            Method::HEAD,
            &format!("/v2/test/bad/blobs/{wrong}"),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let actual = Digest::of(b"actual content");
    assert!(!s.registry.storage().blob_path(&actual).exists());
    // No upload left behind.
    let uploads = std::fs::read_dir(s.dir.path().join("data/uploads"))
        .unwrap()
        .count();
    assert_eq!(uploads, 0);
    let r = s
        .client
        .send(
            Method::POST,
            "/v2/test/bad/blobs/uploads/?digest=sha256:xyz",
            &[],
            "x",
        )
        .await
        .unwrap();
    assert_eq!(code(&r), "DIGEST_INVALID");
}

#[tokio::test]
async fn cross_repository_mount() {
    let s = common::serve().await;
    let d = push_blob(&s.client, "test/source", b"shared layer").await;
    let r = s
        .client
        .send(
            Method::POST,
            &format!("/v2/test/target/blobs/uploads/?mount={d}&from=test/source"),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    let r = s
        .anonymous
        .send(
            Method::GET,
            &format!("/v2/test/target/blobs/{d}"),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(&r.body[..], b"shared layer");
    // Unknown source: an upload session starts instead.
    let missing = Digest::of(b"nowhere");
    let r = s
        .client
        .send(
            Method::POST,
            &format!("/v2/test/target/blobs/uploads/?mount={missing}&from=test/source"),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(r.header("location").unwrap().contains("/blobs/uploads/"));
}

#[tokio::test]
async fn manifest_with_missing_blob_is_refused() {
    let s = common::serve().await;
    let config = push_blob(&s.client, "test/m", b"{}").await;
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": Digest::of(b"never pushed").to_string(), "size": 12}],
    }))
    .unwrap();
    let r = put_manifest(
        &s.client,
        "test/m",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        &body,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&r), "MANIFEST_BLOB_UNKNOWN");
    let r = s
        .client
        .send(Method::GET, "/v2/test/m/manifests/v1", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(code(&r), "MANIFEST_UNKNOWN");
    let r = put_manifest(
        &s.client,
        "test/m",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        b"not json",
    )
    .await;
    assert_eq!(code(&r), "MANIFEST_INVALID");
}

#[tokio::test]
async fn manifests_indexes_and_docker_types() {
    let s = common::serve().await;
    let c = &s.client;
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let body = image_manifest(c, "test/idx", "a").await;
    let r = put_manifest(c, "test/idx", "v1", oci, &body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let digest = Digest::of(&body);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    for reference in ["v1".to_string(), digest.to_string()] {
        let r = s
            .anonymous
            .send(
                Method::GET,
                &format!("/v2/test/idx/manifests/{reference}"),
                &[],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-type"), Some(oci));
        assert_eq!(&r.body[..], &body[..]);
        let r = s
            .anonymous
            .send(
                Method::HEAD,
                &format!("/v2/test/idx/manifests/{reference}"),
                &[],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(
            r.header("content-length"),
            Some(body.len().to_string().as_str())
        );
    }
    // A digest reference must match the content.
    let r = put_manifest(c, "test/idx", &Digest::of(b"other").to_string(), oci, &body).await;
    assert_eq!(code(&r), "DIGEST_INVALID");

    // Docker schema 2 keeps its media type.
    let docker = "application/vnd.docker.distribution.manifest.v2+json";
    let mut v: serde_json::Value =
        serde_json::from_slice(&image_manifest(c, "test/idx", "b").await).unwrap();
    v["mediaType"] = json!(docker);
    let docker_body = serde_json::to_vec(&v).unwrap();
    let r = put_manifest(c, "test/idx", "docker", docker, &docker_body).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = c
        .send(
            Method::GET,
            "/v2/test/idx/manifests/docker",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.header("content-type"), Some(docker));

    // An index over both; one over an unknown manifest is refused.
    let index_type = "application/vnd.oci.image.index.v1+json";
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": index_type,
        "manifests": [
            {"mediaType": oci, "digest": digest.to_string(), "size": body.len(), "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": docker, "digest": Digest::of(&docker_body).to_string(), "size": docker_body.len()},
        ],
    }))
    .unwrap();
    let r = put_manifest(c, "test/idx", "multi", index_type, &index).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = c
        .send(
            Method::GET,
            "/v2/test/idx/manifests/multi",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.header("content-type"), Some(index_type));
    let bad_index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": index_type,
        "manifests": [{"mediaType": oci, "digest": Digest::of(b"ghost").to_string(), "size": 5}],
    }))
    .unwrap();
    let r = put_manifest(c, "test/idx", "bad", index_type, &bad_index).await;
    assert_eq!(code(&r), "MANIFEST_BLOB_UNKNOWN");

    // Deleting by digest removes the tags pointing to it.
    let r = c
        .send(
            Method::DELETE,
            &format!("/v2/test/idx/manifests/{digest}"),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = c
        .send(Method::GET, "/v2/test/idx/manifests/v1", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = c
        .send(
            Method::DELETE,
            "/v2/test/idx/manifests/docker",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let tags = c.tags("test/idx").await.unwrap();
    assert_eq!(tags, vec!["multi".to_string()]);
}

#[tokio::test]
async fn tags_pagination_and_catalog() {
    let s = common::serve().await;
    let c = &s.client;
    let body = image_manifest(c, "library/busybox", "x").await;
    for tag in ["a", "b", "c", "d", "e"] {
        let r = put_manifest(
            c,
            "library/busybox",
            tag,
            "application/vnd.oci.image.manifest.v1+json",
            &body,
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let r = s
        .anonymous
        .send(
            Method::GET,
            "/v2/library/busybox/tags/list?n=2",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        r.json(),
        json!({"name": "library/busybox", "tags": ["a", "b"]})
    );
    assert_eq!(
        r.header("link"),
        Some("</v2/library/busybox/tags/list?n=2&last=b>; rel=\"next\"")
    );
    let r = s
        .anonymous
        .send(
            Method::GET,
            "/v2/library/busybox/tags/list?n=2&last=b",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.json()["tags"], json!(["c", "d"]));
    let r = s
        .anonymous
        .send(
            Method::GET,
            "/v2/library/busybox/tags/list?n=2&last=d",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.json()["tags"], json!(["e"]));
    assert_eq!(r.header("link"), None);
    assert_eq!(s.anonymous.tags("library/busybox").await.unwrap().len(), 5);
    let r = s
        .anonymous
        .send(
            Method::GET,
            "/v2/library/nothing/tags/list",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(code(&r), "NAME_UNKNOWN");

    push_blob(c, "zeta", b"z").await;
    push_blob(c, "alpha/beta/gamma", b"g").await;
    let r = s
        .anonymous
        .send(Method::GET, "/v2/_catalog?n=2", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(
        r.json()["repositories"],
        json!(["alpha/beta/gamma", "library/busybox"])
    );
    assert!(r.header("link").is_some());
    assert_eq!(
        s.anonymous.catalog().await.unwrap(),
        vec!["alpha/beta/gamma", "library/busybox", "zeta"]
    );
    let r = s
        .anonymous
        .send(Method::GET, "/v2/Bad_Name/tags/list", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(code(&r), "NAME_INVALID");
}

#[tokio::test]
async fn anonymous_push_is_unauthorized() {
    let s = common::serve().await;
    let r = s
        .anonymous
        .send(
            Method::POST,
            "/v2/test/anon/blobs/uploads/",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"korvet\""));
    assert_eq!(code(&r), "UNAUTHORIZED");
    let r = s
        .anonymous
        .send(Method::PUT, "/v2/test/anon/manifests/v1", &[], "{}")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let wrong = s
        .client
        .with_authorization(Some("Bearer not-the-token".into()));
    let r = wrong
        .send(Method::GET, "/v2/", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Basic with any user name and the token as password works.
    use base64::Engine;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("whoever:{}", common::TOKEN));
    let basic = s.client.with_authorization(Some(format!("Basic {basic}")));
    push_blob(&basic, "test/anon", b"with basic").await;
}

#[tokio::test]
async fn private_repository_needs_a_user_to_pull() {
    let s = common::serve().await;
    let body = image_manifest(&s.client, "team/secret", "s").await;
    put_manifest(
        &s.client,
        "team/secret",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        &body,
    )
    .await;
    push_blob(&s.client, "team/open", b"open").await;
    s.registry.set_private("team/secret", true).await.unwrap();
    let r = s
        .anonymous
        .send(
            Method::GET,
            "/v2/team/secret/manifests/v1",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = s
        .anonymous
        .send(Method::GET, "/v2/team/secret/tags/list", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = s
        .client
        .send(
            Method::GET,
            "/v2/team/secret/manifests/v1",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.anonymous.catalog().await.unwrap(), vec!["team/open"]);
    assert_eq!(
        s.client.catalog().await.unwrap(),
        vec!["team/open", "team/secret"]
    );
    s.registry.set_private("team/secret", false).await.unwrap();
    let r = s
        .anonymous
        .send(
            Method::GET,
            "/v2/team/secret/manifests/v1",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}
