//! `korvet image build|list`: deterministic OCI images, written as an OCI layout and/or
//! pushed to a registry.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use korvet_registry::build::{self, ImageConfig, Reference, Source};
use korvet_registry::client::Client;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build an image from a root filesystem directory or a static binary.
    Build(BuildArgs),
    /// Print the full reference of every image in a registry.
    List(RegistryArgs),
}

#[derive(Args)]
pub struct RegistryArgs {
    /// The registry, https://HOST:PORT (or http://).
    #[arg(long, env = "KORVET_REGISTRY")]
    registry: Option<String>,
    /// PEM file of the CA that signed the registry's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// A token of the management API (needed to push, and for private repositories).
    #[arg(long, env = "KORVET_TOKEN")]
    token: Option<String>,
}

#[derive(Args)]
pub struct BuildArgs {
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

fn client(args: &RegistryArgs, from_tag: Option<&str>) -> anyhow::Result<Client> {
    let url = match (&args.registry, from_tag) {
        (Some(url), _) => url.clone(),
        (None, Some(host)) => format!("https://{host}"),
        (None, None) => anyhow::bail!("no registry: pass --registry https://HOST:PORT"),
    };
    let ca = match &args.ca {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => None,
    };
    Ok(Client::new(&url, ca.as_deref(), args.token.as_deref())?)
}

pub async fn run(command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::List(args) => {
            let client = client(&args, None)?;
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
    let image = tokio::task::spawn_blocking(move || build::build(&source, &config))
        .await
        .context("building the image")??;
    if let Some(dir) = &args.oci_dir {
        image
            .write_oci_layout(dir, &reference.tag)
            .with_context(|| format!("writing the OCI layout {}", dir.display()))?;
    }
    if args.push {
        let client = client(&args.registry, reference.registry.as_deref())?;
        image
            .push(&client, &reference.repository, &reference.tag)
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
