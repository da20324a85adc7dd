//! The official Python `kubernetes` client (from PyPI, in a virtualenv this test makes
//! once under `target/`): CRUD, list with a label selector, and watch, on both stores.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use korvet_test_support::{on_every_store, StoreKind, TestControlPlane};

static VENV: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The virtualenv's python, created with `pip install kubernetes` on first use.
fn python() -> PathBuf {
    let mut venv = VENV.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(python) = venv.as_ref() {
        return python.clone();
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/python-client-venv");
    let python = dir.join("bin/python");
    let ready = dir.join(".installed");
    if !ready.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .expect("python3 -m venv (install python3-venv)");
        assert!(status.success(), "creating the virtualenv failed");
        let status = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "kubernetes>=31,<34",
            ])
            .status()
            .expect("pip install kubernetes");
        assert!(status.success(), "pip install kubernetes failed");
        std::fs::write(&ready, b"").expect("mark virtualenv ready");
    }
    *venv = Some(python.clone());
    python
}

const SCRIPT: &str = r#"
import sys, threading, time
from kubernetes import client, config, watch
config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
names = [ns.metadata.name for ns in v1.list_namespace().items]
assert "kube-system" in names, names
cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"from": "python"}), data={"a": "1"})
created = v1.create_namespaced_config_map("default", cm)
assert created.metadata.resource_version
got = v1.read_namespaced_config_map("py", "default")
assert got.data == {"a": "1"}, got.data
got.data["a"] = "2"
v1.replace_namespaced_config_map("py", "default", got)
v1.patch_namespaced_config_map("py", "default", {"data": {"b": "3"}})
listed = v1.list_namespaced_config_map("default", label_selector="from=python")
assert [c.metadata.name for c in listed.items] == ["py"], listed.items
assert listed.items[0].data == {"a": "2", "b": "3"}, listed.items[0].data
try:
    v1.read_namespaced_config_map("missing", "default")
    raise SystemExit("expected a 404")
except client.exceptions.ApiException as e:
    assert e.status == 404, e.status
seen = []
def watcher():
    w = watch.Watch()
    for event in w.stream(v1.list_namespaced_config_map, "default", resource_version=listed.metadata.resource_version, timeout_seconds=15):
        seen.append((event["type"], event["object"].metadata.name))
        if event["type"] == "DELETED":
            w.stop()
t = threading.Thread(target=watcher)
t.start()
time.sleep(0.5)
v1.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py2")))
v1.delete_namespaced_config_map("py2", "default")
t.join(20)
assert ("ADDED", "py2") in seen and ("DELETED", "py2") in seen, seen
print("python client ok")
"#;

async fn python_client_crud_list_watch(store: StoreKind) {
    let python = tokio::task::spawn_blocking(python).await.expect("venv");
    let cp = TestControlPlane::start(store).await;
    let script = cp.dir().join("client.py");
    std::fs::write(&script, SCRIPT).expect("write script");
    let kubeconfig = cp.kubeconfig().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(kubeconfig)
            .env_remove("KUBECONFIG")
            .output()
            .expect("run python")
    })
    .await
    .expect("python task");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("python client ok"),
        "python client failed:\n{stdout}\n{stderr}"
    );
}

on_every_store!(python_client_crud_list_watch);
