//! Bad input and bad credentials: each answered with upstream's status code and a precise
//! message, and the server keeps serving.

use korvet_test_support::{on_every_store, StoreKind, TestControlPlane};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;

async fn config(cp: &TestControlPlane) -> Config {
    let kubeconfig = Kubeconfig::read_from(cp.kubeconfig()).expect("read kubeconfig");
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube config")
}

/// Sends a raw request; returns the status code and the decoded Status body.
async fn send(
    client: &Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", content_type)
        .body(body)
        .expect("request");
    match client.request_text(request).await {
        Ok(text) => (200, serde_json::from_str(&text).unwrap_or(Value::Null)),
        Err(kube::Error::Api(status)) => (
            status.code,
            serde_json::json!({"message": status.message, "reason": status.reason}),
        ),
        Err(other) => panic!("transport error: {other}"),
    }
}

async fn get(client: &Client, path: &str) -> (u16, Value) {
    send(client, "GET", path, "application/json", Vec::new()).await
}

/// A client that authenticates with `token` only (or with nothing, for `None`).
async fn token_client(cp: &TestControlPlane, token: Option<&str>) -> Client {
    let mut config = config(cp).await;
    config.auth_info.client_certificate_data = None;
    config.auth_info.client_key_data = None;
    config.auth_info.token = token.map(|t| t.to_string().into());
    Client::try_from(config).expect("client")
}

async fn bad_requests_get_upstream_codes(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let client = Client::try_from(config(&cp).await).expect("client");
    let cms = "/api/v1/namespaces/default/configmaps";
    let (code, status) = send(
        &client,
        "POST",
        cms,
        "application/json",
        b"{\"apiVersion\":".to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("error decoding JSON"),
        "{status}"
    );
    let (code, status) = send(
        &client,
        "POST",
        cms,
        "application/yaml",
        b"a: [unclosed".to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{status}");
    let wrong_kind = br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#.to_vec();
    let (code, status) = send(&client, "POST", cms, "application/json", wrong_kind).await;
    assert_eq!(code, 400, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("does not match the expected API version"),
        "{status}"
    );
    let duplicate = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"dup"},"data":{"a":"1"},"data":{"b":"2"}}"#.to_vec();
    let (code, status) = send(
        &client,
        "POST",
        &format!("{cms}?fieldValidation=Strict"),
        "application/json",
        duplicate.clone(),
    )
    .await;
    assert_eq!(code, 400, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("duplicate field \"data\""),
        "{status}"
    );
    let (code, created) = send(
        &client,
        "POST",
        &format!("{cms}?fieldValidation=Ignore"),
        "application/json",
        duplicate,
    )
    .await;
    assert_eq!(code, 200, "{created}");
    assert_eq!(
        created["data"],
        serde_json::json!({"b": "2"}),
        "the last duplicate wins, as in Go"
    );
    let huge = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"huge"}},"data":{{"a":"{}"}}}}"#,
        "x".repeat(4 * 1024 * 1024)
    );
    let (code, status) = send(&client, "POST", cms, "application/json", huge.into_bytes()).await;
    assert_eq!(code, 413, "{status}");
    let (code, _) = send(&client, "POST", cms, "text/html", b"<html/>".to_vec()).await;
    assert_eq!(code, 415);
    let (code, status) = get(&client, "/apis/nope.example.com/v1/things").await;
    assert_eq!(code, 404, "{status}");
    let (code, status) = get(&client, &format!("{cms}?labelSelector=a%20in%20(b")).await;
    assert_eq!(code, 400, "{status}");
    let (code, status) = get(&client, &format!("{cms}?continue=garbage")).await;
    assert_eq!(code, 400, "{status}");
    // The server is unaffected.
    let (code, _) = get(&client, cms).await;
    assert_eq!(code, 200);
}

async fn requests_without_credentials_are_refused(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let client = token_client(&cp, None).await;
    let (code, status) = get(&client, "/api/v1/namespaces").await;
    assert_eq!(code, 401, "{status}");
    // Health and version stay public, as upstream's system:public-info-viewer makes them.
    let (code, _) = get(&client, "/version").await;
    assert_eq!(code, 200);
    let client = token_client(&cp, Some("not-a-real-token")).await;
    let (code, _) = get(&client, "/api/v1/namespaces").await;
    assert_eq!(code, 401);
}

async fn static_tokens_authenticate_users(store: StoreKind) {
    let tokens = "s3cr3t-token,ops-bot,42,\"system:masters\"\nweak-token,nobody,43\n";
    let cp = TestControlPlane::start_with_tokens(store, Some(tokens)).await;
    let client = token_client(&cp, Some("s3cr3t-token")).await;
    let (code, _) = get(&client, "/api/v1/namespaces").await;
    assert_eq!(code, 200);
    let review =
        br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#.to_vec();
    let path = "/apis/authentication.k8s.io/v1/selfsubjectreviews";
    let (code, me) = send(&client, "POST", path, "application/json", review).await;
    assert_eq!(code, 200, "{me}");
    assert_eq!(me["status"]["userInfo"]["username"], "ops-bot");
    let weak = token_client(&cp, Some("weak-token")).await;
    let (code, status) = get(&weak, "/api/v1/namespaces").await;
    assert_eq!(
        code, 403,
        "an authenticated user without grants is forbidden: {status}"
    );
}

on_every_store!(
    bad_requests_get_upstream_codes,
    requests_without_credentials_are_refused,
    static_tokens_authenticate_users
);
