//! Pod autoscaling on a real cluster: `kubectl top` reads metrics.k8s.io (served by the
//! API server from the node's /stats/summary), and a HorizontalPodAutoscaler scales a
//! CPU-burning Deployment up, then down once the load stops. Runs as root.

use std::path::Path;
use std::time::{Duration, Instant};

use korvet_test_support::platform::TestPlatform;
use korvet_test_support::Kubectl;
use serde_json::json;

/// Burns CPU until /tmp/stop exists, then idles.
fn burner() -> String {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "burn"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "burn"}},
            "template": {
                "metadata": {"labels": {"app": "burn"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "burn",
                        "image": "korvet.local/busybox:latest",
                        "imagePullPolicy": "Never",
                        "command": ["sh", "-c", "while [ ! -e /tmp/stop ]; do :; done; exec sleep 3600"],
                        "resources": {"requests": {"cpu": "100m", "memory": "16Mi"}},
                    }],
                },
            },
        },
    })
    .to_string()
}

fn hpa() -> String {
    json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "burn"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burn"},
            "minReplicas": 1,
            "maxReplicas": 3,
            "metrics": [{
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}},
            }],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0},
                "scaleDown": {"stabilizationWindowSeconds": 0},
            },
        },
    })
    .to_string()
}

fn wait_until<T>(seconds: u64, what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what} did not happen in {seconds} s; last: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn running_pods(kubectl: &Kubectl) -> Vec<String> {
    let pods = kubectl.json(&["get", "pods", "-l", "app=burn"]);
    pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

fn raw(kubectl: &Kubectl, args: &[&str]) -> serde_json::Value {
    let out = kubectl.ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn replicas(kubectl: &Kubectl) -> i64 {
    kubectl.json(&["get", "deployment", "burn"])["spec"]["replicas"]
        .as_i64()
        .unwrap_or(-1)
}

/// The millicores column of the first row of `kubectl top` output.
fn millicores(top: &str, column: usize) -> Option<u64> {
    let row = top.lines().nth(1)?;
    let cell = row.split_whitespace().nth(column)?;
    cell.strip_suffix('m')?.parse().ok()
}

#[test]
fn top_and_an_hpa_scale_a_cpu_burner_up_and_down() {
    let platform = TestPlatform::start(Path::new(env!("CARGO_BIN_EXE_korvet")));
    let (kubectl, node) = platform.one_node_cluster("hpa");

    // Metrics API in discovery, and kubectl top nodes with real figures.
    let groups = kubectl.ok(&["api-versions"]);
    assert!(groups.contains("metrics.k8s.io/v1beta1"), "{groups}");
    let top = wait_until(30, "kubectl top nodes", || {
        let run = kubectl.run(&["top", "nodes"]);
        (run.ok && run.stdout.contains(&node))
            .then_some(run.stdout.clone())
            .ok_or(run.stderr + &run.stdout)
    });
    assert!(top.starts_with("NAME"), "{top}");
    assert!(top.contains("Mi"), "memory figure in {top}");
    let metrics = raw(
        &kubectl,
        &[
            "get",
            "--raw",
            &format!("/apis/metrics.k8s.io/v1beta1/nodes/{node}"),
        ],
    );
    assert_eq!(metrics["kind"], "NodeMetrics", "{metrics:#}");
    assert!(
        metrics["usage"]["memory"]
            .as_str()
            .is_some_and(|m| m.ends_with("Ki") || m.ends_with("Mi")),
        "{metrics:#}"
    );

    kubectl.ok_with_input(&["apply", "-f", "-"], &burner());
    let pod = wait_until(60, "the burner runs", || {
        running_pods(&kubectl)
            .into_iter()
            .next()
            .ok_or_else(|| "no running pod".to_string())
    });
    // kubectl top pods: the burner uses far more than its 100m request.
    let top = wait_until(30, "kubectl top pods shows the burner", || {
        let run = kubectl.run(&["top", "pods", "-l", "app=burn", "--containers"]);
        match millicores(&run.stdout, 2) {
            Some(m) if m > 200 => Ok(run.stdout),
            _ => Err(run.stderr + &run.stdout),
        }
    });
    assert!(top.contains(&pod) && top.contains("burn"), "{top}");
    let all = kubectl.ok(&["top", "pods", "-A"]);
    assert!(all.contains("NAMESPACE") && all.contains(&pod), "{all}");
    let listed = raw(
        &kubectl,
        &[
            "get",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?labelSelector=app%3Dburn",
        ],
    );
    assert_eq!(listed["kind"], "PodMetricsList");
    assert_eq!(
        listed["items"][0]["containers"][0]["name"], "burn",
        "{listed:#}"
    );
    assert!(
        listed["items"][0]["window"].as_str().is_some(),
        "{listed:#}"
    );

    // Load: the HPA scales up to its maximum at its first sync.
    kubectl.ok_with_input(&["apply", "-f", "-"], &hpa());
    wait_until(45, "the HPA scales up to 3", || {
        let r = replicas(&kubectl);
        (r == 3).then_some(()).ok_or(format!("replicas {r}"))
    });
    let status = kubectl.json(&["get", "hpa", "burn"])["status"].clone();
    assert_eq!(status["desiredReplicas"], 3, "{status:#}");
    assert!(status["lastScaleTime"].is_string(), "{status:#}");
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=HorizontalPodAutoscaler,reason=SuccessfulRescale",
    ]);
    assert!(
        events.contains(
            "New size: 3; reason: cpu resource utilization (percentage of request) above target"
        ),
        "{events}"
    );
    let listed = kubectl.ok(&["get", "hpa", "burn"]);
    assert!(
        listed.contains("Deployment/burn") && listed.contains("cpu: ") && listed.contains("/50%"),
        "{listed}"
    );
    let described = kubectl.ok(&["describe", "hpa", "burn"]);
    assert!(described.contains("ValidMetricFound"), "{described}");

    // Load stops in every pod (the new ones too, once they run).
    let pods = wait_until(60, "three burners run", || {
        let pods = running_pods(&kubectl);
        (pods.len() == 3)
            .then_some(pods.clone())
            .ok_or(format!("{pods:?}"))
    });
    for pod in &pods {
        kubectl.ok(&["exec", pod, "--", "touch", "/tmp/stop"]);
    }
    wait_until(60, "the HPA scales down to 1", || {
        let r = replicas(&kubectl);
        (r == 1).then_some(()).ok_or(format!(
            "replicas {r}; hpa {}",
            kubectl.json(&["get", "hpa", "burn"])["status"]
        ))
    });
    // The Event follows the scale write.
    wait_until(10, "a SuccessfulRescale event for the scale-down", || {
        let events = kubectl.ok(&[
            "get",
            "events",
            "--field-selector",
            "reason=SuccessfulRescale",
        ]);
        events
            .contains("New size: 1; reason: All metrics below target")
            .then_some(())
            .ok_or(events)
    });
}
