//! The local provider's load balancers against the real kernel: instance sandboxes on the
//! external bridge and the cluster's control-plane segment, addresses allocated and
//! claimed, the active instance alone holding them, a failover that moves them (the
//! host's ARP cache follows at once), and nothing left after deletion. The instances run
//! busybox httpd as a stand-in data plane that answers `/healthz`. Runs as root.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::Cleanup;
use korvet_cloud::local::default_pool;
use korvet_cloud::{
    AddressScope, BalancerSpec, CloudError, InstanceHealth, LoadBalancers, LocalProvider, Provider,
    BALANCER_ADMIN_PORT,
};

fn output(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn addresses_of(netns: &str, iface: &str) -> String {
    output(&["ip", "-n", netns, "-4", "-br", "addr", "show", "dev", iface])
}

/// `GET /healthz` on `address`'s admin port from the host: whether it answers 200.
async fn healthz(address: Ipv4Addr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect((address, BALANCER_ADMIN_PORT)).await?;
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        Ok::<bool, std::io::Error>(text.starts_with("HTTP/1.") && text.contains(" 200 "))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

fn mac_of(netns: &str, iface: &str) -> String {
    let text = output(&["ip", "-n", netns, "-br", "link", "show", "dev", iface]);
    text.split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_pair_of_instances_holds_the_addresses_and_fails_over() {
    let cleanup = Cleanup::new();
    let state = cleanup.path().to_path_buf();
    let provider = LocalProvider::open(&state, default_pool()).unwrap();
    let cluster = format!("lb{}", std::process::id());
    let network = provider.ensure_network(&cluster).await.unwrap();
    provider.sync_routes(&cluster, &[]).await.unwrap();
    let external = provider.ensure_external_network().await.unwrap();
    assert_eq!(external.bridge, "korvet-ext");
    assert!(external.cidr.contains(&external.pool.network()));

    // Addresses: idempotent by owner, a wanted one, a taken one, one from outside.
    let web = provider
        .allocate_address(&AddressScope::External, "default/web", None)
        .await
        .unwrap();
    assert_eq!(
        provider
            .allocate_address(&AddressScope::External, "default/web", None)
            .await
            .unwrap(),
        web
    );
    let taken = provider
        .allocate_address(&AddressScope::External, "default/other", Some(web))
        .await
        .unwrap_err();
    assert!(matches!(taken, CloudError::AddressTaken { .. }), "{taken}");
    let outside = provider
        .allocate_address(
            &AddressScope::External,
            "x",
            Some(Ipv4Addr::new(10, 9, 9, 9)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(outside, CloudError::AddressOutside { .. }),
        "{outside}"
    );
    let internal_scope = AddressScope::Internal {
        cluster: cluster.clone(),
    };
    let internal = provider
        .allocate_address(&internal_scope, "default/db", None)
        .await
        .unwrap();
    assert!(network.segment("").unwrap().cidr.contains(&internal));
    // The claim is host-wide: it names this provider.
    let claim = std::fs::read_to_string(format!("/run/korvet/claims/ext-{web}")).unwrap();
    assert!(
        claim.starts_with(&state.canonicalize().unwrap().display().to_string()),
        "{claim}"
    );

    // The stand-in data plane answers /healthz on every address of the instance.
    let www = state.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("healthz"), "ok").unwrap();
    let spec = BalancerSpec {
        zones: vec!["zone-a".into(), "zone-b".into()],
        program: "/bin/busybox".into(),
        args: vec![
            "httpd".into(),
            "-f".into(),
            "-p".into(),
            format!("0.0.0.0:{BALANCER_ADMIN_PORT}"),
            "-h".into(),
            www.display().to_string(),
        ],
        config: b"{}".to_vec(),
        external_addresses: vec![web],
        internal_addresses: vec![internal],
        reach: vec!["10.244.0.0/16".parse().unwrap()],
    };
    let info = provider.ensure_balancer(&cluster, &spec).await.unwrap();
    assert_eq!(info.instances.len(), 2);
    assert_eq!(info.active, Some(0));
    assert_eq!(
        (
            info.instances[0].zone.as_str(),
            info.instances[1].zone.as_str()
        ),
        ("zone-a", "zone-b")
    );
    let (a, b) = (&info.instances[0], &info.instances[1]);
    assert!(addresses_of(&a.name, "ext").contains(&format!("{web}/32")));
    assert!(addresses_of(&a.name, "int").contains(&format!("{internal}/32")));
    assert!(addresses_of(&a.name, "int").contains(&format!("{}/32", info.gateway)));
    assert!(!addresses_of(&b.name, "ext").contains(&web.to_string()));
    // The instances reach the pod network through the host.
    let routes = output(&["ip", "-n", &a.name, "route"]);
    assert!(routes.contains("10.244.0.0/16 via"), "{routes}");
    // Again: nothing changes.
    assert_eq!(
        provider
            .ensure_balancer(&cluster, &spec)
            .await
            .unwrap()
            .active,
        Some(0)
    );
    // Replies to the external network return through the gateway.
    let table = output(&[
        "ip",
        "route",
        "show",
        "table",
        &(1000 + network.index).to_string(),
    ]);
    assert!(
        table.contains(&format!("{} via {}", external.cidr, info.gateway)),
        "{table}"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    while provider.probe_instance(&cluster, 0).await != InstanceHealth::Healthy {
        assert!(Instant::now() < deadline, "instance 0 never healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healthz(web).await, "the address answers through instance 0");
    let neighbour = || output(&["ip", "neigh", "show", &web.to_string(), "dev", "korvet-ext"]);
    assert!(
        neighbour().contains(&mac_of(&a.name, "ext")),
        "{}",
        neighbour()
    );

    // Instance 0 dies: it is dead to the probe, the addresses move, and the host's ARP
    // cache names instance 1 at once.
    let pid = output(&["ip", "netns", "pids", &a.name]);
    for pid in pid.split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while provider.probe_instance(&cluster, 0).await != InstanceHealth::Dead {
        assert!(Instant::now() < deadline, "instance 0 not seen dead");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    provider.activate_instance(&cluster, 1).await.unwrap();
    assert!(!addresses_of(&a.name, "ext").contains(&format!("{web}/32")));
    assert!(addresses_of(&b.name, "ext").contains(&format!("{web}/32")));
    assert!(addresses_of(&b.name, "int").contains(&format!("{}/32", info.gateway)));
    assert!(
        neighbour().contains(&mac_of(&b.name, "ext")),
        "{}",
        neighbour()
    );
    assert!(healthz(web).await, "the address answers through instance 1");
    // Instance 0 comes back as the standby: it holds nothing.
    provider.restart_instance(&cluster, 0).await.unwrap();
    assert!(!addresses_of(&a.name, "ext").contains(&web.to_string()));
    assert_eq!(
        provider
            .get_balancer(&cluster)
            .await
            .unwrap()
            .unwrap()
            .active,
        Some(1)
    );

    // Deleting the balancer and releasing the addresses leaves nothing behind.
    provider.delete_balancer(&cluster).await.unwrap();
    provider
        .release_address(&AddressScope::External, "default/web")
        .await
        .unwrap();
    provider
        .release_address(&internal_scope, "default/db")
        .await
        .unwrap();
    assert!(!Path::new(&format!("/run/korvet/claims/ext-{web}")).exists());
    let namespaces = output(&["ip", "netns", "list"]);
    assert!(
        !namespaces.contains(&a.name) && !namespaces.contains(&b.name),
        "{namespaces}"
    );
    let links = output(&["ip", "-br", "link"]);
    assert!(
        !links.contains(&format!("korvet{}x", network.index)),
        "{links}"
    );
    let table = output(&[
        "ip",
        "route",
        "show",
        "table",
        &(1000 + network.index).to_string(),
    ]);
    assert!(!table.contains(&external.cidr.to_string()), "{table}");
    provider.delete_network(&cluster).await.unwrap();
}
