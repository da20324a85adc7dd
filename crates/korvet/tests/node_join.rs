//! `korvet node` joins a real control plane: bootstrap token → CSR → approved and signed
//! by the CSR controller → Node registered Ready → Lease renewed; a restart reuses the
//! certificate and the Node. Bootstrap tokens are checked as upstream checks them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use korvet_apiserver::pki::{write_token_kubeconfig, TokenKubeconfigSpec};
use korvet_test_support::{Kubectl, StoreKind, TestControlPlane};
use serde_json::Value;

const TOKEN_ID: &str = "abcdef";
const TOKEN_SECRET: &str = "0123456789abcdef";

/// A `korvet node` process, killed by PID when dropped.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(data_dir: &Path, bootstrap: &Path, log: PathBuf) -> Self {
        let stderr = std::fs::File::create(&log).expect("agent log");
        let child = Command::new(env!("CARGO_BIN_EXE_korvet"))
            .args(["node", "--data-dir"])
            .env(
                "KORVET_EVICTION_HARD",
                korvet_test_support::platform::EVICTION_HARD,
            )
            .arg(data_dir)
            .arg("--bootstrap-kubeconfig")
            .arg(bootstrap)
            .args([
                "--node-name",
                "n1",
                "--address",
                "127.0.0.1",
                "--label",
                "zone=a",
                "--label",
                "tier=test",
                "--taint",
                "dedicated=test:NoSchedule",
                "--capacity",
                "cpu=2,memory=4Gi,pods=110,ephemeral-storage=20Gi",
                "--provider-id",
                "korvet://n1",
                "--metrics-listen",
                "127.0.0.1:0",
                "--join-timeout-seconds",
                "60",
            ])
            .env("KORVET_LOG", "info,korvet_node=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start korvet node");
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM by PID, then waits for a clean exit.
    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "agent exited with {status}:\n{}",
                    self.log()
                );
                return;
            }
            assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bootstrap_kubeconfig(cp: &TestControlPlane, name: &str, token: &str) -> PathBuf {
    let ca_pem = std::fs::read_to_string(cp.pki_dir().join("ca.crt")).expect("ca.crt");
    let path = cp.dir().join(name);
    write_token_kubeconfig(
        &path,
        &TokenKubeconfigSpec {
            cluster_name: "test".into(),
            server_url: cp.server.url(),
            ca_pem,
            user: "bootstrap".into(),
            token: token.into(),
        },
    )
    .expect("write bootstrap kubeconfig");
    path
}

fn create_token(kubectl: &Kubectl, id: &str, secret: &str, expiration: Option<&str>) {
    let name = format!("bootstrap-token-{id}");
    let mut args = vec![
        "create".to_string(),
        "secret".into(),
        "generic".into(),
        name,
        "-n".into(),
        "kube-system".into(),
        "--type".into(),
        "bootstrap.kubernetes.io/token".into(),
        format!("--from-literal=token-id={id}"),
        format!("--from-literal=token-secret={secret}"),
        "--from-literal=usage-bootstrap-authentication=true".into(),
        "--from-literal=usage-bootstrap-signing=true".into(),
    ];
    if let Some(at) = expiration {
        args.push(format!("--from-literal=expiration={at}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    kubectl.ok(&args);
}

/// Polls `check` until it returns `Some`, panicking with `what` after `seconds`.
fn eventually<T>(seconds: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn node_json(kubectl: &Kubectl) -> Option<Value> {
    let run = kubectl.run(&["get", "node", "n1", "-o", "json"]);
    run.ok
        .then(|| serde_json::from_str(&run.stdout).ok())
        .flatten()
}

fn renew_time(kubectl: &Kubectl) -> Option<String> {
    let run = kubectl.run(&["get", "lease", "n1", "-n", "kube-node-lease", "-o", "json"]);
    let lease: Value = serde_json::from_str(&run.stdout).ok()?;
    lease["spec"]["renewTime"].as_str().map(str::to_string)
}

fn csrs(kubectl: &Kubectl) -> Vec<Value> {
    kubectl.json(&["get", "csr"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn has_condition(csr: &Value, kind: &str) -> bool {
    csr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_joins_registers_heartbeats_and_restarts_with_its_certificate() {
    let cp = TestControlPlane::start_with_controllers(StoreKind::Embedded).await;
    let kubectl = cp.kubectl();
    create_token(&kubectl, TOKEN_ID, TOKEN_SECRET, None);
    let bootstrap = bootstrap_kubeconfig(
        &cp,
        "bootstrap.kubeconfig",
        &format!("{TOKEN_ID}.{TOKEN_SECRET}"),
    );
    let data_dir = cp.dir().join("node-n1");
    let agent = Agent::start(&data_dir, &bootstrap, cp.dir().join("agent-1.log"));

    let node = eventually(60, "node n1 Ready", || node_json(&kubectl).filter(ready));
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["zone"], "a", "{node}");
    assert_eq!(labels["tier"], "test");
    assert_eq!(labels["kubernetes.io/hostname"], "n1");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert!(labels["kubernetes.io/arch"].is_string());
    let taint = &node["spec"]["taints"][0];
    assert_eq!(
        (&taint["key"], &taint["value"], &taint["effect"]),
        (
            &Value::from("dedicated"),
            &Value::from("test"),
            &Value::from("NoSchedule")
        )
    );
    assert_eq!(node["spec"]["providerID"], "korvet://n1");
    for (resource, quantity) in [
        ("cpu", "2"),
        ("memory", "4Gi"),
        ("pods", "110"),
        ("ephemeral-storage", "20Gi"),
    ] {
        assert_eq!(node["status"]["capacity"][resource], quantity);
        assert_eq!(node["status"]["allocatable"][resource], quantity);
    }
    assert_eq!(node["status"]["addresses"][0]["type"], "InternalIP");
    assert_eq!(node["status"]["addresses"][0]["address"], "127.0.0.1");
    assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], "v1.33.0");
    let runtime = node["status"]["nodeInfo"]["containerRuntimeVersion"]
        .as_str()
        .unwrap_or_default();
    assert!(runtime.starts_with("containerd://") || runtime == "unknown");
    let ready_condition = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready_condition["reason"], "KubeletReady");
    assert_eq!(
        ready_condition["message"],
        "korvet node is posting ready status"
    );
    let printed = kubectl.ok(&["get", "node", "n1"]);
    assert!(printed.contains("Ready"), "{printed}");

    // One CSR, auto-approved and issued, requested by the bootstrap token's user.
    let all = csrs(&kubectl);
    assert_eq!(all.len(), 1, "{all:?}");
    let csr = &all[0];
    assert!(has_condition(csr, "Approved"), "{csr}");
    assert!(csr["status"]["certificate"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    assert_eq!(csr["spec"]["username"], "system:bootstrap:abcdef");
    assert!(csr["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g == "system:bootstrappers"));
    let table = kubectl.ok(&["get", "csr"]);
    assert!(table.contains("Approved,Issued"), "{table}");
    let events = kubectl.json(&["get", "events", "-n", "default"]);
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"CSRApproved") && reasons.contains(&"CSRSigned"),
        "{reasons:?}"
    );

    // The node's own identity.
    let kubelet_kubeconfig = data_dir.join("kubelet.kubeconfig");
    let as_node = cp.kubectl_as(&kubelet_kubeconfig);
    let whoami = as_node.json(&["auth", "whoami"]);
    assert_eq!(whoami["status"]["userInfo"]["username"], "system:node:n1");
    assert!(whoami["status"]["userInfo"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g == "system:nodes"));
    use std::os::unix::fs::PermissionsExt;
    for file in ["kubelet.kubeconfig", "kubelet.key"] {
        let mode = std::fs::metadata(data_dir.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }

    // The Lease belongs to the Node and is renewed.
    let lease = kubectl.json(&["get", "lease", "n1", "-n", "kube-node-lease"]);
    assert_eq!(lease["spec"]["holderIdentity"], "n1");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
    assert_eq!(lease["metadata"]["ownerReferences"][0]["kind"], "Node");
    assert_eq!(
        lease["metadata"]["ownerReferences"][0]["uid"],
        node["metadata"]["uid"]
    );
    let first = renew_time(&kubectl).expect("renewTime");
    eventually(30, "the lease to be renewed", || {
        renew_time(&kubectl).filter(|t| *t != first)
    });

    // A restart keeps the certificate and the Node: no second CSR.
    agent.terminate();
    let kept = node_json(&kubectl).expect("the Node stays after the agent stops");
    assert_eq!(kept["metadata"]["uid"], node["metadata"]["uid"]);
    let before_restart = renew_time(&kubectl).expect("renewTime");
    let agent = Agent::start(&data_dir, &bootstrap, cp.dir().join("agent-2.log"));
    eventually(30, "the restarted agent to renew its lease", || {
        renew_time(&kubectl).filter(|t| *t != before_restart)
    });
    assert!(
        agent
            .log()
            .contains("using the node's existing certificate"),
        "{}",
        agent.log()
    );
    assert_eq!(csrs(&kubectl).len(), 1);
    let after = node_json(&kubectl).expect("node");
    assert_eq!(after["metadata"]["uid"], node["metadata"]["uid"]);
    assert!(ready(&after));
    drop(agent);
}

/// A PEM certificate request for `cn`/`o`.
fn request_pem(cn: &str, o: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, o);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn csr_manifest(name: &str, cn: &str, o: &str) -> String {
    use base64::Engine as _;
    let request = base64::engine::general_purpose::STANDARD.encode(request_pem(cn, o));
    serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": request,
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["client auth", "digital signature"],
            "username": "system:node:forged",
        },
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bootstrap_tokens_are_checked_and_only_node_requests_are_approved() {
    let cp = TestControlPlane::start_with_controllers(StoreKind::Embedded).await;
    let kubectl = cp.kubectl();
    create_token(&kubectl, TOKEN_ID, TOKEN_SECRET, None);
    create_token(
        &kubectl,
        "expire",
        "0123456789abcdef",
        Some("2001-01-01T00:00:00Z"),
    );
    let good = cp.kubectl_as(&bootstrap_kubeconfig(
        &cp,
        "good.kubeconfig",
        &format!("{TOKEN_ID}.{TOKEN_SECRET}"),
    ));
    let wrong = cp.kubectl_as(&bootstrap_kubeconfig(
        &cp,
        "wrong.kubeconfig",
        &format!("{TOKEN_ID}.0123456789abcdee"),
    ));
    let expired = cp.kubectl_as(&bootstrap_kubeconfig(
        &cp,
        "expired.kubeconfig",
        "expire.0123456789abcdef",
    ));
    let unknown = cp.kubectl_as(&bootstrap_kubeconfig(
        &cp,
        "unknown.kubeconfig",
        "zzzzzz.0123456789abcdef",
    ));

    // The bootstrap user may list CSRs but not secrets.
    good.ok(&["get", "csr"]);
    let whoami = good.json(&["auth", "whoami"]);
    assert_eq!(
        whoami["status"]["userInfo"]["username"],
        "system:bootstrap:abcdef"
    );
    let forbidden = good.fails(&["get", "secrets", "-n", "kube-system"]);
    assert!(forbidden.contains("Forbidden"), "{forbidden}");
    for (who, client) in [
        ("wrong secret", &wrong),
        ("expired", &expired),
        ("unknown id", &unknown),
    ] {
        let err = client.fails(&["get", "csr"]);
        assert!(err.contains("Unauthorized"), "{who}: {err}");
    }

    // A bootstrapper asking for another identity is left pending; a node request from
    // the same user, created after it, is approved and issued.
    good.ok_with_input(
        &["create", "-f", "-"],
        &csr_manifest("masters", "admin", "system:masters"),
    );
    good.ok_with_input(
        &["create", "-f", "-"],
        &csr_manifest("node-n2", "system:node:n2", "system:nodes"),
    );
    eventually(30, "node-n2 to be issued", || {
        let csr = kubectl.json(&["get", "csr", "node-n2"]);
        csr["status"]["certificate"]
            .as_str()
            .filter(|c| !c.is_empty())
            .map(|_| ())
    });
    let masters = kubectl.json(&["get", "csr", "masters"]);
    assert!(!has_condition(&masters, "Approved"), "{masters}");
    assert!(masters["status"]["certificate"].is_null());
    // The requester is who sent it, not what the body claimed.
    assert_eq!(masters["spec"]["username"], "system:bootstrap:abcdef");
    // An admin decides on it through the approval subresource.
    kubectl.ok(&["certificate", "deny", "masters"]);
    let denied = kubectl.json(&["get", "csr", "masters"]);
    assert!(has_condition(&denied, "Denied"), "{denied}");
    assert!(denied["status"]["certificate"].is_null());
    let table = kubectl.ok(&["get", "csr", "masters"]);
    assert!(table.contains("Denied"), "{table}");
}
