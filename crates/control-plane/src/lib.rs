//! One cluster's control plane in one process, as `korvet control-plane` runs it (and the
//! platform runs one per master): the API server, the controllers and the scheduler, each
//! campaigning for its Lease so that of several replicas one acts, and the cluster DNS
//! with the `kubernetes` and `kube-dns` Services it keeps. Tests start the same assembly.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use korvet_apiserver::launch::{self, ApiServerConfig, LaunchError, RunningApiServer};
use korvet_store::StoreLocation;

/// A control plane to start.
pub struct ControlPlane {
    /// The cluster's certificates, store and admin kubeconfig.
    pub data_dir: PathBuf,
    /// Port 0 picks a free port.
    pub listen: SocketAddr,
    pub store: StoreLocation,
    /// More host names or addresses for the serving certificate; the first address is
    /// where clients reach the API (the `kubernetes` Service's endpoint).
    pub advertise_hosts: Vec<String>,
    /// Static bearer tokens: lines of `token,user,uid[,"group1,group2"]`.
    pub token_auth_file: Option<PathBuf>,
    /// Cluster name written into the admin kubeconfig.
    pub cluster_name: String,
    /// The cluster's PKI when replicas share it (default `DATA_DIR/pki`).
    pub pki_dir: Option<PathBuf>,
    /// Where Services' ClusterIPs come from (default 10.96.0.0/12).
    pub service_cidr: Option<(Ipv4Addr, u8)>,
    /// Pods' addresses: each Node gets a /24 of it as its podCIDR.
    pub cluster_cidr: Option<(Ipv4Addr, u8)>,
    /// Whether the controllers and the scheduler run; without them the API server serves
    /// alone.
    pub controllers: bool,
    pub dns_listen: DnsListen,
    /// The cluster's DNS domain.
    pub cluster_domain: String,
}

/// Where the cluster DNS serves (UDP and TCP).
pub enum DnsListen {
    Off,
    /// The API server's address, port 53, when it can be bound: another DNS server on the
    /// host only costs the cluster its DNS, with a warning.
    ApiAddress,
    /// These addresses, which must be bound: each control plane on a host needs its own
    /// (the platform gives each master one on its cluster's network).
    At(Vec<SocketAddr>),
}

/// A running control plane: the API server and what runs against it in this process.
pub struct RunningControlPlane {
    // Declared first, so that on drop they stop before the API server they talk to.
    pub components: Components,
    pub api: RunningApiServer,
}

/// The controllers, the scheduler and the cluster DNS of a control plane; dropping this
/// stops them at once, [`Components::shutdown`] also hands their Leases back.
pub struct Components {
    dns: Option<ClusterDns>,
    scheduler: Option<korvet_scheduler::RunningScheduler>,
    controllers: Option<korvet_controllers::RunningControllers>,
}

struct ClusterDns {
    server: korvet_dns::RunningDns,
    /// Keeps the `kubernetes` and `kube-dns` Services with this replica's endpoints.
    keeper: tokio::task::JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(transparent)]
    Launch(Box<LaunchError>),
    #[error("starting the controllers")]
    Controllers(#[source] korvet_controllers::CsrError),
    #[error("starting the scheduler")]
    Scheduler(#[source] korvet_apimachinery::ClientError),
    #[error("starting the cluster DNS")]
    DnsClient(#[source] korvet_apimachinery::ClientError),
    #[error("starting the cluster DNS")]
    Dns(#[source] korvet_dns::DnsError),
}

impl ControlPlane {
    pub async fn start(self) -> Result<RunningControlPlane, ControlPlaneError> {
        let api = launch::start(ApiServerConfig {
            data_dir: self.data_dir.clone(),
            listen: self.listen,
            store: self.store.clone(),
            extra_hosts: self.advertise_hosts.clone(),
            token_auth_file: self.token_auth_file.clone(),
            cluster_name: self.cluster_name.clone(),
            pki_dir: self.pki_dir.clone(),
            admission: Vec::new(),
            crds: Vec::new(),
            service_cidr: self.service_cidr,
        })
        .await
        .map_err(|e| ControlPlaneError::Launch(Box::new(e)))?;
        let mut components = Components {
            dns: None,
            scheduler: None,
            controllers: None,
        };
        if self.controllers {
            // The admin identity may approve and sign CSRs; the CA signs node certificates.
            let identity = korvet_apimachinery::leader::default_identity();
            components.controllers = Some(
                korvet_controllers::spawn_all(
                    &api.kubeconfig,
                    korvet_controllers::ControllersConfig {
                        ca_cert_pem: api.pki.ca_cert_pem().to_string(),
                        ca_key_pem: api.pki.ca_key_pem(),
                        cluster_cidr: self.cluster_cidr,
                        leader_identity: Some(identity.clone()),
                    },
                )
                .await
                .map_err(ControlPlaneError::Controllers)?,
            );
            let client = korvet_apimachinery::client_from_kubeconfig(&api.kubeconfig)
                .await
                .map_err(ControlPlaneError::Scheduler)?;
            components.scheduler = Some(korvet_scheduler::spawn(
                client,
                korvet_scheduler::SchedulerConfig::new(&identity),
            ));
        }
        components.dns = self.start_dns(&api).await?;
        api.server.metrics.register_with(|registry| {
            if let Some(scheduler) = &components.scheduler {
                scheduler.metrics.register(registry);
            }
            if let Some(dns) = &components.dns {
                dns.server.metrics.register(registry);
            }
            if components.controllers.is_some() {
                korvet_controllers::metrics::register(registry);
            }
        });
        Ok(RunningControlPlane { components, api })
    }

    async fn start_dns(
        &self,
        api: &RunningApiServer,
    ) -> Result<Option<ClusterDns>, ControlPlaneError> {
        let (listen, explicit) = match &self.dns_listen {
            DnsListen::Off => return Ok(None),
            DnsListen::ApiAddress => (vec![SocketAddr::new(api.address.ip(), 53)], false),
            DnsListen::At(listen) => (listen.clone(), true),
        };
        let client = korvet_apimachinery::client_from_kubeconfig(&api.kubeconfig)
            .await
            .map_err(ControlPlaneError::DnsClient)?;
        let mut config = korvet_dns::DnsConfig::new(listen);
        config.domain = self.cluster_domain.clone();
        let server = match korvet_dns::spawn(client.clone(), config).await {
            Ok(dns) => dns,
            Err(e) if !explicit => {
                tracing::warn!(error = %e, "no cluster DNS; give it an address with --dns-listen");
                return Ok(None);
            }
            Err(e) => return Err(ControlPlaneError::Dns(e)),
        };
        let api_ip = self
            .advertise_hosts
            .iter()
            .find_map(|h| h.parse::<IpAddr>().ok())
            .unwrap_or(api.address.ip());
        let keeper = korvet_dns::bootstrap::spawn_keeper(
            client,
            korvet_dns::bootstrap::ClusterServices {
                service_cidr: api.server.service_cidr(),
                api_endpoint: SocketAddr::new(api_ip, api.address.port()),
                dns_addresses: server.local_addrs().iter().map(|a| a.ip()).collect(),
            },
        );
        Ok(Some(ClusterDns { server, keeper }))
    }
}

impl RunningControlPlane {
    /// Stops the components (handing their Leases back), then the API server.
    pub async fn shutdown(self) {
        let RunningControlPlane { components, api } = self;
        components.shutdown().await;
        drop(api);
    }
}

impl Components {
    /// Where the cluster DNS serves, when it runs.
    pub fn dns_addresses(&self) -> Option<&[SocketAddr]> {
        self.dns.as_ref().map(|dns| dns.server.local_addrs())
    }

    /// Stops the DNS, then the scheduler and the controllers, each handing its Lease
    /// back so that another replica takes over at once.
    pub async fn shutdown(mut self) {
        if let Some(ClusterDns { server, keeper }) = self.dns.take() {
            keeper.abort();
            server.shutdown().await;
        }
        if let Some(scheduler) = self.scheduler.take() {
            scheduler.shutdown().await;
        }
        if let Some(controllers) = self.controllers.take() {
            controllers.shutdown().await;
        }
    }
}

impl Drop for Components {
    fn drop(&mut self) {
        if let Some(dns) = &self.dns {
            dns.keeper.abort();
        }
    }
}
