//! The gRPC connection to containerd and the request plumbing every call
//! shares: the namespace header, the lease header, and turning a
//! [`tonic::Status`] into a [`RuntimeError`].

use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    events_client::EventsClient, images_client::ImagesClient, leases_client::LeasesClient,
    namespaces_client::NamespacesClient, snapshots::snapshots_client::SnapshotsClient, tasks_client::TasksClient,
    version_client::VersionClient,
};
use std::path::Path;
use swarm_core::runtime::RuntimeError;
use tonic::Code;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;

/// A connection to containerd, bound to one namespace.
#[derive(Clone, Debug)]
pub struct Engine {
    channel: Channel,
    namespace: String,
    ns_header: AsciiMetadataValue,
}

/// Checks a containerd namespace name: like a DNS label path,
/// `[a-z0-9]([a-z0-9-_.]*[a-z0-9])?`, at most 76 bytes.
pub fn validate_namespace(ns: &str) -> Result<(), RuntimeError> {
    let ok = !ns.is_empty()
        && ns.len() <= 76
        && ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && ns.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && ns.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if ns == "moby" {
        return Err(RuntimeError::InvalidConfig(
            "namespace \"moby\" belongs to Docker: the containerd runtime needs a namespace of its own".into(),
        ));
    }
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidConfig(format!(
            "containerd namespace {ns:?} must be 1-76 of [a-z0-9._-], starting and ending alphanumeric"
        )))
    }
}

impl Engine {
    /// Connects to the socket at `address` for `namespace`.
    pub async fn connect(address: &Path, namespace: &str) -> Result<Engine, RuntimeError> {
        validate_namespace(namespace)?;
        let ns_header = MetadataValue::try_from(namespace)
            .map_err(|e| RuntimeError::InvalidConfig(format!("namespace {namespace:?} is not a header value: {e}")))?;
        if !address.exists() {
            return Err(RuntimeError::Unavailable(format!("containerd socket {} does not exist", address.display())));
        }
        let channel = containerd_client::connect(address).await.map_err(|e| {
            RuntimeError::Unavailable(format!("cannot connect to containerd at {}: {e}", address.display()))
        })?;
        Ok(Engine { channel, namespace: namespace.to_string(), ns_header })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A request in this engine's namespace.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert("containerd-namespace", self.ns_header.clone());
        r
    }

    /// A request in this namespace under lease `lease` (what it creates is
    /// safe from garbage collection until the lease is deleted).
    pub fn req_leased<T>(&self, msg: T, lease: &str) -> Result<tonic::Request<T>, RuntimeError> {
        let mut r = self.req(msg);
        let v = MetadataValue::try_from(lease)
            .map_err(|e| RuntimeError::Engine(format!("lease id {lease:?} is not a header value: {e}")))?;
        r.metadata_mut().insert("containerd-lease", v);
        Ok(r)
    }

    /// Containers service.
    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    /// Tasks service.
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
    /// Snapshots service.
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    /// Images service.
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    /// Content service.
    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
    }
    /// Diff service.
    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    /// Leases service.
    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
    /// Namespaces service.
    pub fn namespaces(&self) -> NamespacesClient<Channel> {
        NamespacesClient::new(self.channel.clone())
    }
    /// Events service.
    pub fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }
    /// Version service.
    pub fn version(&self) -> VersionClient<Channel> {
        VersionClient::new(self.channel.clone())
    }
}

/// A containerd error as a [`RuntimeError`]: `op` says what was being done
/// (e.g. "tasks.start web-1"), `id` is the container for `NotFound`.
pub fn status_err(op: &str, id: &str, s: tonic::Status) -> RuntimeError {
    match s.code() {
        Code::NotFound if !id.is_empty() => RuntimeError::NotFound(id.to_string()),
        Code::Unavailable => RuntimeError::Unavailable(format!("{op}: containerd unavailable: {}", s.message())),
        _ => RuntimeError::Engine(format!("{op}: {} ({:?})", s.message(), s.code())),
    }
}

/// True when the status says the thing does not exist.
pub fn is_not_found(s: &tonic::Status) -> bool {
    s.code() == Code::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_checked() {
        validate_namespace("swarm-rs").unwrap();
        assert!(validate_namespace("moby").unwrap_err().to_string().contains("Docker"));
        assert!(validate_namespace("Bad").is_err());
        assert!(validate_namespace("-x").is_err());
        assert!(validate_namespace("").is_err());
    }
}
