use serde_json::{json, Value};

use super::apply;
use crate::patch::schema::{PatchSchema, SchemaNode};
use crate::patch::PatchError;

fn kind(group: &str, version: &str, kind: &str) -> SchemaNode<'static> {
    PatchSchema::builtin()
        .for_kind(group, version, kind)
        .unwrap_or_else(|| panic!("{group}/{version}/{kind} is in the builtin schema"))
}

fn pod_schema() -> SchemaNode<'static> {
    kind("", "v1", "Pod")
}

#[track_caller]
fn smp(schema: SchemaNode<'_>, original: &Value, patch: &Value) -> Value {
    match apply(original, patch, Some(schema)) {
        Ok(v) => v,
        Err(err) => panic!("patch failed: {err}\npatch: {patch}"),
    }
}

#[track_caller]
fn smp_err(schema: SchemaNode<'_>, original: &Value, patch: &Value) -> PatchError {
    match apply(original, patch, Some(schema)) {
        Ok(v) => panic!("patch should fail but gave {v}\npatch: {patch}"),
        Err(err) => err,
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|items| items.iter().filter_map(|i| i["name"].as_str()).collect())
        .unwrap_or_default()
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "namespace": "default",
            "labels": {"app": "web", "tier": "front"},
            "annotations": {"note": "first"},
            "finalizers": ["a.example.com/x", "b.example.com/y", "c.example.com/z"]
        },
        "spec": {
            "containers": [
                {
                    "name": "nginx",
                    "image": "nginx:1.25",
                    "ports": [{"containerPort": 80, "name": "http"}],
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    "resources": {"limits": {"cpu": "500m"}, "requests": {"cpu": "100m"}}
                },
                {"name": "sidecar", "image": "busybox", "terminationMessagePath": "/dev/termination-log"}
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
            "tolerations": [
                {"key": "a", "operator": "Exists"},
                {"key": "b", "operator": "Exists"}
            ]
        },
        "status": {"phase": "Running"}
    })
}

// --- Containers and other lists merged by key -------------------------------------------

#[test]
fn containers_merge_by_name_updating_one_image() {
    let out = smp(
        pod_schema(),
        &pod(),
        &json!({"spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}}),
    );
    let containers = &out["spec"]["containers"];
    assert_eq!(names(containers), ["nginx", "sidecar"]);
    assert_eq!(containers[0]["image"], "nginx:1.27");
    assert_eq!(
        containers[0]["ports"],
        json!([{"containerPort": 80, "name": "http"}])
    );
    assert_eq!(containers[1], pod()["spec"]["containers"][1]);
    assert_eq!(out["status"], pod()["status"]);
}

#[test]
fn adding_a_container_without_order_directive_puts_it_first_as_upstream_does() {
    let out = smp(
        pod_schema(),
        &pod(),
        &json!({"spec": {"containers": [{"name": "log", "image": "fluentd"}]}}),
    );
    assert_eq!(
        names(&out["spec"]["containers"]),
        ["log", "nginx", "sidecar"]
    );
    assert_eq!(
        out["spec"]["containers"][0],
        json!({"name": "log", "image": "fluentd"})
    );
}

#[test]
fn deleting_a_container_with_patch_delete() {
    let out = smp(
        pod_schema(),
        &pod(),
        &json!({"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}),
    );
    assert_eq!(names(&out["spec"]["containers"]), ["nginx"]);
    // Deleting an absent item is not an error.
    let out = smp(
        pod_schema(),
        &pod(),
        &json!({"spec": {"containers": [{"name": "ghost", "$patch": "delete"}]}}),
    );
    assert_eq!(names(&out["spec"]["containers"]), ["nginx", "sidecar"]);
}

#[test]
fn set_element_order_places_new_container_and_keeps_server_only_ones() {
    let mut live = pod();
    live["spec"]["containers"] = json!([
        {"name": "a", "image": "a:1"},
        {"name": "b", "image": "b:1"},
        {"name": "injected", "image": "mesh-proxy"}
    ]);
    let patch = json!({"spec": {
        "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}, {"name": "new"}],
        "containers": [{"name": "new", "image": "new:1"}]
    }});
    let out = smp(pod_schema(), &live, &patch);
    assert_eq!(
        names(&out["spec"]["containers"]),
        ["a", "b", "new", "injected"]
    );

    // The directive alone reorders.
    let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}});
    let out = smp(pod_schema(), &live, &patch);
    assert_eq!(names(&out["spec"]["containers"]), ["b", "a", "injected"]);
}

#[test]
fn set_element_order_must_agree_with_the_patch_list() {
    let patch = json!({"spec": {
        "$setElementOrder/containers": [{"name": "nginx"}, {"name": "sidecar"}],
        "containers": [{"name": "sidecar", "image": "x"}, {"name": "nginx", "image": "y"}]
    }});
    let err = smp_err(pod_schema(), &pod(), &patch);
    assert!(err.to_string().contains("doesn't match"), "{err}");
    assert_eq!(err.http_status(), 400);
}

#[test]
fn env_vars_merge_by_name() {
    let patch = json!({"spec": {"containers": [{
        "name": "nginx",
        "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]
    }]}});
    let out = smp(pod_schema(), &pod(), &patch);
    assert_eq!(
        out["spec"]["containers"][0]["env"],
        json!([
            {"name": "A", "value": "1"},
            {"name": "B", "value": "3"},
            {"name": "C", "value": "4"}
        ])
    );
}

#[test]
fn env_var_value_from_replaced_by_value() {
    let mut live = pod();
    live["spec"]["containers"][0]["env"] = json!([
        {"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    ]);
    let patch = json!({"spec": {"containers": [{
        "name": "nginx",
        "env": [{"name": "A", "value": "plain", "valueFrom": null}]
    }]}});
    let out = smp(pod_schema(), &live, &patch);
    assert_eq!(
        out["spec"]["containers"][0]["env"],
        json!([{"name": "A", "value": "plain"}])
    );
}

#[test]
fn container_ports_merge_by_container_port() {
    let patch = json!({"spec": {"containers": [{
        "name": "nginx",
        "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443, "name": "https"}]
    }]}});
    let out = smp(pod_schema(), &pod(), &patch);
    assert_eq!(
        out["spec"]["containers"][0]["ports"],
        json!([
            {"containerPort": 80, "name": "http", "protocol": "TCP"},
            {"containerPort": 443, "name": "https"}
        ])
    );
}

#[test]
fn service_ports_merge_by_port() {
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"app": "web"},
            "clusterIP": "10.0.0.10",
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}
            ]
        }
    });
    let patch = json!({"spec": {"ports": [{"port": 80, "targetPort": "web"}]}});
    let out = smp(kind("", "v1", "Service"), &service, &patch);
    assert_eq!(
        out["spec"]["ports"],
        json!([
            {"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
            {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}
        ])
    );
    assert_eq!(out["spec"]["clusterIP"], "10.0.0.10");

    let patch = json!({"spec": {"ports": [{"port": 443, "$patch": "delete"}]}});
    let out = smp(kind("", "v1", "Service"), &service, &patch);
    assert_eq!(names(&out["spec"]["ports"]), ["http"]);
}

#[test]
fn deployment_nested_container_resources_merge() {
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api", "generation": 4},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{
                    "name": "api",
                    "image": "api:1",
                    "resources": {
                        "limits": {"cpu": "1", "memory": "512Mi"},
                        "requests": {"cpu": "250m"}
                    }
                }]}
            }
        }
    });
    let patch = json!({"spec": {"template": {"spec": {"containers": [{
        "name": "api",
        "resources": {"limits": {"cpu": "2", "memory": null}, "requests": {"memory": "256Mi"}}
    }]}}}});
    let out = smp(kind("apps", "v1", "Deployment"), &deployment, &patch);
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][0]["resources"],
        json!({"limits": {"cpu": "2"}, "requests": {"cpu": "250m", "memory": "256Mi"}})
    );
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][0]["image"],
        "api:1"
    );
    assert_eq!(out["spec"]["replicas"], 2);
}

// --- Directives ---------------------------------------------------------------------------

#[test]
fn retain_keys_on_volumes_drops_the_old_volume_source() {
    let patch = json!({"spec": {
        "$setElementOrder/volumes": [{"name": "data"}],
        "volumes": [{
            "$retainKeys": ["hostPath", "name"],
            "name": "data",
            "hostPath": {"path": "/srv/data"}
        }]
    }});
    let out = smp(pod_schema(), &pod(), &patch);
    assert_eq!(
        out["spec"]["volumes"],
        json!([{"name": "data", "hostPath": {"path": "/srv/data"}}])
    );
}

#[test]
fn retain_keys_must_cover_every_field_the_patch_sets() {
    let patch = json!({"spec": {"volumes": [{
        "$retainKeys": ["name"],
        "name": "data",
        "hostPath": {"path": "/srv/data"}
    }]}});
    let err = smp_err(pod_schema(), &pod(), &patch);
    assert!(matches!(err, PatchError::Unprocessable { .. }), "{err:?}");
    assert_eq!(err.http_status(), 422);
    assert!(
        err.to_string().starts_with("spec.volumes[name=data]:"),
        "{err}"
    );

    let patch = json!({"spec": {"volumes": [{"$retainKeys": "name", "name": "data"}]}});
    let err = smp_err(pod_schema(), &pod(), &patch);
    assert!(matches!(err, PatchError::Malformed { .. }), "{err:?}");
}

#[test]
fn retain_keys_switches_deployment_strategy() {
    let deployment = json!({"spec": {"strategy": {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}
    }}});
    let patch = json!({"spec": {"strategy": {
        "$retainKeys": ["type"],
        "rollingUpdate": null,
        "type": "Recreate"
    }}});
    let out = smp(kind("apps", "v1", "Deployment"), &deployment, &patch);
    assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
}

#[test]
fn finalizers_merge_as_a_set_and_delete_from_primitive_list() {
    let schema = pod_schema();
    let out = smp(
        schema,
        &pod(),
        &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b.example.com/y"]}}),
    );
    assert_eq!(
        out["metadata"]["finalizers"],
        json!(["a.example.com/x", "c.example.com/z"])
    );

    let out = smp(
        schema,
        &pod(),
        &json!({"metadata": {"finalizers": ["c.example.com/z", "d.example.com/w"]}}),
    );
    assert_eq!(
        out["metadata"]["finalizers"],
        json!([
            "a.example.com/x",
            "b.example.com/y",
            "c.example.com/z",
            "d.example.com/w"
        ])
    );

    // kubectl apply removing one finalizer and adding another.
    let out = smp(
        schema,
        &pod(),
        &json!({"metadata": {
            "$setElementOrder/finalizers": ["a.example.com/x", "e.example.com/v", "c.example.com/z"],
            "$deleteFromPrimitiveList/finalizers": ["b.example.com/y"],
            "finalizers": ["e.example.com/v"]
        }}),
    );
    assert_eq!(
        out["metadata"]["finalizers"],
        json!(["a.example.com/x", "e.example.com/v", "c.example.com/z"])
    );

    // Deleting from an absent list does not create it.
    let mut bare = pod();
    if let Some(meta) = bare["metadata"].as_object_mut() {
        meta.remove("finalizers");
    }
    let out = smp(
        schema,
        &bare,
        &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
    );
    assert!(out["metadata"].get("finalizers").is_none());
}

#[test]
fn malformed_directives_are_rejected() {
    let schema = pod_schema();
    let cases = [
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": "x"}}),
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [{"a": 1}]}}),
        json!({"metadata": {"$deleteFromPrimitiveList": ["x"]}}),
        json!({"spec": {"$setElementOrder/containers": {"name": "x"}}}),
        json!({"spec": {"$setElementOrder/containers": ["nginx"]}}),
        json!({"metadata": {"$setElementOrder/finalizers": [{"name": "x"}]}}),
        json!({"metadata": {"labels": {"$patch": "merge"}}}),
        json!({"metadata": {"labels": {"$patch": 1}}}),
        json!({"spec": {"containers": [{"name": "nginx", "$patch": "bogus"}]}}),
        json!({"spec": {"containers": [{"name": "nginx", "$patch": "merge"}]}}),
        json!({"spec": {"containers": [{"$patch": "delete"}]}}),
        json!({"metadata": {"$retainKeys": [1]}}),
    ];
    for patch in cases {
        let err = smp_err(schema, &pod(), &patch);
        assert!(
            matches!(err.http_status(), 400 | 422),
            "{patch}: unexpected status for {err}"
        );
    }
    let err = smp_err(schema, &pod(), &json!(["not", "an", "object"]));
    assert_eq!(
        err.to_string(),
        "<root>: a strategic merge patch must be a JSON object, got array"
    );
}

#[test]
fn null_deletes_a_map_key_and_labels_annotations_merge() {
    let patch = json!({"metadata": {
        "labels": {"tier": null, "team": "payments"},
        "annotations": {"note": "second", "kubernetes.io/change-cause": "deploy"}
    }});
    let out = smp(pod_schema(), &pod(), &patch);
    assert_eq!(
        out["metadata"]["labels"],
        json!({"app": "web", "team": "payments"})
    );
    assert_eq!(
        out["metadata"]["annotations"],
        json!({"note": "second", "kubernetes.io/change-cause": "deploy"})
    );
    // A null for an absent key is ignored, not stored.
    let out = smp(
        pod_schema(),
        &pod(),
        &json!({"metadata": {"labels": {"absent": null}}}),
    );
    assert_eq!(out["metadata"]["labels"], pod()["metadata"]["labels"]);
    // And a null removes whole subtrees.
    let out = smp(
        pod_schema(),
        &pod(),
        &json!({"spec": {"volumes": null}, "status": null}),
    );
    assert!(out["spec"].get("volumes").is_none());
    assert!(out.get("status").is_none());
}

#[test]
fn patch_replace_on_a_list() {
    let patch = json!({"spec": {"containers": [
        {"$patch": "replace"},
        {"name": "only", "image": "only:1"}
    ]}});
    let out = smp(pod_schema(), &pod(), &patch);
    assert_eq!(
        out["spec"]["containers"],
        json!([{"name": "only", "image": "only:1"}])
    );

    let patch = json!({"metadata": {"ownerReferences": [{"$patch": "replace"}]}});
    let out = smp(pod_schema(), &pod(), &patch);
    assert_eq!(out["metadata"]["ownerReferences"], json!([]));
}

#[test]
fn patch_replace_and_delete_on_a_map() {
    let out = smp(
        pod_schema(),
        &pod(),
        &json!({"metadata": {"labels": {"$patch": "replace", "only": "this"}}}),
    );
    assert_eq!(out["metadata"]["labels"], json!({"only": "this"}));

    let out = smp(
        pod_schema(),
        &pod(),
        &json!({"spec": {"containers": [{"name": "nginx", "resources": {"$patch": "replace", "limits": {"cpu": "1"}}}]}}),
    );
    assert_eq!(
        out["spec"]["containers"][0]["resources"],
        json!({"limits": {"cpu": "1"}})
    );

    // Upstream empties the map rather than removing the field.
    let out = smp(
        pod_schema(),
        &pod(),
        &json!({"metadata": {"annotations": {"$patch": "delete"}}}),
    );
    assert_eq!(out["metadata"]["annotations"], json!({}));
    // ... but a deleted map that did not exist is not created.
    let out = smp(
        pod_schema(),
        &pod(),
        &json!({"spec": {"securityContext": {"$patch": "delete"}}}),
    );
    assert!(out["spec"].get("securityContext").is_none());
}

#[test]
fn patch_strategy_replace_replaces_the_whole_object() {
    let pdb = json!({"spec": {
        "minAvailable": 1,
        "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "x", "operator": "Exists"}]}
    }});
    let patch = json!({"spec": {"selector": {"matchLabels": {"app": "api"}}}});
    let out = smp(kind("policy", "v1", "PodDisruptionBudget"), &pdb, &patch);
    assert_eq!(
        out["spec"]["selector"],
        json!({"matchLabels": {"app": "api"}})
    );
    assert_eq!(out["spec"]["minAvailable"], 1);
}

#[test]
fn atomic_lists_are_replaced() {
    let patch = json!({"spec": {"tolerations": [{"key": "c", "operator": "Equal", "value": "v"}]}});
    let out = smp(pod_schema(), &pod(), &patch);
    assert_eq!(
        out["spec"]["tolerations"],
        json!([{"key": "c", "operator": "Equal", "value": "v"}])
    );
    // A container's args are atomic too.
    let mut live = pod();
    live["spec"]["containers"][0]["args"] = json!(["--a", "--b"]);
    let patch = json!({"spec": {"containers": [{"name": "nginx", "args": ["--c"]}]}});
    let out = smp(pod_schema(), &live, &patch);
    assert_eq!(out["spec"]["containers"][0]["args"], json!(["--c"]));
}

#[test]
fn kubectl_apply_patch_shape() {
    let last_applied_old = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","namespace":"default"},"spec":{"replicas":1,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"env":[{"name":"A","value":"1"}],"image":"nginx:1.25","name":"web","ports":[{"containerPort":80}]}]}}}}"#;
    let last_applied_new = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"annotations":{},"name":"web","namespace":"default"},"spec":{"replicas":3,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"env":[{"name":"A","value":"1"},{"name":"B","value":"2"}],"image":"nginx:1.27","name":"web"}]}}}}"#;
    let live = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "default",
            "uid": "6f1a3c1e-0000-4000-8000-000000000001",
            "resourceVersion": "1042",
            "generation": 1,
            "annotations": {
                "deployment.kubernetes.io/revision": "1",
                "kubectl.kubernetes.io/last-applied-configuration": format!("{last_applied_old}\n")
            }
        },
        "spec": {
            "replicas": 1,
            "progressDeadlineSeconds": 600,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{
                        "name": "web",
                        "image": "nginx:1.25",
                        "imagePullPolicy": "IfNotPresent",
                        "env": [{"name": "A", "value": "1"}],
                        "ports": [{"containerPort": 80, "protocol": "TCP"}],
                        "terminationMessagePath": "/dev/termination-log"
                    }],
                    "restartPolicy": "Always",
                    "dnsPolicy": "ClusterFirst"
                }
            }
        },
        "status": {"replicas": 1, "observedGeneration": 1}
    });
    // What kubectl 1.32 sends for the change from `last_applied_old` to `last_applied_new`.
    let patch = json!({
        "metadata": {"annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": format!("{last_applied_new}\n")
        }},
        "spec": {
            "replicas": 3,
            "template": {"spec": {
                "$setElementOrder/containers": [{"name": "web"}],
                "containers": [{
                    "$setElementOrder/env": [{"name": "A"}, {"name": "B"}],
                    "env": [{"name": "B", "value": "2"}],
                    "image": "nginx:1.27",
                    "name": "web",
                    "ports": null
                }]
            }}
        }
    });
    let out = smp(kind("apps", "v1", "Deployment"), &live, &patch);
    let mut expected = live.clone();
    expected["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
        json!(format!("{last_applied_new}\n"));
    expected["spec"]["replicas"] = json!(3);
    let container = &mut expected["spec"]["template"]["spec"]["containers"][0];
    container["image"] = json!("nginx:1.27");
    container["env"] = json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]);
    if let Some(c) = container.as_object_mut() {
        c.remove("ports");
    }
    assert_eq!(out, expected);
}

#[test]
fn type_errors_name_the_field() {
    let schema = pod_schema();
    let err = smp_err(schema, &pod(), &json!({"spec": {"containers": "nginx"}}));
    assert_eq!(
        err.to_string(),
        "spec.containers: expected array, got string"
    );
    assert_eq!(err.http_status(), 400);

    let err = smp_err(
        schema,
        &pod(),
        &json!({"spec": {"containers": [{"name": "nginx", "image": {"tag": "1"}}]}}),
    );
    assert_eq!(
        err.to_string(),
        "spec.containers[name=nginx].image: expected string, got object"
    );

    let err = smp_err(schema, &pod(), &json!({"spec": {"containers": ["nginx"]}}));
    assert_eq!(
        err.to_string(),
        "spec.containers[0]: expected object, got string"
    );

    let err = smp_err(schema, &pod(), &json!({"metadata": {"labels": {"app": 3}}}));
    assert_eq!(
        err.to_string(),
        "metadata.labels.app: expected string, got number"
    );

    let err = smp_err(
        kind("apps", "v1", "Deployment"),
        &json!({}),
        &json!({"spec": {"replicas": "three"}}),
    );
    assert_eq!(
        err.to_string(),
        "spec.replicas: expected integer, got string"
    );

    let err = smp_err(
        kind("apps", "v1", "Deployment"),
        &json!({}),
        &json!({"spec": {"replicas": 1.5}}),
    );
    assert!(matches!(err, PatchError::TypeMismatch { .. }), "{err:?}");

    // IntOrString and Quantity take both.
    let service = kind("", "v1", "Service");
    smp(
        service,
        &json!({}),
        &json!({"spec": {"ports": [{"port": 80, "targetPort": "http"}]}}),
    );
    smp(
        service,
        &json!({}),
        &json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}),
    );
    smp(
        schema,
        &pod(),
        &json!({"spec": {"containers": [{"name": "nginx", "resources": {"limits": {"cpu": 2}}}]}}),
    );
}

#[test]
fn missing_merge_key_is_reported_with_its_position() {
    let err = smp_err(
        pod_schema(),
        &pod(),
        &json!({"spec": {"containers": [{"name": "nginx"}, {"image": "anonymous"}]}}),
    );
    assert_eq!(
        err,
        PatchError::MissingMergeKey {
            path: "spec.containers[1]".to_owned(),
            key: "name".to_owned(),
            item: r#"{"image":"anonymous"}"#.to_owned(),
        }
    );
    assert_eq!(err.http_status(), 422);
    assert_eq!(
        err.to_string(),
        r#"spec.containers[1]: list item {"image":"anonymous"} does not contain declared merge key "name""#
    );
}

#[test]
fn unknown_fields_merge_like_json_merge_patch() {
    let mut live = pod();
    live["spec"]["x-extension"] = json!({"list": [1, 2], "map": {"a": 1}});
    let patch = json!({"spec": {"x-extension": {"list": [3], "map": {"b": 2}}}});
    let out = smp(pod_schema(), &live, &patch);
    assert_eq!(
        out["spec"]["x-extension"],
        json!({"list": [3], "map": {"a": 1, "b": 2}})
    );
}

#[test]
fn custom_resource_without_schema_is_json_merge() {
    let widget = json!({
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "labels": {"a": "1"}, "finalizers": ["x"]},
        "spec": {"sizes": [1, 2, 3], "parts": [{"name": "a", "n": 1}], "color": "red", "nested": {"k": "v"}}
    });
    let patch = json!({
        "metadata": {"labels": {"a": null, "b": "2"}, "finalizers": ["y"]},
        "spec": {"sizes": [4], "parts": [{"name": "b"}], "color": null, "nested": {"j": "w"}}
    });
    let out = apply(&widget, &patch, None).expect("no-schema patch");
    assert_eq!(out, crate::patch::merge::apply(&widget, &patch));
    assert_eq!(out["spec"]["parts"], json!([{"name": "b"}]));
    assert_eq!(out["metadata"]["finalizers"], json!(["y"]));
    assert!(PatchSchema::builtin()
        .for_kind("example.com", "v1", "Widget")
        .is_none());
}

#[test]
fn new_subtrees_are_cleaned_of_directives_and_nulls() {
    let mut live = pod();
    if let Some(spec) = live["spec"].as_object_mut() {
        spec.remove("volumes");
    }
    let patch = json!({"spec": {
        "initContainers": [
            {"name": "init", "image": "init:1", "env": [{"name": "X", "value": null}, {"name": "Y", "$patch": "delete"}]},
            {"name": "gone", "$patch": "delete"}
        ],
        "volumes": [{"name": "v", "$retainKeys": ["name", "emptyDir"], "emptyDir": {"medium": null}}]
    }});
    let out = smp(pod_schema(), &live, &patch);
    assert_eq!(
        out["spec"]["initContainers"],
        json!([{"name": "init", "image": "init:1", "env": [{"name": "X"}]}])
    );
    assert_eq!(
        out["spec"]["volumes"],
        json!([{"name": "v", "emptyDir": {}}])
    );
}

#[test]
fn empty_patch_is_identity() {
    assert_eq!(smp(pod_schema(), &pod(), &json!({})), pod());
    assert_eq!(apply(&pod(), &json!({}), None).ok(), Some(pod()));
}

// --- Upstream test cases (k8s.io/apimachinery strategicpatch patch_test.go) --------------
//
// Ported against a schema shaped like upstream's `MergeItem` test struct. Upstream's YAML
// uses integer names; here they are strings because the schema types them.

fn merge_item_schema() -> &'static PatchSchema {
    static SCHEMA: std::sync::LazyLock<PatchSchema> = std::sync::LazyLock::new(|| {
        let item = "#/$defs/MergeItem";
        PatchSchema::from_value(json!({"$defs": {
            "MergeItem": {
                "type": "object",
                "x-kubernetes-group-version-kind": [{"group": "test", "version": "v1", "kind": "MergeItem"}],
                "properties": {
                    "name": {"type": "string"},
                    "value": {"type": "string"},
                    "other": {"type": "string"},
                    "mergingList": {"type": "array", "items": {"$ref": item},
                        "x-kubernetes-patch-strategy": "merge", "x-kubernetes-patch-merge-key": "name"},
                    "nonMergingList": {"type": "array", "items": {"$ref": item}},
                    "mergingIntList": {"type": "array", "items": {"type": "integer"},
                        "x-kubernetes-patch-strategy": "merge"},
                    "nonMergingIntList": {"type": "array", "items": {"type": "integer"}},
                    "simpleMap": {"type": "object", "additionalProperties": {"type": "string"}},
                    "retainKeysMap": {"$ref": "#/$defs/RetainKeysMergeItem",
                        "x-kubernetes-patch-strategy": "retainKeys"},
                    "retainKeysMergingList": {"type": "array", "items": {"$ref": item},
                        "x-kubernetes-patch-strategy": "merge,retainKeys", "x-kubernetes-patch-merge-key": "name"}
                }
            },
            "RetainKeysMergeItem": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "value": {"type": "string"},
                    "other": {"type": "string"},
                    "simpleMap": {"type": "object", "additionalProperties": {"type": "string"}},
                    "mergingIntList": {"type": "array", "items": {"type": "integer"},
                        "x-kubernetes-patch-strategy": "merge"}
                }
            }
        }}))
        .unwrap_or_default()
    });
    &SCHEMA
}

#[track_caller]
fn upstream(original: Value, patch: Value, expected: Value) {
    let schema = merge_item_schema()
        .for_kind("test", "v1", "MergeItem")
        .expect("MergeItem schema");
    assert_eq!(smp(schema, &original, &patch), expected, "patch: {patch}");
}

#[track_caller]
fn upstream_err(original: Value, patch: Value, expected_in_message: &str) {
    let schema = merge_item_schema()
        .for_kind("test", "v1", "MergeItem")
        .expect("MergeItem schema");
    let err = smp_err(schema, &original, &patch);
    assert!(
        err.to_string().contains(expected_in_message),
        "{err} should mention {expected_in_message:?}"
    );
}

fn items(names_and_values: &[(&str, Option<&str>)]) -> Value {
    Value::Array(
        names_and_values
            .iter()
            .map(|(name, other)| match other {
                Some(other) => json!({"name": name, "other": other}),
                None => json!({"name": name}),
            })
            .collect(),
    )
}

#[test]
fn upstream_custom_cases() {
    upstream(
        json!({"mergingIntList": [1, 2]}),
        json!({"mergingIntList": [2, 3]}),
        json!({"mergingIntList": [1, 2, 3]}),
    );
    upstream(
        json!({"simpleMap": {"key1": "1", "key2": "1"}}),
        json!({"simpleMap": {"$patch": "delete"}}),
        json!({"simpleMap": {}}),
    );
    upstream(
        json!({"mergingList": [{"name": "1"}, {"name": "2"}]}),
        json!({"mergingList": [{"$patch": "replace"}]}),
        json!({"mergingList": []}),
    );
    upstream(
        json!({"mergingList": []}),
        json!({"mergingList": []}),
        json!({"mergingList": []}),
    );
    upstream(
        json!({"name": "1", "value": "1"}),
        json!({"$patch": "replace"}),
        json!({}),
    );
    upstream(
        json!({"name": "1", "value": "1"}),
        json!({"other": "a", "$patch": "replace"}),
        json!({"other": "a"}),
    );
    upstream(
        json!({"mergingList": [{"name": "1"}, {"name": "1"}, {"name": "2", "value": "a"}, {"name": "3"}, {"name": "3"}]}),
        json!({"mergingList": [{"name": "1", "$patch": "delete"}, {"name": "3", "$patch": "delete"}]}),
        json!({"mergingList": [{"name": "2", "value": "a"}]}),
    );
    upstream(
        json!({"retainKeysMap": {"name": "foo", "value": "a"}}),
        json!({"retainKeysMap": {"value": null}}),
        json!({"retainKeysMap": {"name": "foo"}}),
    );
    upstream(
        json!({"retainKeysMap": {"name": "foo", "value": "a"}}),
        json!({"retainKeysMap": {}}),
        json!({"retainKeysMap": {"name": "foo", "value": "a"}}),
    );
    upstream(
        json!({"retainKeysMergingList": [{"name": "bar"}, {"name": "foo", "value": "a"}]}),
        json!({"retainKeysMergingList": [{"name": "foo", "value": "b"}]}),
        json!({"retainKeysMergingList": [{"name": "bar"}, {"name": "foo", "value": "b"}]}),
    );
}

#[test]
fn upstream_preserves_patch_order() {
    upstream(
        json!({"mergingList": [{"name": "1"}, {"name": "2", "value": "b"}, {"name": "3"}]}),
        json!({"mergingList": [{"name": "3", "value": "c"}, {"name": "1", "value": "a"}, {"name": "2", "other": "x"}]}),
        json!({"mergingList": [{"name": "3", "value": "c"}, {"name": "1", "value": "a"}, {"name": "2", "value": "b", "other": "x"}]}),
    );
    upstream(
        json!({"mergingList": [{"name": "1"}, {"name": "2", "value": "b"}, {"name": "3"}]}),
        json!({"mergingList": [{"name": "3", "value": "c"}, {"name": "1", "value": "a"}]}),
        json!({"mergingList": [{"name": "2", "value": "b"}, {"name": "3", "value": "c"}, {"name": "1", "value": "a"}]}),
    );
    upstream(
        json!({"mergingIntList": [1, 2, 3]}),
        json!({"mergingIntList": [3, 1, 2]}),
        json!({"mergingIntList": [3, 1, 2]}),
    );
    upstream(
        json!({"mergingIntList": [1, 2, 3]}),
        json!({"mergingIntList": [3, 1]}),
        json!({"mergingIntList": [2, 3, 1]}),
    );
}

#[test]
fn upstream_raw_cases() {
    upstream(
        json!({"mergingList": [{"name": "1"}, {"name": "3"}]}),
        json!({
            "$setElementOrder/mergingList": [{"name": "3"}, {"name": "2"}, {"name": "1"}],
            "mergingList": [{"name": "3", "value": "3"}, {"name": "1", "value": "1"}]
        }),
        json!({"mergingList": [{"name": "3", "value": "3"}, {"name": "1", "value": "1"}]}),
    );
    upstream(
        json!({"mergingIntList": [1, 3]}),
        json!({"$setElementOrder/mergingIntList": [3, 2, 1]}),
        json!({"mergingIntList": [3, 1]}),
    );
    upstream_err(
        json!({"mergingList": [{"name": "1"}, {"name": "3"}, {"name": "2"}]}),
        json!({
            "$setElementOrder/mergingList": [{"name": "1"}, {"name": "2"}, {"name": "3"}],
            "mergingList": [{"name": "3", "value": "3"}, {"name": "1", "value": "1"}]
        }),
        "doesn't match",
    );
    upstream_err(
        json!({"mergingIntList": [1, 3, 2]}),
        json!({"$setElementOrder/mergingIntList": [1, 2, 3], "mergingIntList": [3, 1]}),
        "doesn't match",
    );
    upstream_err(
        json!({"mergingList": [{"name": "1", "value": "a"}]}),
        json!({"mergingList": [{"value": "b"}]}),
        "does not contain declared merge key",
    );
    upstream(
        json!({"mergingIntList": [1, 2]}),
        json!({"$deleteFromPrimitiveList/mergingIntList": [3]}),
        json!({"mergingIntList": [1, 2]}),
    );
    upstream(
        json!({"mergingIntList": null}),
        json!({"$deleteFromPrimitiveList/mergingIntList": [3]}),
        json!({"mergingIntList": null}),
    );
    upstream(
        json!({"foo": ["bar"]}),
        json!({"$deleteFromPrimitiveList/mergingIntList": [3]}),
        json!({"foo": ["bar"]}),
    );
    upstream(
        json!({"mergingIntList": [1, 2, 3]}),
        json!({"$deleteFromPrimitiveList/mergingIntList": [2]}),
        json!({"mergingIntList": [1, 3]}),
    );
    upstream(
        json!({"nonMergingIntList": [1, 2, 3]}),
        json!({"$deleteFromPrimitiveList/nonMergingIntList": [2]}),
        json!({"nonMergingIntList": [1, 3]}),
    );
}

/// Three-way cases: `current` is the live object, the patch is what kubectl computed.
#[test]
fn upstream_three_way_results() {
    upstream(
        json!({"name": "hi", "mergingList": [{"name": "hello2"}]}),
        json!({
            "$setElementOrder/mergingList": [{"name": "hello"}, {"name": "doesntexist"}],
            "mergingList": [{"name": "hello"}, {"$patch": "delete", "name": "doesntexist"}]
        }),
        json!({"name": "hi", "mergingList": [{"name": "hello"}, {"name": "hello2"}]}),
    );
    upstream(
        json!({"name": "hi"}),
        json!({"mergingList": [{"name": "hello"}, {"$patch": "delete", "name": "doesntexist"}]}),
        json!({"name": "hi", "mergingList": [{"name": "hello"}]}),
    );
    upstream(
        json!({"mergingIntList": [1, 2, 3, 3, 4]}),
        json!({"$setElementOrder/mergingIntList": [1, 2], "$deleteFromPrimitiveList/mergingIntList": [3]}),
        json!({"mergingIntList": [1, 2, 4]}),
    );
    upstream(
        json!({"mergingIntList": [1, 2, 3, 4]}),
        json!({"$setElementOrder/mergingIntList": [1, 2, 4], "$deleteFromPrimitiveList/mergingIntList": [3]}),
        json!({"mergingIntList": [1, 2, 4]}),
    );
    upstream(
        json!({"mergingList": [{"name": "1", "other": "a"}, {"name": "2", "value": "2", "other": "b"}]}),
        json!({
            "$setElementOrder/mergingList": [{"name": "4"}, {"name": "1"}, {"name": "2"}, {"name": "3"}],
            "mergingList": [{"name": "4", "value": "4"}, {"name": "3", "value": "3"}]
        }),
        json!({"mergingList": [
            {"name": "4", "value": "4"},
            {"name": "1", "other": "a"},
            {"name": "2", "value": "2", "other": "b"},
            {"name": "3", "value": "3"}
        ]}),
    );
    upstream(
        json!({"mergingList": [{"name": "1", "other": "a"}, {"name": "3", "value": "2", "other": "b"}]}),
        json!({
            "$setElementOrder/mergingList": [{"name": "1"}, {"name": "2"}],
            "mergingList": [{"name": "1", "value": "1"}, {"name": "2", "value": "2"}]
        }),
        json!({"mergingList": [
            {"name": "1", "value": "1", "other": "a"},
            {"name": "2", "value": "2"},
            {"name": "3", "value": "2", "other": "b"}
        ]}),
    );
    upstream(
        json!({"mergingList": [{"name": "3", "other": "a"}]}),
        json!({
            "$setElementOrder/mergingList": [{"name": "2"}],
            "mergingList": [{"name": "2"}, {"name": "1", "$patch": "delete"}]
        }),
        json!({"mergingList": [{"name": "2"}, {"name": "3", "other": "a"}]}),
    );
    upstream(
        json!({"mergingList": [{"name": "1", "value": "1", "other": "a"}, {"name": "2", "value": "2"}]}),
        json!({"$setElementOrder/mergingList": [{"name": "1"}, {"name": "2"}], "mergingList": [{"name": "1", "value": null}]}),
        json!({"mergingList": [{"name": "1", "other": "a"}, {"name": "2", "value": "2"}]}),
    );
}

/// These two results depend on how upstream reuses the live list's storage when a patch
/// both deletes and adds items; see `merge_keyed_list`.
#[test]
fn upstream_add_and_delete_in_one_patch() {
    upstream(
        json!({"mergingList": items(&[("1", None), ("2", Some("b")), ("4", Some("c"))])}),
        json!({
            "$setElementOrder/mergingList": [{"name": "2"}, {"name": "3"}],
            "mergingList": [{"name": "3"}, {"name": "1", "$patch": "delete"}]
        }),
        json!({"mergingList": items(&[("2", Some("b")), ("4", Some("c")), ("3", None)])}),
    );
    upstream(
        json!({"mergingList": items(&[("1", Some("a")), ("4", Some("c"))])}),
        json!({
            "$setElementOrder/mergingList": [{"name": "2"}, {"name": "3"}],
            "mergingList": [{"name": "2"}, {"name": "3"}, {"name": "1", "$patch": "delete"}]
        }),
        json!({"mergingList": items(&[("4", Some("c")), ("2", None), ("3", None)])}),
    );
}

#[test]
fn lists_of_mixed_or_nested_items_are_rejected() {
    upstream_err(
        json!({"mergingIntList": [1, 2]}),
        json!({"nonMergingList": [[1]], "mergingList": [{"name": "a"}, [1]]}),
        "expected object, got array",
    );
    let schema = merge_item_schema()
        .for_kind("test", "v1", "MergeItem")
        .expect("MergeItem schema");
    // Stored data that breaks the schema cannot be merged into.
    let err = smp_err(
        schema,
        &json!({"mergingIntList": [1, "x"]}),
        &json!({"mergingIntList": [3]}),
    );
    assert!(err.to_string().contains("one type"), "{err}");
    let err = smp_err(
        schema,
        &json!({"mergingIntList": [[1]]}),
        &json!({"mergingIntList": [3]}),
    );
    assert!(err.to_string().contains("lists of lists"), "{err}");
    let err = smp_err(schema, &json!({}), &json!({"mergingIntList": [null]}));
    assert!(err.to_string().contains("must not be null"), "{err}");
}

// --- Robustness ------------------------------------------------------------------------------

/// Marsaglia's xorshift64: deterministic, so a failure reproduces from the printed patch.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
        options[self.below(options.len())]
    }
}

const KEYS: &[&str] = &[
    "metadata",
    "spec",
    "status",
    "labels",
    "annotations",
    "finalizers",
    "ownerReferences",
    "containers",
    "initContainers",
    "name",
    "image",
    "env",
    "value",
    "ports",
    "containerPort",
    "volumes",
    "emptyDir",
    "hostPath",
    "tolerations",
    "resources",
    "limits",
    "cpu",
    "securityContext",
    "uid",
    "x-unknown",
    "$patch",
    "$retainKeys",
    "$setElementOrder/containers",
    "$setElementOrder/env",
    "$setElementOrder/finalizers",
    "$deleteFromPrimitiveList/finalizers",
    "$deleteFromPrimitiveList/env",
    "$setElementOrder",
    "$deleteFromPrimitiveList/",
];

const WORDS: &[&str] = &[
    "replace", "delete", "merge", "nginx", "sidecar", "A", "B", "", "name",
];

fn random_value(rng: &mut XorShift, depth: usize) -> Value {
    let choice = if depth == 0 {
        rng.below(6)
    } else {
        rng.below(9)
    };
    match choice {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => json!(rng.below(200) as i64 - 50),
        3 => json!(rng.below(100) as f64 / 4.0),
        4 | 5 => Value::String(rng.pick(WORDS).to_owned()),
        6 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => random_object(rng, depth - 1),
    }
}

fn random_object(rng: &mut XorShift, depth: usize) -> Value {
    let mut map = serde_json::Map::new();
    for _ in 0..rng.below(5) {
        let key = rng.pick(KEYS).to_owned();
        let value = if depth > 0 && rng.below(3) == 0 {
            // Lists of keyed objects exercise the merge paths far more than random values.
            Value::Array(
                (0..rng.below(4))
                    .map(|_| {
                        let mut item = random_object(rng, depth - 1);
                        if let Value::Object(fields) = &mut item {
                            fields.insert("name".to_owned(), json!(rng.pick(WORDS)));
                        }
                        item
                    })
                    .collect(),
            )
        } else {
            random_value(rng, depth)
        };
        map.insert(key, value);
    }
    Value::Object(map)
}

/// A patch shaped like the ones kubectl sends for a pod, with random content at the leaves,
/// so that most of them get past the type checks into the list-merging code.
fn plausible_pod_patch(rng: &mut XorShift) -> Value {
    let containers = ["nginx", "sidecar", "log", "init"];
    let mut list = Vec::new();
    for _ in 0..rng.below(4) {
        let mut item = json!({"name": rng.pick(&containers)});
        match rng.below(6) {
            0 => item["$patch"] = json!(rng.pick(&["delete", "replace", "merge"])),
            1 => item["image"] = json!(rng.pick(WORDS)),
            2 => {
                item["env"] =
                    json!([{"name": rng.pick(&["A", "B", "C"]), "value": rng.pick(WORDS)}]);
                item["$setElementOrder/env"] =
                    json!([{"name": "A"}, {"name": rng.pick(&["B", "C"])}]);
            }
            3 => item["ports"] = json!([{"containerPort": rng.below(3) * 80}]),
            4 => item["$deleteFromPrimitiveList/args"] = json!([rng.pick(WORDS)]),
            _ => item["resources"] = random_object(rng, 2),
        }
        list.push(item);
    }
    let mut order: Vec<Value> = containers
        .iter()
        .filter(|_| rng.below(2) == 0)
        .map(|name| json!({"name": name}))
        .collect();
    if rng.below(4) == 0 {
        order.reverse();
    }
    let mut spec = json!({"containers": list});
    if rng.below(2) == 0 {
        spec["$setElementOrder/containers"] = Value::Array(order);
    }
    if rng.below(3) == 0 {
        let source = rng.pick(&["emptyDir", "hostPath"]);
        spec["volumes"] =
            json!([{"name": "data", "$retainKeys": ["name", source], "hostPath": {"path": "/x"}}]);
    }
    let finalizers = ["a.example.com/x", "b.example.com/y", "z"];
    let label = if rng.below(3) == 0 {
        Value::Null
    } else {
        json!("v")
    };
    json!({
        "metadata": {
            "finalizers": [rng.pick(&finalizers)],
            "$deleteFromPrimitiveList/finalizers": [rng.pick(&finalizers)],
            "labels": {rng.pick(&["app", "tier"]): label}
        },
        "spec": spec
    })
}

#[test]
fn random_patches_never_panic() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let schemas = [
        Some(pod_schema()),
        Some(kind("apps", "v1", "Deployment")),
        None,
    ];
    let (mut applied, mut plausible_applied) = (0, 0);
    for round in 0..4000 {
        let plausible = round % 2 == 0;
        let patch = if plausible {
            plausible_pod_patch(&mut rng)
        } else {
            random_object(&mut rng, 4)
        };
        let schema = schemas[round % schemas.len()];
        let result = std::panic::catch_unwind(|| apply(&pod(), &patch, schema));
        match result {
            Ok(Ok(out)) => {
                applied += 1;
                if plausible && schema.is_some() {
                    plausible_applied += 1;
                }
                // A result is itself a valid original for further patches.
                let again = std::panic::catch_unwind(|| apply(&out, &patch, schema));
                assert!(again.is_ok(), "re-applying panicked: {patch}");
            }
            Ok(Err(err)) => assert!(matches!(err.http_status(), 400 | 413 | 422), "{err}"),
            Err(_) => panic!("strategic merge patch panicked on {patch}"),
        }
        let _ = crate::patch::merge::apply(&pod(), &patch);
        let ops = json!([{"op": rng.pick(&["add", "remove", "replace", "move", "copy", "test"]),
            "path": format!("/{}/{}", rng.pick(KEYS), rng.pick(KEYS)),
            "from": format!("/{}", rng.pick(KEYS)),
            "value": random_value(&mut rng, 2)}]);
        let json_result = std::panic::catch_unwind(|| crate::patch::json::apply(&pod(), &ops));
        assert!(json_result.is_ok(), "JSON patch panicked on {ops}");
    }
    // The generators must produce applicable patches too, or this test proves little.
    assert!(applied > 1500, "only {applied} random patches applied");
    assert!(
        plausible_applied > 300,
        "only {plausible_applied} plausible patches applied"
    );
}

/// Request bodies are untrusted and may hold on the order of 10^5 list items; a quadratic
/// merge would take minutes here, a linear one well under a second.
#[test]
fn large_lists_merge_in_linear_time() {
    const N: usize = 50_000;
    let live: Vec<Value> = (0..N)
        .map(|i| json!({"name": format!("c{i}"), "image": "x"}))
        .collect();
    let patch_items: Vec<Value> = (N / 2..N + N / 2)
        .rev()
        .map(|i| json!({"name": format!("c{i}"), "image": "y"}))
        .collect();
    let order: Vec<Value> = (0..N + N / 2)
        .rev()
        .map(|i| json!({"name": format!("c{i}")}))
        .collect();
    let finalizers: Vec<Value> = (0..N).map(|i| json!(format!("f{i}"))).collect();
    let original = json!({"metadata": {"finalizers": finalizers}, "spec": {"containers": live}});
    let patch = json!({
        "metadata": {
            "finalizers": (N / 2..N + N / 2).map(|i| format!("f{i}")).collect::<Vec<_>>(),
            "$deleteFromPrimitiveList/finalizers": (0..N / 2).map(|i| format!("f{i}")).collect::<Vec<_>>()
        },
        "spec": {"$setElementOrder/containers": order, "containers": patch_items}
    });
    let started = std::time::Instant::now();
    let out = smp(pod_schema(), &original, &patch);
    let containers = out["spec"]["containers"].as_array().map_or(0, Vec::len);
    assert_eq!(containers, N + N / 2);
    assert_eq!(
        out["spec"]["containers"][0]["name"],
        json!(format!("c{}", N + N / 2 - 1))
    );
    assert_eq!(
        out["metadata"]["finalizers"].as_array().map_or(0, Vec::len),
        N
    );
    assert!(
        started.elapsed().as_secs() < 30,
        "took {:?}",
        started.elapsed()
    );
}
