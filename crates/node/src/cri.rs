//! The CRI v1 client: gRPC over the machine's containerd unix socket.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

/// Where the machine's containerd listens when `CONTAINERD_ADDRESS` is not set.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("connecting to containerd at {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI {call}: {}", status.message())]
    Call {
        call: &'static str,
        status: tonic::Status,
    },
}

impl CriError {
    pub fn call(call: &'static str) -> impl FnOnce(tonic::Status) -> CriError {
        move |status| CriError::Call { call, status }
    }

    /// The runtime's own message, for reasons users read in pod status.
    pub fn message(&self) -> String {
        match self {
            CriError::Call { status, .. } => status.message().to_string(),
            other => other.to_string(),
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, CriError::Call { status, .. } if status.code() == tonic::Code::NotFound)
    }
}

/// Both CRI services over one channel (cheap to clone).
#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
    pub socket: PathBuf,
}

impl Cri {
    /// Connects lazily: the channel dials on first use and re-dials after containerd
    /// restarts, so a runtime that is briefly away does not end the agent.
    pub fn connect_lazy(socket: &Path) -> Result<Cri, CriError> {
        let path = socket.to_path_buf();
        // The URI is required by tonic but unused: the connector dials the socket.
        let channel = Endpoint::try_from("http://[::1]:0")
            .map_err(|source| CriError::Connect {
                socket: path.clone(),
                source,
            })?
            .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }));
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            socket: socket.to_path_buf(),
        })
    }

    /// `containerd://VERSION` as the kubelet reports `containerRuntimeVersion`.
    pub async fn runtime_version(&self) -> Result<String, CriError> {
        let reply = self
            .runtime
            .clone()
            .version(k8s_cri::v1::VersionRequest {
                version: "v1".into(),
            })
            .await
            .map_err(CriError::call("Version"))?
            .into_inner();
        Ok(format!(
            "{}://{}",
            reply.runtime_name,
            reply.runtime_version.trim_start_matches('v')
        ))
    }
}
