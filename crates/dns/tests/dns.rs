//! The DNS server against a real API server: objects written with the kube client,
//! real queries over UDP and TCP on loopback.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use korvet_dns::forward::{query_tcp, query_udp};
use korvet_dns::{DnsConfig, RunningDns};
use korvet_test_support::{StoreKind, TestControlPlane};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

async fn client(cp: &TestControlPlane) -> kube::Client {
    korvet_apimachinery::client_from_kubeconfig(cp.kubeconfig())
        .await
        .unwrap()
}

async fn start_dns(client: kube::Client, domain: &str, upstreams: Vec<SocketAddr>) -> RunningDns {
    let mut config = DnsConfig::new(vec!["127.0.0.1:0".parse().unwrap()]);
    config.domain = domain.to_string();
    config.upstreams = upstreams;
    config.forward_timeout = Duration::from_millis(500);
    let dns = korvet_dns::spawn(client, config).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dns.is_ready() {
        assert!(Instant::now() < deadline, "zone never built");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    dns
}

async fn ask(server: SocketAddr, name: &str, qtype: RecordType, tcp: bool) -> Message {
    let query = Query::query(Name::from_str(name).unwrap(), qtype);
    let reply = async {
        if tcp {
            query_tcp(server, &query).await
        } else {
            query_udp(server, &query).await
        }
    };
    tokio::time::timeout(Duration::from_secs(5), reply)
        .await
        .unwrap_or_else(|_| panic!("no answer for {name}"))
        .unwrap()
}

fn data(message: &Message) -> Vec<String> {
    let mut out: Vec<String> = message
        .answers()
        .iter()
        .map(|r| r.data().to_string())
        .collect();
    out.sort();
    out
}

async fn create<K>(api: &Api<K>, value: serde_json::Value) -> K
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    api.create(
        &PostParams::default(),
        &serde_json::from_value(value).unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_for_services_endpoints_and_follows_changes() {
    let cp = TestControlPlane::start(StoreKind::Embedded).await;
    let client = client(&cp).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    create(&namespaces, json!({"metadata": {"name": "db"}})).await;
    let default_services: Api<Service> = Api::namespaced(client.clone(), "default");
    let db_services: Api<Service> = Api::namespaced(client.clone(), "db");
    let db_slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "db");
    let web = create(
        &default_services,
        json!({"metadata": {"name": "web"}, "spec": {"ports": [
            {"name": "http", "port": 80, "protocol": "TCP"}]}}),
    )
    .await;
    let web_ip = web.spec.unwrap().cluster_ip.unwrap();
    create(
        &default_services,
        json!({"metadata": {"name": "ext"}, "spec": {"type": "ExternalName",
            "externalName": "db.example.org"}}),
    )
    .await;
    create(
        &db_services,
        json!({"metadata": {"name": "pg"}, "spec": {"clusterIP": "None",
            "ports": [{"name": "pg", "port": 5432}]}}),
    )
    .await;
    create(
        &db_slices,
        json!({"metadata": {"name": "pg-1", "labels": {"kubernetes.io/service-name": "pg"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "pg-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.6"], "hostname": "pg-1", "conditions": {"ready": false}}],
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}),
    )
    .await;

    let dns = start_dns(client.clone(), "cluster.local", Vec::new()).await;
    let server = dns.local_addrs()[0];
    for tcp in [false, true] {
        let a = ask(server, "web.default.svc.cluster.local.", RecordType::A, tcp).await;
        assert_eq!(a.response_code(), ResponseCode::NoError);
        assert!(a.authoritative());
        assert_eq!(data(&a), [web_ip.as_str()], "tcp={tcp}");
        assert_eq!(a.answers()[0].ttl(), 5);
        let srv = ask(
            server,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
            tcp,
        )
        .await;
        assert_eq!(data(&srv), ["0 100 80 web.default.svc.cluster.local."]);
        let ptr_name = korvet_dns::zone::reverse_name(web_ip.parse().unwrap());
        let ptr = ask(server, &format!("{ptr_name}."), RecordType::PTR, tcp).await;
        assert_eq!(data(&ptr), ["web.default.svc.cluster.local."]);
        let headless = ask(server, "pg.db.svc.cluster.local.", RecordType::A, tcp).await;
        assert_eq!(data(&headless), ["10.244.1.5"]);
        let host = ask(server, "pg-0.pg.db.svc.cluster.local.", RecordType::A, tcp).await;
        assert_eq!(data(&host), ["10.244.1.5"]);
        let pg_srv = ask(
            server,
            "_pg._tcp.pg.db.svc.cluster.local.",
            RecordType::SRV,
            tcp,
        )
        .await;
        assert_eq!(data(&pg_srv), ["0 100 5432 pg-0.pg.db.svc.cluster.local."]);
        let ptr = ask(server, "5.1.244.10.in-addr.arpa.", RecordType::PTR, tcp).await;
        assert_eq!(data(&ptr), ["pg-0.pg.db.svc.cluster.local."]);
        let cname = ask(server, "ext.default.svc.cluster.local.", RecordType::A, tcp).await;
        assert_eq!(data(&cname), ["db.example.org."]);
        let missing = ask(
            server,
            "nope.default.svc.cluster.local.",
            RecordType::A,
            tcp,
        )
        .await;
        assert_eq!(missing.response_code(), ResponseCode::NXDomain);
        assert_eq!(missing.name_servers()[0].record_type(), RecordType::SOA);
        let nodata = ask(
            server,
            "web.default.svc.cluster.local.",
            RecordType::AAAA,
            tcp,
        )
        .await;
        assert_eq!(nodata.response_code(), ResponseCode::NoError);
        assert!(nodata.answers().is_empty());
        assert_eq!(nodata.name_servers()[0].record_type(), RecordType::SOA);
        let version = ask(server, "dns-version.cluster.local.", RecordType::TXT, tcp).await;
        assert_eq!(data(&version), ["1.1.0"]);
    }

    // The second endpoint turns ready: it shows within a second.
    let started = Instant::now();
    db_slices
        .patch(
            "pg-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "pg-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.6"], "hostname": "pg-1", "conditions": {"ready": true}}]})),
        )
        .await
        .unwrap();
    loop {
        let headless = ask(server, "pg.db.svc.cluster.local.", RecordType::A, false).await;
        if data(&headless) == ["10.244.1.5", "10.244.2.6"] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "change not followed: {headless:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A deleted Service is gone as fast.
    let started = Instant::now();
    default_services
        .delete("web", &Default::default())
        .await
        .unwrap();
    loop {
        let a = ask(
            server,
            "web.default.svc.cluster.local.",
            RecordType::A,
            false,
        )
        .await;
        if a.response_code() == ResponseCode::NXDomain {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "deletion not followed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = {
        let mut registry = prometheus_client::registry::Registry::default();
        dns.metrics.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    };
    assert!(
        text.contains("dns_requests_total{type=\"A\",rcode=\"No Error\"}"),
        "{text}"
    );
    dns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_names_are_forwarded_or_fail_fast() {
    let cp = TestControlPlane::start(StoreKind::Embedded).await;
    let client = client(&cp).await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    create(
        &services,
        json!({"metadata": {"name": "api"}, "spec": {"ports": [{"port": 443}]}}),
    )
    .await;
    // No upstream: SERVFAIL at once, not after a timeout.
    let isolated = start_dns(client.clone(), "cluster.local", Vec::new()).await;
    let started = Instant::now();
    let reply = ask(
        isolated.local_addrs()[0],
        "example.org.",
        RecordType::A,
        false,
    )
    .await;
    assert_eq!(reply.response_code(), ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_millis(200));
    // An upstream: a second server for another domain stands in for the host's resolver.
    let upstream = start_dns(client.clone(), "other.test", Vec::new()).await;
    let forwarding = start_dns(client, "cluster.local", upstream.local_addrs().to_vec()).await;
    let server = forwarding.local_addrs()[0];
    let reply = ask(server, "api.default.svc.other.test.", RecordType::A, false).await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert!(!reply.authoritative());
    assert_eq!(data(&reply).len(), 1);
    let reply = ask(server, "nope.default.svc.other.test.", RecordType::A, true).await;
    assert_eq!(reply.response_code(), ResponseCode::NXDomain);
    // An upstream that does not answer: SERVFAIL after the forward timeout.
    upstream.shutdown().await;
    let started = Instant::now();
    let reply = ask(server, "api.default.svc.other.test.", RecordType::A, false).await;
    assert_eq!(reply.response_code(), ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_secs(2));
    forwarding.shutdown().await;
    isolated.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_the_cluster_services_and_their_endpoints() {
    let cp = TestControlPlane::start(StoreKind::Embedded).await;
    let client = client(&cp).await;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "kube-system");
    // A replica that stopped long ago.
    create(
        &slices,
        json!({"metadata": {"name": "kube-dns-10-0-0-99", "labels": {
                "kubernetes.io/service-name": "kube-dns",
                "endpointslice.kubernetes.io/managed-by": "korvet-control-plane"},
                "annotations": {"korvet.io/renewed-at": "2020-01-01T00:00:00Z"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.99"]}]}),
    )
    .await;
    let config = |dns: &str| korvet_dns::bootstrap::ClusterServices {
        service_cidr: ("10.96.0.0".parse().unwrap(), 12),
        api_endpoint: "10.0.0.10:6443".parse().unwrap(),
        dns_addresses: vec![dns.parse().unwrap()],
    };
    korvet_dns::bootstrap::ensure(&client, &config("10.0.0.11"))
        .await
        .unwrap();
    // A second replica, and the first again: both idempotent.
    korvet_dns::bootstrap::ensure(&client, &config("10.0.0.12"))
        .await
        .unwrap();
    korvet_dns::bootstrap::ensure(&client, &config("10.0.0.11"))
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    let kube_dns = services.get("kube-dns").await.unwrap();
    let spec = kube_dns.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
    assert!(spec.selector.is_none());
    let ports: Vec<(String, i32, String)> = spec
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.port, p.protocol.unwrap()))
        .collect();
    assert_eq!(
        ports,
        [
            ("dns".to_string(), 53, "UDP".to_string()),
            ("dns-tcp".into(), 53, "TCP".into()),
            ("metrics".into(), 9153, "TCP".into())
        ]
    );
    let labels = kube_dns.metadata.labels.unwrap();
    assert_eq!(labels["k8s-app"], "kube-dns");
    assert_eq!(labels["kubernetes.io/name"], "CoreDNS");
    let kubernetes: Api<Service> = Api::namespaced(client.clone(), "default");
    let kubernetes = kubernetes.get("kubernetes").await.unwrap();
    assert_eq!(
        kubernetes.spec.unwrap().cluster_ip.as_deref(),
        Some("10.96.0.1")
    );
    let mut names: Vec<String> = slices
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    names.sort();
    assert_eq!(names, ["kube-dns-10-0-0-11", "kube-dns-10-0-0-12"]);
    // The DNS server itself answers with what the replicas wrote.
    let dns = start_dns(client.clone(), "cluster.local", Vec::new()).await;
    let server = dns.local_addrs()[0];
    let a = ask(
        server,
        "kube-dns.kube-system.svc.cluster.local.",
        RecordType::A,
        false,
    )
    .await;
    assert_eq!(data(&a), ["10.96.0.10"]);
    let a = ask(
        server,
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
        true,
    )
    .await;
    assert_eq!(data(&a), ["10.96.0.1"]);
    dns.shutdown().await;
}
