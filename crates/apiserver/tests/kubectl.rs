//! kubectl (the one on PATH) against a real control plane, on the embedded store and on
//! etcd: the commands users run every day, with no flags to soften the server's answers.

use korvet_test_support::{on_every_store, StoreKind, TestControlPlane};

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.local/demo-web:1
        ports:
        - containerPort: 8080
        env:
        - {name: A, value: "1"}
"#;

async fn discovery_and_basic_reads(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let k = cp.kubectl();
    let namespaces = k.ok(&["get", "namespaces"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(namespaces.contains(ns), "{namespaces}");
    }
    assert!(
        namespaces.starts_with("NAME"),
        "server-side table expected:\n{namespaces}"
    );
    let resources = k.ok(&["api-resources"]);
    for line in [
        "deployments",
        "configmaps",
        "clusterroles",
        "customresourcedefinitions",
    ] {
        assert!(
            resources.contains(line),
            "{line} missing from api-resources:\n{resources}"
        );
    }
    let versions = k.ok(&["api-versions"]);
    assert!(versions.contains("apps/v1") && versions.contains("rbac.authorization.k8s.io/v1"));
    let version = k.ok(&["get", "--raw", "/version"]);
    assert!(version.contains("\"gitVersion\""), "{version}");
    let explain = k.ok(&["explain", "deployment.spec.replicas"]);
    assert!(explain.contains("<integer>"), "{explain}");
    let v2 = k.ok(&["get", "--raw", "/openapi/v2"]);
    assert!(v2.contains("\"swagger\":\"2.0\"") && v2.contains("io.k8s.api.apps.v1.Deployment"));
    let health = k.ok(&["get", "--raw", "/healthz"]);
    assert_eq!(health.trim(), "ok");
    let metrics = k.ok(&["get", "--raw", "/metrics"]);
    assert!(
        metrics.contains("apiserver_request_total{") && metrics.contains("resource=\"namespaces\""),
        "{metrics}"
    );
}

async fn apply_get_in_every_format_and_delete(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let k = cp.kubectl();
    let out = k.ok_with_input(&["apply", "-f", "-"], DEPLOYMENT);
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let table = k.ok(&["get", "deployments"]);
    assert!(table.contains("READY") && table.contains("web"), "{table}");
    let wide = k.ok(&["get", "deployment", "web", "-o", "wide"]);
    assert!(wide.contains("registry.local/demo-web:1"), "{wide}");
    let object = k.json(&["get", "deployment", "web"]);
    assert_eq!(object["spec"]["replicas"], 2);
    assert_eq!(
        object["spec"]["strategy"]["type"], "RollingUpdate",
        "defaults applied"
    );
    assert_eq!(object["metadata"]["generation"], 1);
    let yaml = k.ok(&["get", "deploy", "web", "-o", "yaml"]);
    assert!(yaml.contains("kind: Deployment"), "{yaml}");
    let name = k.ok(&["get", "deploy", "-o", "name"]);
    assert_eq!(name.trim(), "deployment.apps/web");
    let path = k.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].name}",
    ]);
    assert_eq!(path, "web");
    let cols = k.ok(&[
        "get",
        "deploy",
        "-o",
        "custom-columns=N:.metadata.name,R:.spec.replicas",
    ]);
    assert!(cols.contains("web") && cols.contains('2'), "{cols}");
    // Applying the same file again changes nothing; a changed one is patched.
    let again = k.ok_with_input(&["apply", "-f", "-"], DEPLOYMENT);
    assert!(again.contains("unchanged"), "{again}");
    let changed = DEPLOYMENT
        .replace("replicas: 2", "replicas: 3")
        .replace("value: \"1\"", "value: \"2\"");
    let out = k.ok_with_input(&["apply", "-f", "-"], &changed);
    assert!(out.contains("configured"), "{out}");
    let object = k.json(&["get", "deployment", "web"]);
    assert_eq!(object["spec"]["replicas"], 3);
    assert_eq!(
        object["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "2"
    );
    assert_eq!(object["metadata"]["generation"], 2);
    let out = k.ok(&["delete", "deployment", "web"]);
    assert!(out.contains("deleted"), "{out}");
    let gone = k.fails(&["get", "deployment", "web"]);
    assert!(
        gone.contains("NotFound") && gone.contains("\"web\" not found"),
        "{gone}"
    );
}

async fn label_annotate_patch_replace(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let k = cp.kubectl();
    k.ok_with_input(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: '1'}\n",
    );
    k.ok(&["label", "configmap", "settings", "tier=backend"]);
    k.ok(&["annotate", "configmap", "settings", "owner=team-a"]);
    let selected = k.ok(&["get", "cm", "-l", "tier=backend", "-o", "name"]);
    assert_eq!(selected.trim(), "configmap/settings");
    let none = k.ok(&["get", "cm", "-l", "tier=frontend", "-o", "name"]);
    assert!(none.trim().is_empty(), "{none}");
    k.ok(&[
        "patch",
        "configmap",
        "settings",
        "--type=merge",
        "-p",
        r#"{"data":{"b":"2"}}"#,
    ]);
    k.ok(&[
        "patch",
        "configmap",
        "settings",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/data/a","value":"10"}]"#,
    ]);
    k.ok(&[
        "patch",
        "configmap",
        "settings",
        "-p",
        r#"{"data":{"c":"3"}}"#,
    ]);
    let object = k.json(&["get", "cm", "settings"]);
    assert_eq!(
        object["data"],
        serde_json::json!({"a": "10", "b": "2", "c": "3"})
    );
    assert_eq!(object["metadata"]["labels"]["tier"], "backend");
    assert_eq!(object["metadata"]["annotations"]["owner"], "team-a");
    let mut replaced = object.clone();
    replaced["data"] = serde_json::json!({"only": "this"});
    k.ok_with_input(&["replace", "-f", "-"], &replaced.to_string());
    let object = k.json(&["get", "cm", "settings"]);
    assert_eq!(object["data"], serde_json::json!({"only": "this"}));
    // A stale resourceVersion is a conflict.
    let stale = replaced.to_string();
    let run = k.run_with_input(&["replace", "-f", "-"], &stale);
    assert!(
        !run.ok && run.stderr.contains("the object has been modified"),
        "{}",
        run.stderr
    );
    let by_field = k.ok(&[
        "get",
        "cm",
        "--field-selector",
        "metadata.name=settings",
        "-o",
        "name",
    ]);
    assert_eq!(by_field.trim(), "configmap/settings");
    let bad_field = k.fails(&["get", "cm", "--field-selector", "spec.nope=x"]);
    assert!(
        bad_field.contains("field label not supported"),
        "{bad_field}"
    );
}

async fn dry_run_and_server_side_apply(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let k = cp.kubectl();
    let out = k.ok_with_input(&["apply", "--dry-run=server", "-f", "-"], DEPLOYMENT);
    assert!(out.contains("(server dry run)"), "{out}");
    k.fails(&["get", "deployment", "web"]);
    let out = k.ok_with_input(&["apply", "--server-side", "-f", "-"], DEPLOYMENT);
    assert!(out.contains("serverside-applied"), "{out}");
    let object = k.json(&["get", "deployment", "web", "--show-managed-fields"]);
    assert_eq!(object["spec"]["replicas"], 2);
    let managers: Vec<String> = object["metadata"]["managedFields"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|f| f["manager"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert!(managers.contains(&"kubectl".to_string()), "{managers:?}");
    // Ownership: a field another manager set differently is a conflict until forced;
    // a label the applier stops applying is removed.
    k.ok(&["scale", "deployment", "web", "--replicas=3"]);
    let conflict = k.run_with_input(&["apply", "--server-side", "-f", "-"], DEPLOYMENT);
    assert!(
        !conflict.ok
            && conflict.stderr.contains("conflict")
            && conflict.stderr.contains(".spec.replicas"),
        "{}",
        conflict.stderr
    );
    let forced = k.run_with_input(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        DEPLOYMENT,
    );
    assert!(forced.ok, "{}", forced.stderr);
    assert_eq!(k.json(&["get", "deployment", "web"])["spec"]["replicas"], 2);
    let without_label = DEPLOYMENT.replacen("  labels: {app: web}\n", "", 1);
    k.ok_with_input(&["apply", "--server-side", "-f", "-"], &without_label);
    let labels = k.json(&["get", "deployment", "web"])["metadata"]["labels"].clone();
    assert!(
        labels.get("app").is_none(),
        "dropped label still there: {labels}"
    );
    let diff = k.run_with_input(
        &["diff", "-f", "-"],
        &DEPLOYMENT.replace("replicas: 2", "replicas: 5"),
    );
    assert!(
        diff.stdout.contains("replicas: 5"),
        "diff: {}{}",
        diff.stdout,
        diff.stderr
    );
}

async fn bad_input_gets_precise_errors(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let k = cp.kubectl();
    let unknown = k.run_with_input(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndataa: {a: b}\n",
    );
    assert!(
        !unknown.ok && unknown.stderr.contains("unknown field \"dataa\""),
        "{}",
        unknown.stderr
    );
    let invalid = k.run_with_input(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Not_Valid}\n",
    );
    assert!(
        !invalid.ok && invalid.stderr.contains("metadata.name: Invalid value"),
        "{}",
        invalid.stderr
    );
    let exists = k.run_with_input(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: twice}\n",
    );
    assert!(exists.ok, "{}", exists.stderr);
    let again = k.run_with_input(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: twice}\n",
    );
    assert!(
        !again.ok && again.stderr.contains("AlreadyExists"),
        "{}",
        again.stderr
    );
    let no_ns = k.run_with_input(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: nowhere}\n",
    );
    assert!(
        !no_ns.ok && no_ns.stderr.contains("namespaces \"nowhere\" not found"),
        "{}",
        no_ns.stderr
    );
    let pod = k.run_with_input(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\n",
    );
    assert!(
        !pod.ok
            && pod
                .stderr
                .contains("spec.containers[0].image: Required value"),
        "{}",
        pod.stderr
    );
}

async fn watch_sees_changes(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let k = cp.kubectl();
    k.ok_with_input(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: w0}\n",
    );
    let watcher = k.watch(&[
        "get",
        "configmaps",
        "-w",
        "-o",
        "name",
        "--request-timeout=60s",
    ]);
    // Once the existing object is printed, the initial list is done and the watch runs.
    watcher.wait_for("configmap/w0", 30);
    k.ok_with_input(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: w1}\n",
    );
    watcher.wait_for("configmap/w1", 30);
}

async fn namespaces_and_rbac(store: StoreKind) {
    // The namespace controller empties and finalizes the deleted namespace.
    let cp = TestControlPlane::start_with_controllers(store).await;
    let k = cp.kubectl();
    k.ok_with_input(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n",
    );
    k.ok_with_input(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: team-a}\n",
    );
    let out = k.ok(&["delete", "namespace", "team-a", "--timeout=30s"]);
    assert!(out.contains("deleted"), "{out}");
    let gone = k.fails(&["get", "namespace", "team-a"]);
    assert!(gone.contains("not found"), "{gone}");
    let can = k.ok(&["auth", "can-i", "create", "pods"]);
    assert_eq!(can.trim(), "yes");
}

async fn rbac_limits_users_to_what_they_were_granted(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let admin = cp.kubectl();
    admin.ok_with_input(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: Namespace
metadata: {name: b}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: in-a, namespace: a}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: in-b, namespace: b}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-views-a, namespace: a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: viewers}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: viewers}]
"#,
    );
    let alice = cp.kubectl_as(&cp.kubeconfig_for("alice", &[]));
    assert!(alice
        .ok(&["get", "cm", "-n", "a", "-o", "name"])
        .contains("configmap/in-a"));
    let other = alice.fails(&["get", "cm", "-n", "b"]);
    assert!(
        other.contains("User \"alice\" cannot list resource \"configmaps\"")
            && other.contains("namespace \"b\""),
        "{other}"
    );
    let write = alice.run_with_input(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: mine, namespace: a}\n",
    );
    assert!(
        !write.ok && write.stderr.contains("Forbidden"),
        "{}",
        write.stderr
    );
    let secrets = alice.fails(&["get", "secrets", "-n", "a"]);
    assert!(
        secrets.contains("Forbidden"),
        "view must not read secrets: {secrets}"
    );
    // A group-wide view binding: reads everywhere, still no writes.
    let carol = cp.kubectl_as(&cp.kubeconfig_for("carol", &["viewers"]));
    assert!(carol
        .ok(&["get", "cm", "-A", "-o", "name"])
        .contains("configmap/in-b"));
    let delete = carol.fails(&["delete", "cm", "in-b", "-n", "b"]);
    assert!(delete.contains("Forbidden"), "{delete}");
    let nobody = cp.kubectl_as(&cp.kubeconfig_for("mallory", &[]));
    let denied = nobody.fails(&["get", "cm", "-n", "a"]);
    assert!(denied.contains("Forbidden"), "{denied}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_three_member_etcd_agree() {
    let cp = TestControlPlane::start(StoreKind::Etcd3).await;
    let second = cp.start_replica(1).await;
    let first = cp.kubectl();
    let other = cp.kubectl_as(&second.kubeconfig);
    first.ok_with_input(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: before}\n",
    );
    let watcher = other.watch(&[
        "get",
        "configmaps",
        "-w",
        "-o",
        "name",
        "--request-timeout=60s",
    ]);
    watcher.wait_for("configmap/before", 30);
    first.ok_with_input(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: shared}\ndata: {k: v}\n",
    );
    let read = other.json(&["get", "cm", "shared"]);
    assert_eq!(read["data"]["k"], "v");
    // Delivered by the other replica's watch, not by its initial list.
    watcher.wait_for("configmap/shared", 30);
    // Writes through the second replica conflict correctly with the first's view.
    other.ok(&["label", "cm", "shared", "via=second"]);
    assert_eq!(
        first.json(&["get", "cm", "shared"])["metadata"]["labels"]["via"],
        "second"
    );
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wg]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.count, statusReplicasPath: .status.count}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1, description: How big the widget is.}
              color: {type: string, default: blue}
              count: {type: integer}
          status:
            type: object
            properties:
              ready: {type: boolean}
              count: {type: integer}
"#;

async fn custom_resources(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let k = cp.kubectl();
    k.ok_with_input(&["apply", "-f", "-"], CRD);
    k.ok(&[
        "wait",
        "--for=condition=established",
        "crd/widgets.example.com",
        "--timeout=20s",
    ]);
    let out = k.ok_with_input(
        &["apply", "-f", "-"],
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n",
    );
    assert!(out.contains("widget.example.com/w1 created"), "{out}");
    let table = k.ok(&["get", "widgets"]);
    assert!(table.contains("SIZE") && table.contains('3'), "{table}");
    let short = k.ok(&["get", "wg", "w1", "-o", "jsonpath={.spec.color}"]);
    assert_eq!(short, "blue", "schema default applied");
    let explain = k.ok(&["explain", "widget.spec.size"]);
    assert!(explain.contains("How big the widget is"), "{explain}");
    let bad = k.run_with_input(
        &["apply", "-f", "-"],
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: 0, shape: round}\n",
    );
    assert!(
        !bad.ok && bad.stderr.contains("unknown field \"spec.shape\""),
        "{}",
        bad.stderr
    );
    let bad = k.run_with_input(
        &["apply", "-f", "-"],
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: 0}\n",
    );
    assert!(
        !bad.ok && bad.stderr.contains("spec.size"),
        "{}",
        bad.stderr
    );
    k.ok(&[
        "patch",
        "widget",
        "w1",
        "--type=merge",
        "-p",
        r#"{"spec":{"size":5}}"#,
    ]);
    assert_eq!(
        k.ok(&["get", "widget", "w1", "-o", "jsonpath={.spec.size}"]),
        "5"
    );
    k.ok(&["delete", "crd", "widgets.example.com"]);
    let gone = k.fails(&["get", "widgets"]);
    assert!(
        gone.contains("the server doesn't have a resource type")
            || gone.contains("could not find the requested resource"),
        "{gone}"
    );
}

async fn describe_scale_edit_wait(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let k = cp.kubectl();
    k.ok_with_input(&["apply", "-f", "-"], DEPLOYMENT);
    let described = k.ok(&["describe", "deployment", "web"]);
    assert!(
        described.contains("Replicas:") && described.contains("registry.local/demo-web:1"),
        "{described}"
    );
    let out = k.ok(&["scale", "deployment", "web", "--replicas=4"]);
    assert!(out.contains("scaled"), "{out}");
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "4"
    );
    // kubectl edit runs $KUBE_EDITOR on a temporary file.
    let editor = cp.dir().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/replicas: 4/replicas: 6/' \"$1\"\n",
    )
    .expect("editor");
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&editor)
        .status()
        .expect("chmod");
    let edited = std::process::Command::new("kubectl")
        .args(["--kubeconfig"])
        .arg(cp.kubeconfig())
        .args(["edit", "deployment", "web"])
        .env("KUBE_EDITOR", &editor)
        .output()
        .expect("kubectl edit");
    assert!(
        edited.status.success(),
        "{}",
        String::from_utf8_lossy(&edited.stderr)
    );
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "6"
    );
    let waited = k.ok(&[
        "wait",
        "--for=jsonpath={.spec.replicas}=6",
        "deployment/web",
        "--timeout=10s",
    ]);
    assert!(waited.contains("condition met"), "{waited}");
    k.ok(&["delete", "deployment", "web", "--wait=false"]);
    let gone = k.ok(&["wait", "--for=delete", "deployment/web", "--timeout=10s"]);
    assert!(gone.contains("condition met") || gone.is_empty(), "{gone}");
}

async fn services_get_cluster_ips_and_node_ports(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let k = cp.kubectl();
    k.ok_with_input(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: headless}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 80}]
"#,
    );
    let web = k.json(&["get", "service", "web"]);
    let ip = web["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let parsed: std::net::Ipv4Addr = ip.parse().expect("cluster IP");
    assert!(
        parsed.octets()[0] == 10 && (96..112).contains(&parsed.octets()[1]),
        "{ip} outside 10.96.0.0/12"
    );
    let node_port = web["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .expect("node port");
    assert!((30000..=32767).contains(&node_port));
    assert_eq!(web["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(
        k.json(&["get", "service", "headless"])["spec"]["clusterIP"],
        "None"
    );
    // Re-applying keeps the allocations.
    k.ok_with_input(&["apply", "-f", "-"], "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 9090}]\n");
    let again = k.json(&["get", "service", "web"]);
    assert_eq!(again["spec"]["clusterIP"].as_str(), Some(ip.as_str()));
    assert_eq!(
        again["spec"]["ports"][0]["nodePort"].as_i64(),
        Some(node_port)
    );
    let taken = k.run_with_input(
        &["apply", "-f", "-"],
        &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: other}}\nspec:\n  type: NodePort\n  ports: [{{port: 81, nodePort: {node_port}}}]\n"),
    );
    assert!(
        !taken.ok && taken.stderr.contains("provided port is already allocated"),
        "{}",
        taken.stderr
    );
    let out_of_range = k.run_with_input(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: other}\nspec:\n  type: NodePort\n  ports: [{port: 81, nodePort: 80}]\n",
    );
    assert!(
        !out_of_range.ok && out_of_range.stderr.contains("not in the valid range"),
        "{}",
        out_of_range.stderr
    );
    // A deleted Service's port can be taken by the next one.
    k.ok(&["delete", "service", "web"]);
    k.ok_with_input(
        &["apply", "-f", "-"],
        &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: other}}\nspec:\n  type: NodePort\n  ports: [{{port: 81, nodePort: {node_port}}}]\n"),
    );
}

async fn imperative_create_commands(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let k = cp.kubectl();
    k.ok(&["create", "namespace", "apps"]);
    k.ok(&[
        "create",
        "configmap",
        "settings",
        "-n",
        "apps",
        "--from-literal=mode=fast",
    ]);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "-n",
        "apps",
        "--from-literal=password=s3cret",
    ]);
    k.ok(&["create", "serviceaccount", "robot", "-n", "apps"]);
    k.ok(&[
        "create",
        "role",
        "reader",
        "-n",
        "apps",
        "--verb=get,list",
        "--resource=configmaps",
    ]);
    k.ok(&[
        "create",
        "rolebinding",
        "robot-reads",
        "-n",
        "apps",
        "--role=reader",
        "--serviceaccount=apps:robot",
    ]);
    k.ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "apps",
        "--image=registry.local/demo-web:1",
        "--replicas=2",
    ]);
    let secret = k.json(&["get", "secret", "creds", "-n", "apps"]);
    assert_eq!(
        secret["data"]["password"], "czNjcmV0",
        "base64 of the literal"
    );
    assert_eq!(secret["type"], "Opaque");
    let role = k.json(&["get", "role", "reader", "-n", "apps"]);
    assert_eq!(
        role["rules"][0]["verbs"],
        serde_json::json!(["get", "list"])
    );
    assert_eq!(
        k.json(&["get", "deploy", "web", "-n", "apps"])["spec"]["replicas"],
        2
    );
    let token = k.ok(&["create", "token", "robot", "-n", "apps"]);
    assert_eq!(token.trim().split('.').count(), 3, "a JWT: {token}");
    let whoami = k.ok(&["auth", "whoami", "-o", "json"]);
    assert!(whoami.contains("\"admin\""), "{whoami}");
    let no = k.run(&["auth", "can-i", "delete", "nodes"]);
    assert_eq!(no.stdout.trim(), "yes", "admin may do everything");
}

async fn autoscaling_v1_and_v2_share_one_object(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let k = cp.kubectl();
    k.ok_with_input(
        &["apply", "-f", "-"],
        r#"
apiVersion: autoscaling/v1
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 4
  targetCPUUtilizationPercentage: 60
"#,
    );
    let v2 = k.json(&["get", "horizontalpodautoscalers.v2.autoscaling", "web"]);
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert_eq!(
        v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        60
    );
    k.ok(&[
        "patch",
        "horizontalpodautoscalers.v2.autoscaling",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":30}}}}"#,
    ]);
    let v1 = k.json(&["get", "horizontalpodautoscalers.v1.autoscaling", "web"]);
    assert_eq!(v1["apiVersion"], "autoscaling/v1");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
    // A v1 read-modify-write keeps what only v2 can say.
    k.ok(&[
        "patch",
        "horizontalpodautoscalers.v1.autoscaling",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"maxReplicas":6}}"#,
    ]);
    let v2 = k.json(&["get", "horizontalpodautoscalers.v2.autoscaling", "web"]);
    assert_eq!(v2["spec"]["maxReplicas"], 6);
    assert_eq!(
        v2["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        30
    );
}

async fn events_in_both_groups_are_one(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let k = cp.kubectl();
    k.ok_with_input(
        &["create", "-f", "-"],
        r#"
apiVersion: events.k8s.io/v1
kind: Event
metadata: {name: web.1}
eventTime: "2026-01-01T00:00:00.000000Z"
regarding: {kind: Pod, name: web, namespace: default}
reason: Pulled
note: Successfully pulled image
type: Normal
action: Pull
reportingController: korvet.io/node
reportingInstance: node-1
"#,
    );
    let core = k.json(&["get", "events.v1.", "web.1"]);
    assert_eq!(core["apiVersion"], "v1");
    assert_eq!(core["message"], "Successfully pulled image");
    assert_eq!(core["involvedObject"]["name"], "web");
    let selected = k.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
        "-o",
        "name",
    ]);
    assert!(selected.contains("web.1"), "{selected}");
    let listed = k.ok(&["events"]);
    assert!(listed.contains("Successfully pulled image"), "{listed}");
}

/// kubectl validates a `kind: List` against `/openapi/v2` in protobuf; `get -o yaml`
/// output (a List) applies back as it is.
async fn lists_apply_and_round_trip(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let k = cp.kubectl();
    let list = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: one}
  data: {a: "1"}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: two}
  data: {b: "2"}
"#;
    let out = k.ok_with_input(&["apply", "-f", "-"], list);
    assert!(
        out.contains("configmap/one created") && out.contains("configmap/two created"),
        "{out}"
    );
    let dumped = k.ok(&["get", "configmap", "one", "two", "-o", "yaml"]);
    assert!(dumped.contains("kind: List"), "{dumped}");
    let again = k.ok_with_input(&["apply", "-f", "-"], &dumped);
    assert!(again.contains("configmap/one"), "{again}");
    // Client-side validation sees the definitions: a field of the wrong type is refused.
    let bad = list.replace("data: {a: \"1\"}", "data: [1]");
    let run = k.run_with_input(&["apply", "-f", "-"], &bad);
    assert!(
        !run.ok,
        "a list with a malformed item applied:\n{}",
        run.stdout
    );
}

on_every_store!(
    lists_apply_and_round_trip,
    events_in_both_groups_are_one,
    autoscaling_v1_and_v2_share_one_object,
    imperative_create_commands,
    services_get_cluster_ips_and_node_ports,
    describe_scale_edit_wait,
    custom_resources,
    rbac_limits_users_to_what_they_were_granted,
    discovery_and_basic_reads,
    apply_get_in_every_format_and_delete,
    label_annotate_patch_replace,
    dry_run_and_server_side_apply,
    bad_input_gets_precise_errors,
    watch_sees_changes,
    namespaces_and_rbac,
);
