//! Cluster housekeeping on a real one-node cluster through kubectl: a Service's
//! EndpointSlice and Endpoints follow a real pod's readiness probe, the pod's
//! service-account volume holds the namespace, the CA and a token, and deleting a
//! Deployment with `--cascade=background|orphan|foreground` does what each says.
//! Runs as root.

use std::path::Path;
use std::time::{Duration, Instant};

use korvet_test_support::platform::TestPlatform;
use korvet_test_support::Kubectl;
use serde_json::{json, Value};

const BUSYBOX: &str = "korvet.local/busybox:latest";

fn wait(k: &Kubectl, what: &str, seconds: u64, args: &[&str], done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let run = k.run(args);
        let value: Value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
        if done(&value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last:\n{value:#}\n{}",
            run.stderr
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The (ready, serving, terminating) conditions of the one endpoint of slices of `svc`.
fn endpoint_conditions(slices: &Value) -> Option<(bool, bool, bool)> {
    let items = slices["items"].as_array()?;
    let endpoints: Vec<&Value> = items
        .iter()
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .collect();
    let [e] = endpoints.as_slice() else {
        return None;
    };
    let c = &e["conditions"];
    Some((
        c["ready"].as_bool()?,
        c["serving"].as_bool()?,
        c["terminating"].as_bool()?,
    ))
}

fn deployment(name: &str) -> String {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": BUSYBOX,
                                    "imagePullPolicy": "IfNotPresent",
                                    "command": ["sleep", "3600"]}],
                },
            },
        },
    })
    .to_string()
}

fn count(k: &Kubectl, kind: &str, app: &str) -> usize {
    let list = k.json(&["get", kind, "-l", &format!("app={app}")]);
    list["items"].as_array().map_or(0, Vec::len)
}

/// Creates Deployment `name` and waits for its ReplicaSet and both pods.
fn deployment_with_pods(k: &Kubectl, name: &str) {
    k.ok_with_input(&["apply", "-f", "-"], &deployment(name));
    wait(
        k,
        "the Deployment's pods",
        60,
        &["get", "pods", "-l", &format!("app={name}"), "-o", "json"],
        |l| l["items"].as_array().is_some_and(|i| i.len() == 2),
    );
}

#[test]
fn slices_follow_readiness_and_deployments_cascade() {
    let platform = TestPlatform::start(Path::new(env!("CARGO_BIN_EXE_korvet")));
    let (k, node) = platform.one_node_cluster("hk");
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": BUSYBOX,
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1},
            }],
        },
    });
    k.ok_with_input(&["apply", "-f", "-"], &pod.to_string());
    k.ok_with_input(
        &["apply", "-f", "-"],
        &json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        })
        .to_string(),
    );
    let running = platform.wait_pod(&k, "web", 60, |p| p["status"]["phase"] == "Running");
    let ip = running["status"]["podIP"].as_str().unwrap().to_string();
    let slices = [
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "json",
    ];
    wait(&k, "a not-ready endpoint", 30, &slices, |s| {
        endpoint_conditions(s) == Some((false, false, false))
    });
    let listed = k.json(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
    ]);
    let endpoint = &listed["items"][0]["endpoints"][0];
    assert_eq!(endpoint["addresses"][0], ip.as_str());
    assert_eq!(endpoint["nodeName"], node.as_str());
    assert_eq!(endpoint["zone"], "zone-a");
    assert_eq!(listed["items"][0]["ports"][0]["port"], 8080);

    // The service-account volume upstream's admission adds, filled by the node.
    let namespace = k.ok(&[
        "exec",
        "web",
        "--",
        "cat",
        "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
    ]);
    assert_eq!(namespace.trim(), "default");
    let ca = k.ok(&[
        "exec",
        "web",
        "--",
        "cat",
        "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
    ]);
    assert!(ca.contains("BEGIN CERTIFICATE"), "{ca}");
    let token = k.ok(&[
        "exec",
        "web",
        "--",
        "cat",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
    ]);
    assert_eq!(token.trim().split('.').count(), 3, "not a JWT: {token}");

    k.ok(&["exec", "web", "--", "touch", "/tmp/ready"]);
    wait(&k, "a ready endpoint", 30, &slices, |s| {
        endpoint_conditions(s) == Some((true, true, false))
    });
    wait(
        &k,
        "the address in Endpoints",
        30,
        &["get", "endpoints", "web", "-o", "json"],
        |e| e["subsets"][0]["addresses"][0]["ip"] == ip.as_str(),
    );
    k.ok(&["exec", "web", "--", "rm", "/tmp/ready"]);
    wait(&k, "the endpoint to be not ready again", 30, &slices, |s| {
        endpoint_conditions(s) == Some((false, false, false))
    });

    // Background: the Deployment goes at once, its ReplicaSet and pods after it.
    deployment_with_pods(&k, "bg");
    k.ok(&["delete", "deployment", "bg", "--cascade=background"]);
    wait(
        &k,
        "bg's ReplicaSet and pods to go",
        60,
        &["get", "rs,pods", "-l", "app=bg", "-o", "json"],
        |l| l["items"].as_array().is_some_and(Vec::is_empty),
    );

    // Orphan: the ReplicaSet and pods stay, without the reference to the Deployment.
    deployment_with_pods(&k, "orphan");
    k.ok(&["delete", "deployment", "orphan", "--cascade=orphan"]);
    assert!(k.run(&["get", "deployment", "orphan"]).stdout.is_empty());
    let sets = k.json(&["get", "rs", "-l", "app=orphan"]);
    let sets = sets["items"].as_array().unwrap();
    assert_eq!(sets.len(), 1);
    assert!(
        sets[0]["metadata"]["ownerReferences"].is_null(),
        "{:#}",
        sets[0]
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count(&k, "pods", "orphan"), 2);

    // Foreground: kubectl waits until the pods and the ReplicaSet are gone, the
    // Deployment last.
    deployment_with_pods(&k, "fg");
    let watch = k.watch(&["get", "deployment", "fg", "-o", "json", "--watch"]);
    k.ok(&[
        "delete",
        "deployment",
        "fg",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    watch.wait_for("foregroundDeletion", 10);
    assert_eq!(count(&k, "rs", "fg"), 0);
    assert_eq!(count(&k, "pods", "fg"), 0);
    assert!(k.run(&["get", "deployment", "fg"]).stdout.is_empty());
}
