//! `korvet image build|list`: deterministic OCI images, written as an OCI layout and/or
//! pushed to a registry.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use korvet_api::registry_info::{self, RegistryInfo};
use korvet_image::{ImageConfig, Reference, Source};
use korvet_registry::build;
use korvet_registry::client::Client;
use kube::Api;

#[derive(Subcommand)]
pub(crate) enum ImageCommand {
    /// Build an image from a root filesystem directory or a static binary.
    Build(BuildArgs),
    /// Print the full reference of every image in a registry.
    List(RegistryArgs),
}

#[derive(Args)]
pub(crate) struct RegistryArgs {
    /// The registry, https://HOST:PORT (or http://); default: the platform's, as the
    /// management API publishes it.
    #[arg(long, env = "KORVET_REGISTRY")]
    registry: Option<String>,
    /// PEM file of the CA that signed the registry's certificate (default for the
    /// platform's registry: the CA the management API publishes).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// A token of the management API (needed to push, and for private repositories);
    /// default for pushes to the platform's registry: a one-hour token of the management
    /// API's `kube-system/image-pusher` service account.
    #[arg(long, env = "KORVET_TOKEN")]
    token: Option<String>,
}

#[derive(Args)]
pub(crate) struct BuildArgs {
    /// The directory whose contents become the image's root filesystem.
    #[arg(
        long,
        conflicts_with = "from_binary",
        required_unless_present = "from_binary"
    )]
    from_dir: Option<PathBuf>,
    /// A static binary that becomes /<its name> (and the default entrypoint).
    #[arg(long)]
    from_binary: Option<PathBuf>,
    /// The entrypoint, one argument per flag: `--entrypoint /bin/sleep --entrypoint 60`.
    #[arg(long, allow_hyphen_values = true)]
    entrypoint: Vec<String>,
    /// The command, one argument per flag: `--cmd /bin/sh --cmd -c --cmd 'echo hi'`.
    #[arg(long, allow_hyphen_values = true)]
    cmd: Vec<String>,
    /// Environment K=V (repeatable).
    #[arg(long = "env")]
    env: Vec<String>,
    /// The image's name, [HOST:PORT/]REPOSITORY[:TAG].
    #[arg(long)]
    tag: String,
    /// Push to the registry (--registry, or the host in --tag).
    #[arg(long)]
    push: bool,
    /// Also write an OCI image layout to this directory.
    #[arg(long)]
    oci_dir: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// A client of the registry the arguments name, else of the platform's registry, whose
/// address and CA the management API publishes; `push` asks for a token to push with.
async fn registry_client(
    args: &RegistryArgs,
    from_tag: Option<&str>,
    push: bool,
) -> anyhow::Result<Client> {
    let named = args
        .registry
        .clone()
        .or_else(|| from_tag.map(|host| format!("https://{host}")));
    // The management API is asked only when the arguments leave something open.
    let open = args.ca.is_none() || (push && args.token.is_none());
    let platform = match &named {
        Some(_) if !open => None,
        Some(_) => platform_registry().await.ok(),
        None => Some(platform_registry().await.map_err(|e| {
            anyhow::anyhow!(
                "no registry: pass --registry https://HOST:PORT, or let the CLI find the platform's registry through the management API ({e:#})"
            )
        })?),
    };
    let url = named.unwrap_or_else(|| {
        platform
            .as_ref()
            .map(|(info, _)| info.url())
            .unwrap_or_default()
    });
    let is_platform = platform
        .as_ref()
        .filter(|(info, _)| url.trim_start_matches("https://") == info.host);
    let ca = match (&args.ca, is_platform) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        (None, Some((info, _))) => Some(info.ca_pem.clone()),
        (None, None) => None,
    };
    let token = match (&args.token, is_platform) {
        (Some(token), _) => Some(token.clone()),
        (None, Some((_, client))) if push => Some(push_token(client).await?),
        (None, _) => None,
    };
    Ok(Client::new(&url, ca.as_deref(), token.as_deref())?)
}

/// The platform registry as the management API publishes it, and a client of that API.
async fn platform_registry() -> anyhow::Result<(RegistryInfo, kube::Client)> {
    let client = crate::cli::client().await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), registry_info::NAMESPACE);
    let published = config_maps
        .get_opt(registry_info::NAME)
        .await
        .map_err(crate::cli::explain)?
        .with_context(|| {
            format!(
                "the management API publishes no registry ({}/{} is missing): is this a `korvet server` of this version?",
                registry_info::NAMESPACE,
                registry_info::NAME
            )
        })?;
    let info = RegistryInfo::from_config_map(&published).with_context(|| {
        format!(
            "{}/{} lacks the registry's host or CA",
            registry_info::NAMESPACE,
            registry_info::NAME
        )
    })?;
    Ok((info, client))
}

/// A short-lived token of the platform's pusher service account, for a user of the
/// management API allowed to ask for one.
async fn push_token(client: &kube::Client) -> anyhow::Result<String> {
    let accounts: Api<ServiceAccount> =
        Api::namespaced(client.clone(), registry_info::PUSH_NAMESPACE);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let issued = accounts
        .create_token_request(registry_info::PUSH_SERVICE_ACCOUNT, &Default::default(), &request)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "no token to push with: {:#}; pass --token (or KORVET_TOKEN) with a token the management API accepts",
                crate::cli::explain(e)
            )
        })?;
    issued
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .context("the management API issued an empty token")
}

pub(crate) async fn run(command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::List(args) => {
            let client = registry_client(&args, None, false).await?;
            for reference in build::list_images(&client).await? {
                println!("{reference}");
            }
            Ok(())
        }
        ImageCommand::Build(args) => build_image(args).await,
    }
}

async fn build_image(args: BuildArgs) -> anyhow::Result<()> {
    let reference = Reference::parse(&args.tag)?;
    if !args.push && args.oci_dir.is_none() {
        anyhow::bail!("nothing to do with the image: pass --push and/or --oci-dir DIR");
    }
    let source = match (args.from_dir, args.from_binary) {
        (Some(dir), None) => Source::Dir(dir),
        (None, Some(file)) => Source::Binary(file),
        _ => anyhow::bail!("pass exactly one of --from-dir and --from-binary"),
    };
    let config = ImageConfig {
        entrypoint: (!args.entrypoint.is_empty()).then_some(args.entrypoint),
        cmd: (!args.cmd.is_empty()).then_some(args.cmd),
        env: args.env,
        working_dir: None,
    };
    for e in &config.env {
        if !e.contains('=') {
            anyhow::bail!("--env {e}: expected K=V");
        }
    }
    let image = tokio::task::spawn_blocking(move || korvet_image::build(&source, &config))
        .await
        .context("building the image")??;
    if let Some(dir) = &args.oci_dir {
        image
            .write_oci_layout(dir, &reference.tag)
            .with_context(|| format!("writing the OCI layout {}", dir.display()))?;
    }
    if args.push {
        let client = registry_client(&args.registry, reference.registry.as_deref(), true).await?;
        build::push(&image, &client, &reference.repository, &reference.tag)
            .await
            .context("pushing the image")?;
        println!(
            "{}/{}:{}@{}",
            client.authority(),
            reference.repository,
            reference.tag,
            image.digest()
        );
    } else {
        println!("{reference}@{}", image.digest());
    }
    Ok(())
}
