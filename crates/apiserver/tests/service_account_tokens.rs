//! ServiceAccount tokens end to end with kubectl: TokenRequest issues a bound JWT, the
//! token authenticates as the ServiceAccount (RBAC applies to it), TokenReview answers
//! for it, and deleting the ServiceAccount revokes it.

use std::path::PathBuf;

use korvet_apiserver::pki::{self, ClusterPki, TokenKubeconfigSpec};
use korvet_test_support::{Kubectl, Run, StoreKind, TestControlPlane};
use serde_json::{json, Value};

const ROBOT: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: robot, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: robot-views, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{kind: ServiceAccount, name: robot, namespace: default}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: default}
data: {mode: fast}
"#;

const TOKEN_PATH: &str = "/api/v1/namespaces/default/serviceaccounts/robot/token";

/// Whether kubectl failed because the server does not read protobuf yet.
fn protobuf_refused(run: &Run) -> bool {
    !run.ok
        && (run.stderr.contains("415")
            || run.stderr.contains("UnsupportedMediaType")
            || run.stderr.contains("unknown format"))
}

/// POSTs a TokenRequest as JSON and returns the answer.
fn token_request(k: &Kubectl, path: &str, request: &Value) -> Run {
    k.run_with_input(&["create", "--raw", path, "-f", "-"], &request.to_string())
}

fn parse(run: &Run) -> Value {
    assert!(run.ok, "kubectl failed:\n{}", run.stderr);
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("invalid JSON ({e}):\n{}", run.stdout))
}

/// A token for `robot`: `kubectl create token` when the server reads its protobuf body,
/// else the same TokenRequest as JSON.
fn robot_token(k: &Kubectl) -> String {
    let run = k.run(&["create", "token", "robot"]);
    if run.ok {
        return run.stdout.trim().to_string();
    }
    assert!(
        protobuf_refused(&run),
        "kubectl create token failed:\n{}",
        run.stderr
    );
    let answer = parse(&token_request(
        k,
        TOKEN_PATH,
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}),
    ));
    answer["status"]["token"]
        .as_str()
        .expect("status.token")
        .to_string()
}

fn token_kubeconfig(cp: &TestControlPlane, name: &str, token: &str) -> PathBuf {
    let pki = ClusterPki::load_or_create(&cp.pki_dir(), &[]).expect("load PKI");
    let path = cp.dir().join(format!("{name}.kubeconfig"));
    pki::write_token_kubeconfig(
        &path,
        &TokenKubeconfigSpec {
            cluster_name: "test".into(),
            server_url: cp.server.url(),
            ca_pem: pki.ca_cert_pem().to_string(),
            user: name.into(),
            token: token.into(),
        },
    )
    .expect("write token kubeconfig");
    path
}

fn unauthorized(k: &Kubectl) {
    let err = k.fails(&["get", "configmaps"]);
    assert!(
        err.contains("Unauthorized") || err.contains("must be logged in"),
        "{err}"
    );
}

fn assert_claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("JWT payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    let claims: Value = serde_json::from_slice(&bytes).expect("JSON claims");
    assert_eq!(
        claims["iss"],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(claims["sub"], "system:serviceaccount:default:robot");
    assert_eq!(claims["kubernetes.io"]["namespace"], "default");
    assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], "robot");
    claims
}

fn review(k: &Kubectl, token: &str, audiences: &[&str]) -> Value {
    let mut request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}});
    if !audiences.is_empty() {
        request["spec"]["audiences"] = json!(audiences);
    }
    parse(&k.run_with_input(
        &[
            "create",
            "--raw",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            "-f",
            "-",
        ],
        &request.to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_authenticate_until_the_account_is_deleted() {
    let cp = TestControlPlane::start(StoreKind::Embedded).await;
    let admin = cp.kubectl();
    admin.ok_with_input(&["create", "-f", "-"], ROBOT);
    let sa = admin.json(&["get", "serviceaccount", "robot"]);
    let uid = sa["metadata"]["uid"].as_str().expect("uid").to_string();

    let token = robot_token(&admin);
    let claims = assert_claims(&token);
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["uid"],
        uid.as_str()
    );
    assert_eq!(
        claims["aud"],
        json!(["https://kubernetes.default.svc.cluster.local"])
    );

    // The token is the ServiceAccount: view in default, nothing more.
    let robot = cp.kubectl_as(&token_kubeconfig(&cp, "robot", &token));
    let cms = robot.ok(&["get", "configmaps", "-o", "name"]);
    assert!(cms.contains("configmap/settings"), "{cms}");
    let write = robot.run_with_input(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: mine, namespace: default}\n",
    );
    assert!(!write.ok, "view must not create");
    assert!(
        write.stderr.contains("Forbidden")
            && write.stderr.contains("User \"system:serviceaccount:default:robot\" cannot create resource \"configmaps\""),
        "{}",
        write.stderr
    );
    let other_ns = robot.fails(&["get", "configmaps", "-n", "kube-system"]);
    assert!(other_ns.contains("Forbidden"), "{other_ns}");
    // `kubectl auth whoami`, or its SelfSubjectReview as JSON while protobuf is refused.
    let mut whoami = robot.run(&["auth", "whoami", "-o", "json"]);
    if protobuf_refused(&whoami) {
        whoami = robot.run_with_input(
            &[
                "create",
                "--raw",
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                "-f",
                "-",
            ],
            r#"{"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}"#,
        );
    }
    let me = parse(&whoami);
    assert_eq!(
        me["status"]["userInfo"]["username"],
        "system:serviceaccount:default:robot"
    );
    assert_eq!(
        me["status"]["userInfo"]["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ])
    );

    // TokenReview answers for it, and for nothing else.
    let answer = review(&admin, &token, &[]);
    assert_eq!(answer["status"]["authenticated"], true, "{answer}");
    assert_eq!(
        answer["status"]["user"]["username"],
        "system:serviceaccount:default:robot"
    );
    assert_eq!(
        answer["status"]["user"]["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ])
    );
    assert_eq!(
        answer["status"]["audiences"],
        json!(["https://kubernetes.default.svc.cluster.local"])
    );
    let tampered = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(
        review(&admin, &tampered, &[])["status"]["authenticated"],
        false
    );
    assert_eq!(
        review(&admin, "not-a-token", &[])["status"]["authenticated"],
        false
    );

    // A token for another audience is not an API credential, but reviews for that audience.
    let vault = parse(&token_request(
        &admin,
        TOKEN_PATH,
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": ["vault"]}}),
    ));
    let vault_token = vault["status"]["token"].as_str().expect("token");
    unauthorized(&cp.kubectl_as(&token_kubeconfig(&cp, "vault", vault_token)));
    assert_eq!(
        review(&admin, vault_token, &[])["status"]["authenticated"],
        false
    );
    let for_vault = review(&admin, vault_token, &["vault"]);
    assert_eq!(for_vault["status"]["authenticated"], true, "{for_vault}");
    assert_eq!(for_vault["status"]["audiences"], json!(["vault"]));

    // Garbage is 401, not a crash.
    unauthorized(&cp.kubectl_as(&token_kubeconfig(&cp, "garbage", "a.b.c")));

    // Deleting the ServiceAccount revokes every token it had.
    admin.ok(&["delete", "serviceaccount", "robot"]);
    unauthorized(&robot);
    assert_eq!(
        review(&admin, &token, &[])["status"]["authenticated"],
        false
    );
    // Recreated under the same name it is another account: the old token stays dead.
    admin.ok_with_input(&["create", "-f", "-"], ROBOT.split("---").next().unwrap());
    unauthorized(&robot);
    let fresh = robot_token(&admin);
    let fresh_robot = cp.kubectl_as(&token_kubeconfig(&cp, "fresh", &fresh));
    assert!(fresh_robot
        .ok(&["get", "configmaps", "-o", "name"])
        .contains("configmap/settings"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_are_validated_like_upstream() {
    let cp = TestControlPlane::start(StoreKind::Embedded).await;
    let admin = cp.kubectl();
    admin.ok_with_input(&["create", "-f", "-"], ROBOT);
    let request = |spec: Value| json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});

    // Defaults: one hour, the API server's audience; the answer is the TokenRequest.
    let answer = parse(&token_request(&admin, TOKEN_PATH, &request(json!({}))));
    assert_eq!(answer["kind"], "TokenRequest");
    assert_eq!(answer["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(answer["spec"]["expirationSeconds"], 3600);
    assert_eq!(
        answer["spec"]["audiences"],
        json!(["https://kubernetes.default.svc.cluster.local"])
    );
    let claims = assert_claims(answer["status"]["token"].as_str().expect("token"));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
    let expires = answer["status"]["expirationTimestamp"]
        .as_str()
        .expect("expirationTimestamp");
    let expires: jiff::Timestamp = expires.parse().expect("RFC 3339");
    assert_eq!(expires.as_second(), claims["exp"].as_i64().unwrap());

    // Too short is invalid; too long is shortened (with a warning).
    let short = token_request(
        &admin,
        TOKEN_PATH,
        &request(json!({"expirationSeconds": 60})),
    );
    assert!(
        !short.ok
            && short
                .stderr
                .contains("may not specify a duration less than 10 minutes"),
        "{}",
        short.stderr
    );
    let long = token_request(
        &admin,
        TOKEN_PATH,
        &request(json!({"expirationSeconds": 7 * 24 * 3600})),
    );
    let answer = parse(&long);
    assert_eq!(answer["spec"]["expirationSeconds"], 48 * 3600);
    assert!(
        long.stderr.contains("shortened to 172800 seconds"),
        "{}",
        long.stderr
    );

    // No such ServiceAccount: 404.
    let ghost = token_request(
        &admin,
        "/api/v1/namespaces/default/serviceaccounts/ghost/token",
        &request(json!({})),
    );
    assert!(
        !ghost.ok && ghost.stderr.contains("NotFound"),
        "{}",
        ghost.stderr
    );

    // Bound to a pod of this ServiceAccount: the pod's name and uid are in the token, and
    // the token dies with the pod.
    admin.ok_with_input(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: worker, namespace: default}\nspec:\n  serviceAccountName: robot\n  containers: [{name: c, image: busybox}]\n",
    );
    let pod = admin.json(&["get", "pod", "worker"]);
    let pod_uid = pod["metadata"]["uid"].as_str().expect("pod uid");
    let bound = parse(&token_request(
        &admin,
        TOKEN_PATH,
        &request(
            json!({"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "worker", "uid": pod_uid}}),
        ),
    ));
    assert_eq!(bound["spec"]["boundObjectRef"]["name"], "worker");
    let bound_token = bound["status"]["token"].as_str().expect("token");
    assert_eq!(
        assert_claims(bound_token)["kubernetes.io"]["pod"],
        json!({"name": "worker", "uid": pod_uid})
    );
    let as_pod = cp.kubectl_as(&token_kubeconfig(&cp, "pod", bound_token));
    assert!(as_pod
        .ok(&["get", "configmaps", "-o", "name"])
        .contains("configmap/settings"));
    let stale_uid = token_request(
        &admin,
        TOKEN_PATH,
        &request(
            json!({"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "worker", "uid": "0000"}}),
        ),
    );
    assert!(
        !stale_uid.ok
            && stale_uid
                .stderr
                .contains("does not match the UID in record"),
        "{}",
        stale_uid.stderr
    );
    let wrong_kind = token_request(
        &admin,
        TOKEN_PATH,
        &request(
            json!({"boundObjectRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}),
        ),
    );
    assert!(
        !wrong_kind.ok
            && wrong_kind
                .stderr
                .contains("cannot bind token to object of type"),
        "{}",
        wrong_kind.stderr
    );
    admin.ok(&[
        "delete",
        "pod",
        "worker",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    wait_unauthorized(&as_pod).await;

    // Creating tokens is itself authorized: view may not.
    let token = robot_token(&admin);
    let robot = cp.kubectl_as(&token_kubeconfig(&cp, "robot", &token));
    let denied = token_request(&robot, TOKEN_PATH, &request(json!({})));
    assert!(
        !denied.ok && denied.stderr.contains("Forbidden"),
        "{}",
        denied.stderr
    );
}

/// A deleted pod may linger briefly (graceful deletion); its tokens die when it is gone.
async fn wait_unauthorized(k: &Kubectl) {
    for _ in 0..50 {
        let run = k.run(&["get", "configmaps"]);
        if !run.ok
            && (run.stderr.contains("Unauthorized") || run.stderr.contains("must be logged in"))
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    unauthorized(k);
}
