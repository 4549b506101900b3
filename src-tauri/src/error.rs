//! The one error type every command returns. The UI matches on `kind` and shows `message`
//! as is, so the messages are written for the person using the app; `detail` keeps the
//! underlying error for the "details" disclosure.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A command that needs a cluster ran before `connect`.
    NotConnected,
    /// The cluster did not answer (down, wrong address, network).
    Unavailable,
    /// The credentials or certificates were refused.
    Unauthorized,
    /// A compare on mod_revision failed: someone else changed the key first.
    Conflict,
    NotFound,
    /// The revision asked for was compacted away.
    Compacted,
    /// Something the user typed or chose cannot work (empty endpoint list, unreadable file).
    InvalidInput,
    /// The saved connections could not be read or written.
    Storage,
    /// Any other error the server returned.
    Server,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

pub type CommandResult<T> = Result<T, CommandError>;

impl CommandError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            detail: None,
        }
    }

    pub fn with_detail(mut self, detail: impl ToString) -> Self {
        self.detail = Some(detail.to_string());
        self
    }

    pub fn not_connected() -> Self {
        Self::new(
            ErrorKind::NotConnected,
            "Not connected to a cluster. Choose a connection first.",
        )
    }
}

impl From<etcd_client::Error> for CommandError {
    fn from(error: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        use tonic::Code;
        let (kind, message) = match &error {
            E::GRpcStatus(status) => match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => (
                    ErrorKind::Unavailable,
                    "The cluster did not answer in time. Check that it is running and reachable.",
                ),
                Code::Unauthenticated | Code::PermissionDenied => (
                    ErrorKind::Unauthorized,
                    "The cluster refused the user name, password or certificate.",
                ),
                Code::OutOfRange => (
                    ErrorKind::Compacted,
                    "That revision has been compacted; older history is no longer kept.",
                ),
                Code::NotFound => (ErrorKind::NotFound, "The cluster has no such item."),
                Code::InvalidArgument => (
                    ErrorKind::InvalidInput,
                    "The cluster rejected the request as invalid.",
                ),
                _ => (ErrorKind::Server, "The cluster returned an error."),
            },
            E::TransportError(_) | E::IoError(_) => (
                ErrorKind::Unavailable,
                "Could not reach the cluster. Check the endpoints and that the cluster is running.",
            ),
            E::InvalidUri(_) | E::InvalidArgs(_) | E::EndpointError(_) => (
                ErrorKind::InvalidInput,
                "An endpoint is not a valid address such as http://127.0.0.1:2379.",
            ),
            _ => (ErrorKind::Server, "The cluster returned an error."),
        };
        let detail = match &error {
            E::GRpcStatus(status) => status.message().to_owned(),
            other => other.to_string(),
        };
        CommandError::new(kind, message).with_detail(detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_shape_is_kind_message_and_optional_detail() {
        let plain = CommandError::not_connected();
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            serde_json::json!({
                "kind": "not_connected",
                "message": "Not connected to a cluster. Choose a connection first.",
            })
        );
        let detailed = CommandError::new(ErrorKind::Conflict, "changed").with_detail("mod 7");
        assert_eq!(
            serde_json::to_value(&detailed).unwrap(),
            serde_json::json!({"kind": "conflict", "message": "changed", "detail": "mod 7"})
        );
    }

    #[test]
    fn compacted_grpc_error_maps_to_compacted_kind_with_server_text_as_detail() {
        let status =
            tonic::Status::out_of_range("etcdserver: mvcc: required revision has been compacted");
        let error = CommandError::from(etcd_client::Error::GRpcStatus(status));
        assert_eq!(error.kind, ErrorKind::Compacted);
        assert_eq!(
            error.detail.as_deref(),
            Some("etcdserver: mvcc: required revision has been compacted")
        );
    }

    #[test]
    fn every_kind_serialises_as_snake_case() {
        let names: Vec<String> = [
            ErrorKind::NotConnected,
            ErrorKind::Unavailable,
            ErrorKind::Unauthorized,
            ErrorKind::Conflict,
            ErrorKind::NotFound,
            ErrorKind::Compacted,
            ErrorKind::InvalidInput,
            ErrorKind::Storage,
            ErrorKind::Server,
        ]
        .iter()
        .map(|kind| {
            serde_json::to_value(kind)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
        assert_eq!(
            names,
            [
                "not_connected",
                "unavailable",
                "unauthorized",
                "conflict",
                "not_found",
                "compacted",
                "invalid_input",
                "storage",
                "server"
            ]
        );
    }
}
