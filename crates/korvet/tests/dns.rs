//! Cluster DNS on a real platform cluster: the control plane serves it on the
//! cluster's endpoint, keeps the `kubernetes` and `kube-dns` Services, and a pod gets
//! a ClusterFirst resolv.conf and resolves Services from inside. Runs as root.

use korvet_test_support::platform::{korvet_binary, TestPlatform};

#[test]
fn pods_resolve_services_through_the_cluster_dns() {
    let platform = TestPlatform::start(&korvet_binary(env!("CARGO_BIN_EXE_korvet")));
    let (kubectl, node) = platform.one_node_cluster("dns");
    let cluster = platform.ok(&["cluster", "get", "dns", "-o", "json"]);
    let cluster: serde_json::Value = serde_json::from_str(&cluster).unwrap();
    let endpoint = cluster["status"]["endpoint"].as_str().unwrap();
    // https://ADDRESS:6443 → the single master's DNS is ADDRESS:53.
    let dns_ip = endpoint
        .trim_start_matches("https://")
        .rsplit_once(':')
        .unwrap()
        .0
        .to_string();

    let kube_dns = kubectl.json(&["get", "service", "kube-dns", "-n", "kube-system"]);
    assert_eq!(kube_dns["spec"]["clusterIP"], "10.96.0.10", "{kube_dns:#}");
    assert_eq!(kube_dns["metadata"]["labels"]["k8s-app"], "kube-dns");
    let slices = kubectl.json(&[
        "get",
        "endpointslices",
        "-n",
        "kube-system",
        "-l",
        "kubernetes.io/service-name=kube-dns",
    ]);
    assert_eq!(
        slices["items"][0]["endpoints"][0]["addresses"][0], dns_ip,
        "{slices:#}"
    );
    let api_ip = kubectl.json(&["get", "service", "kubernetes"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();

    let script = format!(
        "cat /etc/resolv.conf; echo ---; nslookup kubernetes.default.svc.cluster.local {dns_ip}; \
         echo ---; nslookup kube-dns.kube-system.svc.cluster.local {dns_ip}"
    );
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "lookup"},
        "spec": {"nodeName": node, "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": "korvet.local/busybox:latest",
                "imagePullPolicy": "Never", "command": ["sh", "-c", script]}]},
    });
    kubectl.ok_with_input(&["apply", "-f", "-"], &pod.to_string());
    platform.wait_pod(&kubectl, "lookup", 60, |p| {
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
    });
    let logs = kubectl.ok(&["logs", "lookup"]);
    let resolv = logs.split("---").next().unwrap();
    assert!(resolv.contains("nameserver 10.96.0.10"), "{logs}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{logs}"
    );
    assert!(resolv.contains("options ndots:5"), "{logs}");
    let answers = logs.split("---").nth(1).unwrap();
    assert!(answers.contains(&format!("Address: {api_ip}")), "{logs}");
    let answers = logs.split("---").nth(2).unwrap();
    assert!(answers.contains("Address: 10.96.0.10"), "{logs}");
}
