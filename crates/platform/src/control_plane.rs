//! A cluster's hosted control plane: its PKI, the processes that serve its API (one
//! `korvet control-plane`, or three on a 3-member etcd cluster behind a `korvet lb`),
//! and whether they answer.

use std::path::PathBuf;
use std::time::Duration;

use korvet_apiserver::pki::{self, ClusterPki, KubeconfigSpec};
use korvet_cloud::ProcessSpec;

use crate::layout::ClusterLayout;
use crate::supervisor::{ProcessState, Supervisor};
use crate::PlatformError;

/// Programs the platform starts.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub korvet: PathBuf,
    pub etcd: PathBuf,
}

/// One process of a control plane.
struct Member {
    name: String,
    spec: ProcessSpec,
}

fn members(
    layout: &ClusterLayout,
    binaries: &Binaries,
    cluster_name: &str,
    service_cidr: &str,
    pod_cidr: &str,
) -> Vec<Member> {
    let mut members = Vec::new();
    let ha = layout.masters > 1;
    if ha {
        let initial_cluster = (0..layout.masters)
            .map(|i| format!("etcd-{i}={}", layout.etcd_peer_url(i)))
            .collect::<Vec<_>>()
            .join(",");
        for i in 0..layout.masters {
            let dir = layout.etcd_dir(i);
            members.push(Member {
                name: format!("etcd-{i}"),
                spec: ProcessSpec {
                    program: binaries.etcd.clone(),
                    args: vec![
                        format!("--name=etcd-{i}"),
                        format!("--data-dir={}", dir.join("data").display()),
                        format!("--listen-client-urls={}", layout.etcd_client_url(i)),
                        format!("--advertise-client-urls={}", layout.etcd_client_url(i)),
                        format!("--listen-peer-urls={}", layout.etcd_peer_url(i)),
                        format!("--initial-advertise-peer-urls={}", layout.etcd_peer_url(i)),
                        format!("--initial-cluster={initial_cluster}"),
                        // Ignored on restarts, when the data directory names the cluster.
                        "--initial-cluster-state=new".into(),
                        format!("--initial-cluster-token={}", layout.key),
                        "--max-request-bytes=2097152".into(),
                        "--experimental-watch-progress-notify-interval=5s".into(),
                        "--logger=zap".into(),
                        "--log-level=warn".into(),
                        "--log-outputs=stderr".into(),
                    ],
                    env: Vec::new(),
                    log_file: dir.join("etcd.log"),
                    netns: None,
                    cgroup: None,
                },
            });
        }
    }
    let store = if ha {
        let urls: Vec<String> = (0..layout.masters)
            .map(|i| {
                layout
                    .etcd_client_url(i)
                    .trim_start_matches("http://")
                    .to_string()
            })
            .collect();
        format!("etcd://{}", urls.join(","))
    } else {
        "embedded".to_string()
    };
    for i in 0..layout.masters {
        let dir = layout.master_dir(i);
        let mut args = vec![
            "control-plane".to_string(),
            format!("--data-dir={}", dir.display()),
            format!("--pki-dir={}", layout.pki_dir().display()),
            format!("--listen={}", layout.master_listen(i)),
            format!("--store={store}"),
            format!("--cluster-name={cluster_name}"),
            format!("--service-cluster-ip-range={service_cidr}"),
            format!("--cluster-cidr={pod_cidr}"),
            format!("--dns-listen={}", layout.master_dns(i)),
        ];
        args.extend(
            layout
                .serving_hosts()
                .into_iter()
                .map(|h| format!("--advertise-host={h}")),
        );
        members.push(Member {
            name: format!("master-{i}"),
            spec: ProcessSpec {
                program: binaries.korvet.clone(),
                args,
                env: vec![("KORVET_LOG".into(), "info".into())],
                log_file: dir.join("control-plane.log"),
                netns: None,
                cgroup: None,
            },
        });
    }
    if ha {
        let mut args = vec![
            "lb".to_string(),
            "serve".to_string(),
            format!("--listen={}:{}", layout.endpoint, crate::layout::API_PORT),
            format!("--admin-listen={}", layout.lb_admin()),
            "--check-interval-ms=500".to_string(),
        ];
        args.extend((0..layout.masters).map(|i| format!("--backend={}", layout.master_listen(i))));
        members.push(Member {
            name: "lb".into(),
            spec: ProcessSpec {
                program: binaries.korvet.clone(),
                args,
                env: Vec::new(),
                log_file: layout.dir.join("lb").join("lb.log"),
                netns: None,
                cgroup: None,
            },
        });
    }
    members
}

/// A cluster's PKI with the admin client TLS configuration the platform probes it with,
/// both made once per cluster and kept (reconciles run every few seconds).
pub(crate) struct Credentials {
    pub pki: ClusterPki,
    pub admin_tls: std::sync::Arc<rustls::ClientConfig>,
}

/// The PKI of a cluster, created on first use; the CA never changes afterwards.
pub(crate) fn credentials(layout: &ClusterLayout) -> Result<Credentials, PlatformError> {
    let pki = ClusterPki::load_or_create(&layout.pki_dir(), &layout.serving_hosts())
        .map_err(|e| PlatformError::Io(format!("the cluster's PKI: {e}")))?;
    let admin_tls = pki::client_tls_config(
        pki.ca_cert_pem(),
        Some((pki.admin_cert_pem(), pki.admin_key_pem())),
    )
    .map_err(|e| PlatformError::Io(format!("the cluster's admin TLS configuration: {e}")))?;
    Ok(Credentials {
        pki,
        admin_tls: std::sync::Arc::new(admin_tls),
    })
}

/// The admin kubeconfig of the cluster, pointing at its endpoint.
pub(crate) fn admin_kubeconfig(
    pki: &ClusterPki,
    layout: &ClusterLayout,
    cluster_name: &str,
) -> Result<String, PlatformError> {
    let spec: KubeconfigSpec = pki.admin_kubeconfig(cluster_name, &layout.endpoint_url());
    pki::kubeconfig_yaml(&spec).map_err(|e| PlatformError::Io(format!("kubeconfig: {e}")))
}

/// What the control plane's processes are doing.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Processes that had to be (re)started by this call.
    pub started: Vec<String>,
    /// Processes waiting out a crash back-off.
    pub crashing: Vec<(String, u32)>,
}

/// Makes sure every process of the control plane runs.
pub(crate) async fn ensure(
    supervisor: &Supervisor,
    layout: &ClusterLayout,
    binaries: &Binaries,
    cluster_name: &str,
    service_cidr: &str,
    pod_cidr: &str,
) -> Result<Health, PlatformError> {
    let mut health = Health::default();
    let members = members(layout, binaries, cluster_name, service_cidr, pod_cidr);
    let states = futures::future::join_all(members.iter().map(|m| {
        let record = layout.process_dir().join(format!("{}.json", m.name));
        async move { supervisor.ensure(&record, &m.spec).await }
    }))
    .await;
    for (member, state) in members.iter().zip(states) {
        match state? {
            ProcessState::Running { .. } => {}
            ProcessState::Started { .. } => health.started.push(member.name.clone()),
            ProcessState::BackingOff { restarts } => {
                health.crashing.push((member.name.clone(), restarts))
            }
        }
    }
    Ok(health)
}

/// Stops every process of the control plane; data stays.
pub(crate) async fn stop(
    supervisor: &Supervisor,
    layout: &ClusterLayout,
) -> Result<(), PlatformError> {
    stop_processes(supervisor, &layout.process_dir()).await
}

/// Stops the processes recorded in a control plane's process directory.
pub(crate) async fn stop_processes(
    supervisor: &Supervisor,
    dir: &std::path::Path,
) -> Result<(), PlatformError> {
    // API servers and the balancer first, so that etcd does not see its clients fail.
    let front =
        ["lb", "master-0", "master-1", "master-2"].map(|name| dir.join(format!("{name}.json")));
    for result in futures::future::join_all(front.iter().map(|r| supervisor.stop(r))).await {
        result?;
    }
    supervisor.stop_all(dir).await
}

/// How many API servers answer `/readyz`, and whether the endpoint does.
pub(crate) async fn readiness(
    tls: &std::sync::Arc<rustls::ClientConfig>,
    layout: &ClusterLayout,
) -> (i32, bool) {
    let mut targets: Vec<std::net::SocketAddr> = (0..layout.masters)
        .map(|i| layout.master_listen(i))
        .collect();
    if layout.masters > 1 {
        targets.push((layout.endpoint, crate::layout::API_PORT).into());
    }
    let results = futures::future::join_all(
        targets
            .iter()
            .map(|target| crate::probe::readyz(tls.clone(), *target, Duration::from_secs(2))),
    )
    .await;
    let masters = results[..layout.masters as usize]
        .iter()
        .filter(|ok| **ok)
        .count() as i32;
    let endpoint = if layout.masters > 1 {
        results[layout.masters as usize]
    } else {
        masters == 1
    };
    (masters, endpoint)
}
