//! `korvet lb list|get`: the platform's load balancers, one per `type: LoadBalancer`
//! Service of a cluster.

use korvet_api::{find_condition, lb_condition, LoadBalancer};
use kube::api::Api;
use kube::ResourceExt;

use super::output::{age, print};
use super::{explain, Global};

pub(super) async fn list(
    client: kube::Client,
    global: &Global,
    cluster: Option<String>,
) -> anyhow::Result<()> {
    let api: Api<LoadBalancer> = Api::namespaced(client, &global.namespace);
    let mut items: Vec<LoadBalancer> = api
        .list(&Default::default())
        .await
        .map_err(explain)?
        .items
        .into_iter()
        .filter(|lb| cluster.as_ref().is_none_or(|c| &lb.spec.cluster == c))
        .collect();
    items.sort_by(|a, b| {
        (&a.spec.cluster, &a.spec.service).cmp(&(&b.spec.cluster, &b.spec.service))
    });
    print_load_balancers(global, &items, false)
}

/// One load balancer, by its object name or as `CLUSTER NAMESPACE/SERVICE`.
pub(super) async fn get(
    client: kube::Client,
    global: &Global,
    cluster_or_name: String,
    service: Option<String>,
) -> anyhow::Result<()> {
    let api: Api<LoadBalancer> = Api::namespaced(client, &global.namespace);
    let name = match service {
        None => cluster_or_name,
        Some(service) => {
            let (namespace, name) = service.split_once('/').unwrap_or(("default", &service));
            format!("{cluster_or_name}.{namespace}.{name}")
        }
    };
    let lb = api.get_opt(&name).await.map_err(explain)?.ok_or_else(|| {
        anyhow::anyhow!("no load balancer {name:?}; list them with `korvet lb list`")
    })?;
    print_load_balancers(global, &[lb], true)
}

fn print_load_balancers(
    global: &Global,
    items: &[LoadBalancer],
    single: bool,
) -> anyhow::Result<()> {
    print(
        global.output,
        items,
        single,
        &[
            "CLUSTER", "SERVICE", "TYPE", "ADDRESS", "PORTS", "ACTIVE", "READY", "AGE",
        ],
        |lb| {
            let status = lb.status.clone().unwrap_or_default();
            let ready = find_condition(&status.conditions, lb_condition::READY);
            let ports: Vec<String> = lb
                .spec
                .listeners
                .iter()
                .map(|l| format!("{}/{}", l.port, l.protocol))
                .collect();
            vec![
                lb.spec.cluster.clone(),
                if lb.spec.http.is_some() {
                    "(ingress)".to_string()
                } else {
                    lb.spec.service.clone()
                },
                lb.spec.type_.clone(),
                status.address.unwrap_or_else(|| "<pending>".into()),
                ports.join(","),
                status.active_instance.unwrap_or_else(|| "-".into()),
                match ready {
                    Some(c) if c.is_true() => "True".to_string(),
                    Some(c) => format!("False ({})", c.reason),
                    None => "Unknown".to_string(),
                },
                age(lb.metadata.creation_timestamp.as_ref()),
            ]
        },
    )?;
    if single && items.len() == 1 && global.output == super::Format::Table {
        if let Some(status) = &items[0].status {
            for c in &status.conditions {
                println!("{}={} {}: {}", c.type_, c.status, c.reason, c.message);
            }
        }
        let _ = items[0].name_any();
    }
    Ok(())
}
