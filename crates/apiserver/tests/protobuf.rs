//! Kubernetes protobuf request bodies decoded to JSON: objects built with k8s-pb and encoded
//! with prost, bodies captured from kubectl 1.32, and malformed input.

use std::collections::BTreeMap;

use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use korvet_apiserver::protobuf::{decode, ProtobufError};
use prost::Message;
use serde_json::{json, Value};

/// `k8s\0` + runtime.Unknown{typeMeta, raw, contentEncoding: "", contentType: ""}, as client-go
/// writes it.
fn envelope(api_version: &str, kind: &str, object: &impl Message) -> Vec<u8> {
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
            api_version: Some(api_version.to_string()),
            kind: Some(kind.to_string()),
        }),
        raw: Some(object.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown.encode_to_vec());
    body
}

fn s(text: &str) -> Option<String> {
    Some(text.to_string())
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn quantity(text: &str) -> Quantity {
    Quantity { string: s(text) }
}

fn meta(name: &str, namespace: &str) -> Option<meta::ObjectMeta> {
    Some(meta::ObjectMeta {
        name: s(name),
        namespace: if namespace.is_empty() {
            None
        } else {
            s(namespace)
        },
        ..Default::default()
    })
}

fn typed<T: serde::de::DeserializeOwned>(value: &Value) -> T {
    match serde_json::from_value(value.clone()) {
        Ok(typed) => typed,
        Err(e) => panic!("{e}: {value:#}"),
    }
}

#[test]
fn configmap_with_data_and_binary_data() {
    let object = core::ConfigMap {
        metadata: Some(meta::ObjectMeta {
            name: s("settings"),
            namespace: s("default"),
            labels: map(&[("app", "web")]),
            annotations: map(&[("note", "")]),
            // Go writes these non-pointer fields even when empty.
            generate_name: s(""),
            resource_version: s(""),
            generation: Some(0),
            creation_timestamp: Some(meta::Time::default()),
            ..Default::default()
        }),
        data: map(&[("a", "b"), ("empty", "")]),
        binary_data: [("blob".to_string(), vec![0u8, 1, 2, 0xff])].into(),
        immutable: Some(false),
    };
    let body = envelope("v1", "ConfigMap", &object);
    let value = decode(&body, "", "v1", "ConfigMap").unwrap();
    assert_eq!(
        value,
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "settings",
                "namespace": "default",
                "labels": {"app": "web"},
                "annotations": {"note": ""},
                "creationTimestamp": null,
            },
            "data": {"a": "b", "empty": ""},
            "binaryData": {"blob": "AAEC/w=="},
            "immutable": false,
        })
    );
    let typed: k8s_openapi::api::core::v1::ConfigMap = typed(&value);
    assert_eq!(typed.binary_data.unwrap()["blob"].0, vec![0u8, 1, 2, 0xff]);
}

#[test]
fn secret() {
    let object = core::Secret {
        metadata: meta("db", "prod"),
        data: [("password".to_string(), b"hunter2".to_vec())].into(),
        string_data: map(&[("user", "admin")]),
        r#type: s("Opaque"),
        immutable: None,
    };
    let value = decode(&envelope("v1", "Secret", &object), "", "v1", "Secret").unwrap();
    assert_eq!(
        value,
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db", "namespace": "prod"},
            "data": {"password": "aHVudGVyMg=="},
            "stringData": {"user": "admin"},
            "type": "Opaque",
        })
    );
    let typed: k8s_openapi::api::core::v1::Secret = typed(&value);
    assert_eq!(typed.data.unwrap()["password"].0, b"hunter2");
}

#[test]
fn namespace() {
    let object = core::Namespace {
        metadata: Some(meta::ObjectMeta {
            name: s("team-a"),
            labels: map(&[("team", "a")]),
            ..Default::default()
        }),
        spec: Some(core::NamespaceSpec::default()),
        status: Some(core::NamespaceStatus::default()),
    };
    let value = decode(&envelope("v1", "Namespace", &object), "", "v1", "Namespace").unwrap();
    assert_eq!(
        value,
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "team-a", "labels": {"team": "a"}},
            "spec": {},
            "status": {},
        })
    );
    let _: k8s_openapi::api::core::v1::Namespace = typed(&value);
}

#[test]
fn deployment_with_pod_template() {
    use k8s_pb::api::apps::v1 as apps;
    let container = core::Container {
        name: s("web"),
        image: s("nginx:1.27"),
        command: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
        ports: vec![core::ContainerPort {
            name: s("http"),
            container_port: Some(80),
            protocol: s("TCP"),
            host_port: Some(0),
            host_ip: s(""),
        }],
        env: vec![
            core::EnvVar {
                name: s("MODE"),
                value: s("production"),
                value_from: None,
            },
            core::EnvVar {
                name: s("POD_IP"),
                value: s(""),
                value_from: Some(core::EnvVarSource {
                    field_ref: Some(core::ObjectFieldSelector {
                        api_version: s("v1"),
                        field_path: s("status.podIP"),
                    }),
                    ..Default::default()
                }),
            },
        ],
        resources: Some(core::ResourceRequirements {
            limits: [
                ("cpu".to_string(), quantity("500m")),
                ("memory".to_string(), quantity("128Mi")),
            ]
            .into(),
            requests: [("cpu".to_string(), quantity("250m"))].into(),
            claims: vec![],
        }),
        image_pull_policy: s("IfNotPresent"),
        stdin: Some(false),
        tty: Some(false),
        termination_message_path: s(""),
        ..Default::default()
    };
    let object = apps::Deployment {
        metadata: Some(meta::ObjectMeta {
            name: s("web"),
            namespace: s("default"),
            uid: s("c0ffee00-0000-4000-8000-000000000001"),
            generation: Some(2),
            creation_timestamp: Some(meta::Time {
                seconds: Some(1_700_000_000),
                nanos: Some(0),
            }),
            labels: map(&[("app", "web")]),
            owner_references: vec![meta::OwnerReference {
                api_version: s("example.com/v1"),
                kind: s("Site"),
                name: s("main"),
                uid: s("c0ffee00-0000-4000-8000-000000000002"),
                controller: Some(true),
                block_owner_deletion: Some(false),
            }],
            managed_fields: vec![meta::ManagedFieldsEntry {
                manager: s("kubectl-create"),
                operation: s("Update"),
                api_version: s("apps/v1"),
                time: Some(meta::Time {
                    seconds: Some(1_700_000_000),
                    nanos: Some(0),
                }),
                fields_type: s("FieldsV1"),
                fields_v1: Some(meta::FieldsV1 {
                    raw: Some(br#"{"f:spec":{"f:replicas":{}}}"#.to_vec()),
                }),
                subresource: s(""),
            }],
            ..Default::default()
        }),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(3),
            selector: Some(meta::LabelSelector {
                match_labels: map(&[("app", "web")]),
                match_expressions: vec![meta::LabelSelectorRequirement {
                    key: s("tier"),
                    operator: s("In"),
                    values: vec!["frontend".into(), "edge".into()],
                }],
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta {
                    labels: map(&[("app", "web")]),
                    creation_timestamp: Some(meta::Time::default()),
                    ..Default::default()
                }),
                spec: Some(core::PodSpec {
                    containers: vec![container],
                    restart_policy: s("Always"),
                    termination_grace_period_seconds: Some(0),
                    host_network: Some(false),
                    service_account_name: s(""),
                    automount_service_account_token: Some(false),
                    node_selector: map(&[("kubernetes.io/os", "linux")]),
                    tolerations: vec![core::Toleration {
                        key: s("dedicated"),
                        operator: s("Exists"),
                        effect: s("NoSchedule"),
                        toleration_seconds: None,
                        value: s(""),
                    }],
                    ..Default::default()
                }),
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(1),
                        str_val: s(""),
                    }),
                    max_surge: Some(IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: s("25%"),
                    }),
                }),
            }),
            min_ready_seconds: Some(0),
            revision_history_limit: Some(0),
            paused: Some(false),
            progress_deadline_seconds: None,
        }),
        status: Some(apps::DeploymentStatus::default()),
    };
    let value = decode(
        &envelope("apps/v1", "Deployment", &object),
        "apps",
        "v1",
        "Deployment",
    )
    .unwrap();
    assert_eq!(
        value,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "uid": "c0ffee00-0000-4000-8000-000000000001",
                "generation": 2,
                "creationTimestamp": "2023-11-14T22:13:20Z",
                "labels": {"app": "web"},
                "ownerReferences": [{
                    "apiVersion": "example.com/v1",
                    "kind": "Site",
                    "name": "main",
                    "uid": "c0ffee00-0000-4000-8000-000000000002",
                    "controller": true,
                    "blockOwnerDeletion": false,
                }],
                "managedFields": [{
                    "manager": "kubectl-create",
                    "operation": "Update",
                    "apiVersion": "apps/v1",
                    "time": "2023-11-14T22:13:20Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:replicas": {}}},
                }],
            },
            "spec": {
                "replicas": 3,
                "selector": {
                    "matchLabels": {"app": "web"},
                    "matchExpressions": [
                        {"key": "tier", "operator": "In", "values": ["frontend", "edge"]},
                    ],
                },
                "template": {
                    "metadata": {"labels": {"app": "web"}, "creationTimestamp": null},
                    "spec": {
                        "containers": [{
                            "name": "web",
                            "image": "nginx:1.27",
                            "command": ["nginx", "-g", "daemon off;"],
                            "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
                            "env": [
                                {"name": "MODE", "value": "production"},
                                {
                                    "name": "POD_IP",
                                    "valueFrom": {
                                        "fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"},
                                    },
                                },
                            ],
                            "resources": {
                                "limits": {"cpu": "500m", "memory": "128Mi"},
                                "requests": {"cpu": "250m"},
                            },
                            "imagePullPolicy": "IfNotPresent",
                        }],
                        "restartPolicy": "Always",
                        "terminationGracePeriodSeconds": 0,
                        "automountServiceAccountToken": false,
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                        "tolerations": [
                            {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"},
                        ],
                    },
                },
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"},
                },
                "revisionHistoryLimit": 0,
            },
            "status": {},
        })
    );
    let typed: k8s_openapi::api::apps::v1::Deployment = typed(&value);
    let spec = typed.spec.unwrap();
    let rolling = spec.strategy.unwrap().rolling_update.unwrap();
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString as Ios;
    assert_eq!(rolling.max_surge, Some(Ios::String("25%".into())));
    assert_eq!(rolling.max_unavailable, Some(Ios::Int(1)));
    let pod = spec.template.spec.unwrap();
    let limits = pod.containers[0].resources.clone().unwrap().limits.unwrap();
    assert_eq!(limits["memory"].0, "128Mi");
}

#[test]
fn self_subject_access_review() {
    use k8s_pb::api::authorization::v1 as authz;
    let object = authz::SelfSubjectAccessReview {
        metadata: Some(meta::ObjectMeta {
            creation_timestamp: Some(meta::Time::default()),
            ..Default::default()
        }),
        spec: Some(authz::SelfSubjectAccessReviewSpec {
            resource_attributes: Some(authz::ResourceAttributes {
                namespace: s("default"),
                verb: s("get"),
                group: s(""),
                version: s(""),
                resource: s("pods"),
                subresource: s(""),
                name: s(""),
                ..Default::default()
            }),
            non_resource_attributes: None,
        }),
        status: Some(authz::SubjectAccessReviewStatus {
            allowed: Some(false),
            denied: Some(false),
            reason: s(""),
            evaluation_error: s(""),
        }),
    };
    let value = decode(
        &envelope(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            &object,
        ),
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
    )
    .unwrap();
    assert_eq!(
        value,
        json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "metadata": {"creationTimestamp": null},
            "spec": {"resourceAttributes": {"namespace": "default", "verb": "get", "resource": "pods"}},
            // `allowed` has no omitempty in Go.
            "status": {"allowed": false},
        })
    );
    let _: k8s_openapi::api::authorization::v1::SelfSubjectAccessReview = typed(&value);
}

#[test]
fn scale_to_zero() {
    use k8s_pb::api::autoscaling::v1 as autoscaling;
    let object = autoscaling::Scale {
        metadata: meta("web", "default"),
        spec: Some(autoscaling::ScaleSpec { replicas: Some(0) }),
        status: Some(autoscaling::ScaleStatus {
            replicas: Some(3),
            selector: s(""),
        }),
    };
    let value = decode(
        &envelope("autoscaling/v1", "Scale", &object),
        "autoscaling",
        "v1",
        "Scale",
    )
    .unwrap();
    assert_eq!(
        value,
        json!({
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": 0},
            "status": {"replicas": 3},
        })
    );
    let _: k8s_openapi::api::autoscaling::v1::Scale = typed(&value);
}

#[test]
fn eviction_with_delete_options() {
    use k8s_pb::api::policy::v1 as policy;
    let object = policy::Eviction {
        metadata: meta("p1", "default"),
        delete_options: Some(meta::DeleteOptions {
            grace_period_seconds: Some(0),
            preconditions: Some(meta::Preconditions {
                uid: s("c0ffee00-0000-4000-8000-000000000003"),
                resource_version: None,
            }),
            propagation_policy: s("Foreground"),
            dry_run: vec!["All".into()],
            ..Default::default()
        }),
    };
    let value = decode(
        &envelope("policy/v1", "Eviction", &object),
        "policy",
        "v1",
        "Eviction",
    )
    .unwrap();
    assert_eq!(
        value,
        json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": "p1", "namespace": "default"},
            "deleteOptions": {
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": "c0ffee00-0000-4000-8000-000000000003"},
                "propagationPolicy": "Foreground",
                "dryRun": ["All"],
            },
        })
    );
    let _: k8s_openapi::api::policy::v1::Eviction = typed(&value);
}

#[test]
fn service_with_target_ports() {
    let object = core::Service {
        metadata: meta("web", "default"),
        spec: Some(core::ServiceSpec {
            ports: vec![
                core::ServicePort {
                    name: s("http"),
                    protocol: s("TCP"),
                    port: Some(80),
                    target_port: Some(IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: s("http"),
                    }),
                    node_port: Some(0),
                    app_protocol: None,
                },
                core::ServicePort {
                    name: s("https"),
                    protocol: s("TCP"),
                    port: Some(443),
                    target_port: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(8443),
                        str_val: s(""),
                    }),
                    node_port: Some(0),
                    app_protocol: None,
                },
            ],
            selector: map(&[("app", "web")]),
            cluster_ip: s(""),
            r#type: s("ClusterIP"),
            session_affinity: s(""),
            allocate_load_balancer_node_ports: Some(false),
            ..Default::default()
        }),
        status: Some(core::ServiceStatus {
            load_balancer: Some(core::LoadBalancerStatus::default()),
            conditions: vec![],
        }),
    };
    let value = decode(&envelope("v1", "Service", &object), "", "v1", "Service").unwrap();
    assert_eq!(
        value,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "ports": [
                    {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"},
                    {"name": "https", "protocol": "TCP", "port": 443, "targetPort": 8443},
                ],
                "selector": {"app": "web"},
                "type": "ClusterIP",
                "allocateLoadBalancerNodePorts": false,
            },
            "status": {"loadBalancer": {}},
        })
    );
    let _: k8s_openapi::api::core::v1::Service = typed(&value);
}

#[test]
fn pod_with_inline_volume_source_and_probe_handler() {
    let object = core::Pod {
        metadata: meta("p", "default"),
        spec: Some(core::PodSpec {
            containers: vec![core::Container {
                name: s("c"),
                image: s("busybox"),
                liveness_probe: Some(core::Probe {
                    handler: Some(core::ProbeHandler {
                        http_get: Some(core::HttpGetAction {
                            path: s("/healthz"),
                            port: Some(IntOrString {
                                r#type: Some(0),
                                int_val: Some(8080),
                                str_val: None,
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    period_seconds: Some(10),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            volumes: vec![core::Volume {
                name: s("config"),
                volume_source: Some(core::VolumeSource {
                    config_map: Some(core::ConfigMapVolumeSource {
                        local_object_reference: Some(core::LocalObjectReference { name: s("cm") }),
                        default_mode: Some(0o644),
                        optional: Some(false),
                        items: vec![],
                    }),
                    ..Default::default()
                }),
            }],
            ..Default::default()
        }),
        status: None,
    };
    let value = decode(&envelope("v1", "Pod", &object), "", "v1", "Pod").unwrap();
    assert_eq!(
        value["spec"],
        json!({
            "containers": [{
                "name": "c",
                "image": "busybox",
                "livenessProbe": {
                    "httpGet": {"path": "/healthz", "port": 8080},
                    "periodSeconds": 10,
                },
            }],
            "volumes": [{
                "name": "config",
                "configMap": {"name": "cm", "defaultMode": 420, "optional": false},
            }],
        })
    );
    let _: k8s_openapi::api::core::v1::Pod = typed(&value);
}

#[test]
fn custom_resource_definition_schema() {
    use k8s_pb::apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext;
    let string_prop = ext::JsonSchemaProps {
        r#type: s("string"),
        ..Default::default()
    };
    let schema = ext::JsonSchemaProps {
        r#type: s("object"),
        properties: [
            (
                "spec".to_string(),
                ext::JsonSchemaProps {
                    r#type: s("object"),
                    properties: [("size".to_string(), string_prop.clone())].into(),
                    additional_properties: Some(Box::new(ext::JsonSchemaPropsOrBool {
                        allows: Some(false),
                        schema: None,
                    })),
                    x_kubernetes_preserve_unknown_fields: Some(true),
                    ..Default::default()
                },
            ),
            (
                "tags".to_string(),
                ext::JsonSchemaProps {
                    r#type: s("array"),
                    items: Some(Box::new(ext::JsonSchemaPropsOrArray {
                        schema: Some(Box::new(string_prop.clone())),
                        j_son_schemas: vec![],
                    })),
                    max_items: Some(0),
                    default: Some(ext::Json {
                        raw: Some(br#"["a"]"#.to_vec()),
                    }),
                    r#enum: vec![ext::Json {
                        raw: Some(br#"["a"]"#.to_vec()),
                    }],
                    ..Default::default()
                },
            ),
            (
                "labels".to_string(),
                ext::JsonSchemaProps {
                    r#type: s("object"),
                    additional_properties: Some(Box::new(ext::JsonSchemaPropsOrBool {
                        allows: Some(true),
                        schema: Some(Box::new(string_prop)),
                    })),
                    ..Default::default()
                },
            ),
        ]
        .into(),
        ..Default::default()
    };
    let object = ext::CustomResourceDefinition {
        metadata: meta("widgets.example.com", ""),
        spec: Some(ext::CustomResourceDefinitionSpec {
            group: s("example.com"),
            names: Some(ext::CustomResourceDefinitionNames {
                plural: s("widgets"),
                kind: s("Widget"),
                ..Default::default()
            }),
            scope: s("Namespaced"),
            versions: vec![ext::CustomResourceDefinitionVersion {
                name: s("v1"),
                served: Some(true),
                storage: Some(true),
                schema: Some(ext::CustomResourceValidation {
                    open_apiv3_schema: Some(schema),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    };
    let value = decode(
        &envelope(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            &object,
        ),
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
    )
    .unwrap();
    assert_eq!(
        value["spec"]["versions"][0]["schema"],
        json!({"openAPIV3Schema": {
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "properties": {"size": {"type": "string"}},
                    "additionalProperties": false,
                    "x-kubernetes-preserve-unknown-fields": true,
                },
                "tags": {
                    "type": "array",
                    "items": {"type": "string"},
                    "maxItems": 0,
                    "default": ["a"],
                    "enum": [["a"]],
                },
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }})
    );
    assert_eq!(value["spec"]["versions"][0]["served"], json!(true));
    let _: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        typed(&value);
}

#[test]
fn event_micro_time_and_controller_revision_raw_extension() {
    use k8s_pb::api::events::v1 as events;
    let object = events::Event {
        metadata: meta("e", "default"),
        event_time: Some(meta::MicroTime {
            seconds: Some(1_700_000_000),
            nanos: Some(123_456_789),
        }),
        reason: s("Started"),
        r#type: s("Normal"),
        ..Default::default()
    };
    let value = decode(
        &envelope("events.k8s.io/v1", "Event", &object),
        "events.k8s.io",
        "v1",
        "Event",
    )
    .unwrap();
    assert_eq!(value["eventTime"], json!("2023-11-14T22:13:20.123456Z"));
    let _: k8s_openapi::api::events::v1::Event = typed(&value);

    use k8s_pb::api::apps::v1 as apps;
    let object = apps::ControllerRevision {
        metadata: meta("rev", "default"),
        data: Some(k8s_pb::apimachinery::pkg::runtime::RawExtension {
            raw: Some(br#"{"spec":{"template":{"x":1}}}"#.to_vec()),
        }),
        revision: Some(4),
    };
    let value = decode(
        &envelope("apps/v1", "ControllerRevision", &object),
        "apps",
        "v1",
        "ControllerRevision",
    )
    .unwrap();
    assert_eq!(value["data"], json!({"spec": {"template": {"x": 1}}}));
    assert_eq!(value["revision"], json!(4));
    let _: k8s_openapi::api::apps::v1::ControllerRevision = typed(&value);

    // A RawExtension holding an object in protobuf, with its own envelope.
    let embedded = core::ConfigMap {
        metadata: meta("inner", ""),
        data: map(&[("k", "v")]),
        ..Default::default()
    };
    let object = apps::ControllerRevision {
        metadata: meta("rev", "default"),
        data: Some(k8s_pb::apimachinery::pkg::runtime::RawExtension {
            raw: Some(envelope("v1", "ConfigMap", &embedded)),
        }),
        revision: Some(5),
    };
    let value = decode(
        &envelope("apps/v1", "ControllerRevision", &object),
        "apps",
        "v1",
        "ControllerRevision",
    )
    .unwrap();
    assert_eq!(
        value["data"],
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "inner"}, "data": {"k": "v"}})
    );
}

#[test]
fn type_meta_missing_from_envelope_falls_back_to_the_arguments() {
    let object = core::ConfigMap {
        metadata: meta("x", ""),
        ..Default::default()
    };
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: None,
        raw: Some(object.encode_to_vec()),
        content_encoding: None,
        content_type: None,
    };
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown.encode_to_vec());
    let value = decode(&body, "", "v1", "ConfigMap").unwrap();
    assert_eq!(
        value,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    );
    // meta/v1 kinds are found under any group-version.
    let options = meta::DeleteOptions {
        grace_period_seconds: Some(30),
        ..Default::default()
    };
    let value = decode(&envelope("apps/v1", "DeleteOptions", &options), "", "", "").unwrap();
    assert_eq!(
        value,
        json!({"apiVersion": "apps/v1", "kind": "DeleteOptions", "gracePeriodSeconds": 30})
    );
}

// ---------------------------------------------------------------------------------------------
// Bodies captured from kubectl 1.32 (see protobuf/README.md), compared with what
// `kubectl create ... --dry-run=client -o json` prints for the same command.

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/protobuf/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn decode_fixture(name: &str, group: &str, version: &str, kind: &str) -> Value {
    let body = fixture(&format!("{name}.bin"));
    decode(&body, group, version, kind).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn check_against_dry_run<T: serde::de::DeserializeOwned>(
    name: &str,
    group: &str,
    version: &str,
    kind: &str,
) {
    let value = decode_fixture(name, group, version, kind);
    let expected: Value = serde_json::from_slice(&fixture(&format!("{name}.json"))).unwrap();
    assert_eq!(value, expected, "{name}");
    let _: T = typed(&value);
}

#[test]
fn kubectl_create_bodies_match_their_json() {
    use k8s_openapi::api;
    check_against_dry_run::<api::core::v1::ConfigMap>("configmap", "", "v1", "ConfigMap");
    check_against_dry_run::<api::core::v1::Secret>("secret", "", "v1", "Secret");
    check_against_dry_run::<api::core::v1::Namespace>("namespace", "", "v1", "Namespace");
    check_against_dry_run::<api::core::v1::ServiceAccount>(
        "serviceaccount",
        "",
        "v1",
        "ServiceAccount",
    );
    check_against_dry_run::<api::apps::v1::Deployment>("deployment", "apps", "v1", "Deployment");
    check_against_dry_run::<api::batch::v1::Job>("job", "batch", "v1", "Job");
    check_against_dry_run::<api::batch::v1::CronJob>("cronjob", "batch", "v1", "CronJob");
    check_against_dry_run::<api::core::v1::Service>("service", "", "v1", "Service");
    check_against_dry_run::<api::core::v1::ResourceQuota>(
        "resourcequota",
        "",
        "v1",
        "ResourceQuota",
    );
    check_against_dry_run::<api::scheduling::v1::PriorityClass>(
        "priorityclass",
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
    );
    check_against_dry_run::<api::networking::v1::Ingress>(
        "ingress",
        "networking.k8s.io",
        "v1",
        "Ingress",
    );
    check_against_dry_run::<api::policy::v1::PodDisruptionBudget>(
        "poddisruptionbudget",
        "policy",
        "v1",
        "PodDisruptionBudget",
    );
    check_against_dry_run::<api::rbac::v1::RoleBinding>(
        "rolebinding",
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
    );
    check_against_dry_run::<api::rbac::v1::ClusterRoleBinding>(
        "clusterrolebinding",
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
    );
}

#[test]
fn kubectl_bodies_without_dry_run() {
    // kubectl create role r1 --verb=get --resource=pods
    let role = decode_fixture("role", "rbac.authorization.k8s.io", "v1", "Role");
    assert_eq!(
        role,
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "r1", "creationTimestamp": null},
            "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}],
        })
    );
    let _: k8s_openapi::api::rbac::v1::Role = typed(&role);

    // kubectl create clusterrole cr1 --verb=get,list --resource=deployments.apps
    let clusterrole = decode_fixture(
        "clusterrole",
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
    );
    assert_eq!(
        clusterrole["rules"],
        json!([{"verbs": ["get", "list"], "apiGroups": ["apps"], "resources": ["deployments"]}])
    );
    let _: k8s_openapi::api::rbac::v1::ClusterRole = typed(&clusterrole);

    // kubectl auth can-i get pods
    let review = decode_fixture(
        "selfsubjectaccessreview",
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
    );
    assert_eq!(review["kind"], "SelfSubjectAccessReview");
    assert_eq!(
        review["spec"]["resourceAttributes"],
        json!({"namespace": "default", "verb": "get", "resource": "pods"})
    );
    let _: k8s_openapi::api::authorization::v1::SelfSubjectAccessReview = typed(&review);

    // kubectl auth whoami
    let whoami = decode_fixture(
        "selfsubjectreview",
        "authentication.k8s.io",
        "v1",
        "SelfSubjectReview",
    );
    assert_eq!(whoami["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(whoami["kind"], "SelfSubjectReview");
    let _: k8s_openapi::api::authentication::v1::SelfSubjectReview = typed(&whoami);

    // kubectl create token sa1 --duration=1h
    let token = decode_fixture(
        "tokenrequest",
        "authentication.k8s.io",
        "v1",
        "TokenRequest",
    );
    assert_eq!(token["kind"], "TokenRequest");
    assert_eq!(token["spec"]["expirationSeconds"], json!(3600));
    // Go's JSON of the empty status is the same: neither field has omitempty. (k8s-openapi
    // rejects the null time, so it checks the rest.)
    assert_eq!(
        token["status"],
        json!({"token": "", "expirationTimestamp": null})
    );
    let mut without_status = token.clone();
    without_status.as_object_mut().unwrap().remove("status");
    let _: k8s_openapi::api::authentication::v1::TokenRequest = typed(&without_status);

    // kubectl drain n1 --disable-eviction --grace-period=5: DELETE with a DeleteOptions body.
    let options = decode_fixture("deleteoptions", "", "v1", "DeleteOptions");
    assert_eq!(
        options,
        json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 5})
    );
    let _: k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions = typed(&options);
}

// ---------------------------------------------------------------------------------------------
// Malformed input: clear errors, never a panic.

#[test]
fn wrong_magic() {
    assert_eq!(
        decode(b"", "", "v1", "ConfigMap"),
        Err(ProtobufError::NoMagic)
    );
    assert_eq!(
        decode(b"k8s", "", "v1", "ConfigMap"),
        Err(ProtobufError::NoMagic)
    );
    assert_eq!(
        decode(br#"{"kind":"ConfigMap"}"#, "", "v1", "ConfigMap"),
        Err(ProtobufError::NoMagic)
    );
    let err = decode(b"K8S\0\x0a\x00", "", "v1", "ConfigMap").unwrap_err();
    assert!(err.to_string().contains("magic"), "{err}");
}

#[test]
fn truncated_bodies() {
    for (name, group, kind) in [
        ("deployment", "apps", "Deployment"),
        ("cronjob", "batch", "CronJob"),
        ("secret", "", "Secret"),
    ] {
        let body = fixture(&format!("{name}.bin"));
        for len in 4..body.len() {
            // A cut between two fields of the envelope leaves a valid (if incomplete) body.
            let envelope_whole =
                k8s_pb::apimachinery::pkg::runtime::Unknown::decode(&body[4..len]).is_ok();
            match decode(&body[..len], group, "v1", kind) {
                Ok(_) => assert!(envelope_whole, "{name}: prefix of {len} bytes decoded"),
                Err(err) => {
                    assert!(!envelope_whole, "{name}, {len}: {err}");
                    assert!(
                        matches!(err, ProtobufError::Malformed { .. }),
                        "{name}, {len}: {err}"
                    );
                    assert!(
                        err.to_string().contains("truncated"),
                        "{name}, {len}: {err}"
                    );
                }
            }
        }
    }
}

#[test]
fn errors_name_the_field() {
    // Deployment.spec (3) holding replicas (1) as a length-delimited value.
    let raw = [0x12, 0x03, 0x0a, 0x01, 0x00];
    let mut body = b"k8s\0".to_vec();
    body.extend([0x12, raw.len() as u8]);
    body.extend(raw);
    let err = decode(&body, "apps", "v1", "Deployment").unwrap_err();
    assert_eq!(
        err.to_string(),
        "malformed protobuf at spec.replicas: length-delimited value where a varint value belongs"
    );
    // A container's image, truncated.
    let pod = core::Pod {
        spec: Some(core::PodSpec {
            containers: vec![
                core::Container::default(),
                core::Container {
                    image: s("busybox"),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut raw = pod.encode_to_vec();
    // Cut the image's last byte, and fix up the enclosing lengths (spec, container).
    raw.pop();
    let n = raw.len();
    raw[1] -= 1; // spec's length (one byte)
    raw[5] -= 1; // the second container's length
    assert_eq!(n, raw.len());
    let mut body = b"k8s\0".to_vec();
    body.extend([0x12, raw.len() as u8]);
    body.extend(raw);
    let err = decode(&body, "", "v1", "Pod").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("malformed protobuf at spec.containers[1].image: truncated"),
        "{err}"
    );
}

#[test]
fn unknown_kind_and_encodings() {
    let object = core::ConfigMap::default();
    assert_eq!(
        decode(
            &envelope("v1", "NoSuchKind", &object),
            "",
            "v1",
            "NoSuchKind"
        ),
        Err(ProtobufError::UnknownKind {
            api_version: "v1".into(),
            kind: "NoSuchKind".into()
        })
    );
    assert!(matches!(
        decode(
            &envelope("example.com/v1", "Widget", &object),
            "",
            "v1",
            "ConfigMap"
        ),
        Err(ProtobufError::UnknownKind { .. })
    ));
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: None,
        raw: Some(vec![0x1f, 0x8b]),
        content_encoding: s("gzip"),
        content_type: None,
    };
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown.encode_to_vec());
    assert_eq!(
        decode(&body, "", "v1", "ConfigMap"),
        Err(ProtobufError::UnsupportedEncoding("gzip".into()))
    );
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: None,
        raw: Some(b"{}".to_vec()),
        content_encoding: None,
        content_type: s("application/json"),
    };
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown.encode_to_vec());
    assert_eq!(
        decode(&body, "", "v1", "ConfigMap"),
        Err(ProtobufError::UnsupportedContentType(
            "application/json".into()
        ))
    );
}

#[test]
fn bad_values() {
    let bad_intorstring = core::Service {
        spec: Some(core::ServiceSpec {
            ports: vec![core::ServicePort {
                target_port: Some(IntOrString {
                    r#type: Some(7),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = decode(
        &envelope("v1", "Service", &bad_intorstring),
        "",
        "v1",
        "Service",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid value at spec.ports[0].targetPort: IntOrString of type 7"
    );
    let bad_time = core::ConfigMap {
        metadata: Some(meta::ObjectMeta {
            creation_timestamp: Some(meta::Time {
                seconds: Some(i64::MAX),
                nanos: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = decode(
        &envelope("v1", "ConfigMap", &bad_time),
        "",
        "v1",
        "ConfigMap",
    )
    .unwrap_err();
    assert!(matches!(err, ProtobufError::InvalidValue { .. }), "{err}");
    let bad_raw = k8s_pb::api::apps::v1::ControllerRevision {
        data: Some(k8s_pb::apimachinery::pkg::runtime::RawExtension {
            raw: Some(b"{not json".to_vec()),
        }),
        ..Default::default()
    };
    let err = decode(
        &envelope("apps/v1", "ControllerRevision", &bad_raw),
        "apps",
        "v1",
        "ControllerRevision",
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("invalid value at data:"),
        "{err}"
    );
}

#[test]
fn deep_nesting_is_refused() {
    // JSONSchemaProps.not (28) nested 2,000 deep.
    let mut raw: Vec<u8> = Vec::new();
    for _ in 0..2_000 {
        let mut outer = Vec::new();
        prost::encoding::encode_key(28, prost::encoding::WireType::LengthDelimited, &mut outer);
        prost::encoding::encode_varint(raw.len() as u64, &mut outer);
        outer.extend(&raw);
        raw = outer;
    }
    let mut unknown = Vec::new();
    prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut unknown);
    let type_meta = k8s_pb::apimachinery::pkg::runtime::TypeMeta {
        api_version: s("apiextensions.k8s.io/v1"),
        kind: s("JSONSchemaProps"),
    }
    .encode_to_vec();
    prost::encoding::encode_varint(type_meta.len() as u64, &mut unknown);
    unknown.extend(type_meta);
    prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut unknown);
    prost::encoding::encode_varint(raw.len() as u64, &mut unknown);
    unknown.extend(raw);
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown);
    let err = decode(&body, "", "", "").unwrap_err();
    assert!(err.to_string().contains("nested deeper"), "{err}");
}

/// xorshift64*: a small deterministic generator for the no-panic loops.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let kinds = [
        ("", "v1", "ConfigMap"),
        ("apps", "v1", "Deployment"),
        ("", "v1", "Pod"),
        ("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
        ("", "v1", "Secret"),
    ];
    let mut decoded = 0;
    for round in 0..20_000 {
        let len = rng.below(200);
        let mut raw: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if round % 4 == 0 {
            // Bias towards small field numbers and valid wire types.
            for byte in raw.iter_mut().step_by(3) {
                *byte = ((rng.below(12) as u8 + 1) << 3) | [0u8, 2, 2, 5, 1][rng.below(5)];
            }
        }
        // As the object inside a valid envelope, and as the whole body after the magic.
        let mut body = b"k8s\0".to_vec();
        body.push(0x12);
        prost::encoding::encode_varint(raw.len() as u64, &mut body);
        body.extend(&raw);
        let (group, version, kind) = kinds[round % kinds.len()];
        if decode(&body, group, version, kind).is_ok() {
            decoded += 1;
        }
        let mut body = b"k8s\0".to_vec();
        body.extend(&raw);
        let _ = decode(&body, group, version, kind);
    }
    assert!(decoded > 0);
}

#[test]
fn mutated_bodies_never_panic() {
    let mut rng = Rng(42);
    let bodies: Vec<(Vec<u8>, &str, &str)> = vec![
        (fixture("deployment.bin"), "apps", "Deployment"),
        (fixture("cronjob.bin"), "batch", "CronJob"),
        (fixture("service.bin"), "", "Service"),
        (fixture("ingress.bin"), "networking.k8s.io", "Ingress"),
        (fixture("secret.bin"), "", "Secret"),
    ];
    for round in 0..20_000 {
        let (original, group, kind) = &bodies[round % bodies.len()];
        let mut body = original.clone();
        for _ in 0..1 + rng.below(4) {
            let at = 4 + rng.below(body.len() - 4);
            match rng.below(3) {
                0 => body[at] ^= 1 << rng.below(8),
                1 => body[at] = rng.next() as u8,
                _ => body.truncate(at),
            }
            if body.len() <= 4 {
                break;
            }
        }
        let _ = decode(&body, group, "v1", kind);
    }
}

#[test]
fn deep_schemas_decode_within_a_small_stack() {
    use k8s_pb::apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext;
    // The deepest nesting below the limit, by each recursive path (map values, the
    // JSONSchemaPropsOrArray wrapper), on a 1 MiB stack (tokio's workers have 2 MiB).
    fn by_properties(levels: usize) -> ext::JsonSchemaProps {
        let mut schema = ext::JsonSchemaProps {
            r#type: s("string"),
            ..Default::default()
        };
        for _ in 0..levels {
            schema = ext::JsonSchemaProps {
                r#type: s("object"),
                properties: [("p".to_string(), schema)].into(),
                ..Default::default()
            };
        }
        schema
    }
    fn by_items(levels: usize) -> ext::JsonSchemaProps {
        let mut schema = ext::JsonSchemaProps {
            r#type: s("string"),
            ..Default::default()
        };
        for _ in 0..levels {
            schema = ext::JsonSchemaProps {
                r#type: s("array"),
                items: Some(Box::new(ext::JsonSchemaPropsOrArray {
                    schema: Some(Box::new(schema)),
                    j_son_schemas: vec![],
                })),
                ..Default::default()
            };
        }
        schema
    }
    let cases = [
        (by_properties(120), true),
        (by_items(60), true),
        (by_properties(200), false),
    ];
    let bodies: Vec<(Vec<u8>, bool)> = cases
        .into_iter()
        .map(|(schema, ok)| {
            (
                envelope("apiextensions.k8s.io/v1", "JSONSchemaProps", &schema),
                ok,
            )
        })
        .collect();
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            for (body, ok) in bodies {
                let result = decode(&body, "", "", "");
                assert_eq!(result.is_ok(), ok, "{result:?}");
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Found by the fuzz target `protobuf_roundtrip` (crates/fuzz): an embedded message that occurs
// more than once merges, as protobuf says, rather than being replaced by its last occurrence.

/// A length-delimited field, for bodies no encoder writes (short payloads only).
fn field(tag: u8, payload: &[u8]) -> Vec<u8> {
    let len = u8::try_from(payload.len()).expect("a short payload");
    assert!(len < 0x80 && tag < 16);
    let mut out = vec![tag << 3 | 2, len];
    out.extend_from_slice(payload);
    out
}

fn raw_envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
            api_version: s(api_version),
            kind: s(kind),
        }),
        raw: Some(raw),
        content_encoding: None,
        content_type: None,
    };
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown.encode_to_vec());
    body
}

#[test]
fn a_repeated_embedded_message_merges_into_the_first() {
    // targetPort {type: 0, intVal: 8080}, then an empty targetPort, which changes nothing.
    let mut port = core::ServicePort {
        port: Some(80),
        target_port: Some(IntOrString {
            r#type: Some(0),
            int_val: Some(8080),
            str_val: None,
        }),
        ..Default::default()
    }
    .encode_to_vec();
    port.extend(field(4, &[]));
    let spec = field(1, &port);
    let service = field(2, &spec);
    let value = decode(&raw_envelope("v1", "Service", service), "", "", "").unwrap();
    assert_eq!(
        value["spec"]["ports"],
        json!([{"port": 80, "targetPort": 8080}])
    );
}

#[test]
fn objects_sent_in_two_pieces_merge_at_every_level() {
    // Protobuf's merge is the concatenation of encodings: the second piece adds labels to
    // the first's metadata, nanos to its time and a type to its spec.
    let first = core::Service {
        metadata: Some(meta::ObjectMeta {
            name: s("web"),
            creation_timestamp: Some(meta::Time {
                seconds: Some(1_700_000_000),
                nanos: None,
            }),
            ..Default::default()
        }),
        spec: Some(core::ServiceSpec {
            ports: vec![core::ServicePort {
                port: Some(80),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    };
    let second = core::Service {
        metadata: Some(meta::ObjectMeta {
            labels: map(&[("app", "web")]),
            creation_timestamp: Some(meta::Time {
                seconds: None,
                nanos: Some(5),
            }),
            ..Default::default()
        }),
        spec: Some(core::ServiceSpec {
            r#type: s("ClusterIP"),
            ..Default::default()
        }),
        status: None,
    };
    let mut raw = first.encode_to_vec();
    raw.extend(second.encode_to_vec());
    let value = decode(&raw_envelope("v1", "Service", raw), "", "", "").unwrap();
    assert_eq!(
        value,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "web",
                "labels": {"app": "web"},
                "creationTimestamp": "2023-11-14T22:13:20Z",
            },
            "spec": {"ports": [{"port": 80}], "type": "ClusterIP"},
        })
    );
    // The same as prost's own merge of the two.
    let mut merged = first.clone();
    merged.merge(second.encode_to_vec().as_slice()).unwrap();
    assert_eq!(
        decode(&envelope("v1", "Service", &merged), "", "", "").unwrap(),
        value
    );
}

#[test]
fn a_repeated_map_value_merges_too() {
    // hard {key: "memory", value: {string: "1G"}, value: {}}: the empty second value
    // merges into the first, as protobuf merges any embedded message.
    let mut entry = field(1, b"memory");
    entry.extend(field(2, &field(1, b"1G")));
    entry.extend(field(2, &[]));
    let spec = field(1, &entry);
    let quota = field(2, &spec);
    let value = decode(&raw_envelope("v1", "ResourceQuota", quota), "", "", "").unwrap();
    assert_eq!(value["spec"]["hard"], json!({"memory": "1G"}));
}
