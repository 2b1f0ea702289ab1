//! A small CRI client over the unix socket, for tests and benchmarks (Debian has no crictl).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use skiff_proto::cri::image_service_client::ImageServiceClient;
use skiff_proto::cri::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::error::CriError;

/// Connects to a CRI server on `socket`; returns clients for both services sharing one channel.
pub async fn connect(
    socket: impl AsRef<Path>,
) -> Result<(RuntimeServiceClient<Channel>, ImageServiceClient<Channel>), CriError> {
    let path: PathBuf = socket.as_ref().to_path_buf();
    // The URI is required by tonic but unused: the connector dials the socket.
    let channel = Endpoint::try_from("http://[::1]:50051")
        .map_err(|e| CriError::Serve(e.to_string()))?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| {
            CriError::Serve(format!("connecting to {}: {e}", socket.as_ref().display()))
        })?;
    Ok((
        RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(16 << 20),
        ImageServiceClient::new(channel).max_decoding_message_size(16 << 20),
    ))
}
