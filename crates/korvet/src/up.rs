//! `korvet up`: the quick start. Checks prerequisites, starts the management plane on
//! the embedded store, creates a demo cluster (1 master, 2 nodes), writes its kubeconfig
//! and waits; Ctrl-C stops the platform and every machine and control plane it runs,
//! keeping all data, so that the next `korvet up` brings the same cluster back.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use korvet_api::{Cluster, ClusterSpec, InlineNodePool, PoolTemplate};
use kube::api::{Api, PostParams};

use crate::server::ServerArgs;

#[derive(Args)]
pub(crate) struct UpArgs {
    /// Where Korvet keeps its state (default ~/.korvet).
    #[arg(long)]
    home: Option<PathBuf>,
    /// Address of the management API.
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: std::net::SocketAddr,
    /// Name of the demo cluster.
    #[arg(long, default_value = "demo")]
    cluster: String,
    /// Nodes of the demo cluster.
    #[arg(long, default_value_t = 2)]
    nodes: i32,
}

pub(crate) async fn run(args: UpArgs) -> anyhow::Result<()> {
    let home = match args.home {
        Some(home) => home,
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set; pass --home")?)
            .join(".korvet"),
    };
    eprintln!("korvet up: checking prerequisites");
    korvet_platform::preflight()?;
    let server_args = ServerArgs {
        data_dir: home.join("data"),
        listen: args.listen,
        store: "embedded".into(),
        pool: korvet_platform::DEFAULT_POOL.into(),
        registry_port: 5443,
    };
    eprintln!(
        "korvet up: starting the management plane in {}",
        server_args.data_dir.display()
    );
    let running = server_args.management_plane()?.start().await?;
    let admin = home.join("admin.kubeconfig");
    std::fs::copy(&running.api.kubeconfig, &admin)
        .with_context(|| format!("writing {}", admin.display()))?;
    let client = korvet_apimachinery::client_from_kubeconfig_yaml(
        &std::fs::read_to_string(&admin).with_context(|| format!("reading {}", admin.display()))?,
    )
    .await?;
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), "default");
    if clusters.get_opt(&args.cluster).await?.is_none() {
        let spec = ClusterSpec {
            node_pools: vec![InlineNodePool {
                name: "workers".into(),
                pool: PoolTemplate {
                    flavor: "small".into(),
                    zone: "zone-a".into(),
                    replicas: args.nodes,
                    ..Default::default()
                },
            }],
            ..serde_json::from_value(serde_json::json!({}))?
        };
        clusters
            .create(&PostParams::default(), &Cluster::new(&args.cluster, spec))
            .await
            .map_err(crate::cli::explain)?;
        eprintln!(
            "korvet up: creating cluster {} (1 master, {} nodes)",
            args.cluster, args.nodes
        );
    } else {
        eprintln!(
            "korvet up: cluster {} exists; bringing it back",
            args.cluster
        );
    }
    let outcome = tokio::select! {
        result = crate::cli::wait_running(&clusters, &args.cluster) => Some(result),
        _ = crate::signals::wait_for_shutdown() => None,
    };
    if let Some(result) = outcome {
        result?;
        let kubeconfig = crate::cli::cluster_kubeconfig(&client, "default", &args.cluster).await?;
        let path = home.join(format!("{}.kubeconfig", args.cluster));
        std::fs::write(&path, kubeconfig).with_context(|| format!("writing {}", path.display()))?;
        println!("cluster {} is running.", args.cluster);
        println!("  kubeconfig:      {}", path.display());
        println!(
            "  try:             kubectl --kubeconfig {} get nodes",
            path.display()
        );
        println!(
            "  management API:  KORVET_KUBECONFIG={} korvet cluster list",
            admin.display()
        );
        let registry = running.registry_url.trim_start_matches("https://");
        println!("  images:          {registry}/busybox:latest, {registry}/demo-web:latest (all: korvet image list)");
        println!(
            "  a first pod:     kubectl --kubeconfig {} run web --image={registry}/demo-web:latest --port=8080",
            path.display()
        );
        println!("  more clusters:   korvet cluster create NAME --masters 3 --pool workers:medium:zone-b:3 --wait");
        println!(
            "press Ctrl-C to stop Korvet (clusters stop, data is kept; `korvet up` again resumes)"
        );
        crate::signals::wait_for_shutdown().await;
    }
    eprintln!("korvet up: stopping machines and control planes (data is kept)");
    running.stop_with_clusters().await?;
    eprintln!("korvet up: stopped");
    Ok(())
}
