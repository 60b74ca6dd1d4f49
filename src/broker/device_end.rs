//! Why a device flow ended without connecting, as apps read it: the status
//! (`denied`, `expired`, `failed`) and a stable code in `error`, so that an app can tell a
//! refusal it can act on (its key's connection cap, its key revoked) from a provider's
//! failure without reading the `detail`'s prose.

use super::BrokerError;
use crate::oauth::flows::FlowError;
use crate::store::DeviceFlowStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// The person declined at the provider.
    Denied,
    /// The code expired before the person approved it.
    Expired,
    /// The API key that started the flow was revoked.
    KeyRevoked,
    /// The flow's sealed device code, or the tokens, could not be opened or sealed.
    Vault,
    /// The provider refused the flow (a grant error other than a decline or an expiry).
    ProviderRejected,
    /// The provider asked to be called later, past what a poll waits for.
    ProviderUnavailable,
    /// The provider's ID token did not verify.
    IdTokenInvalid,
    /// The starting key reached `limits.max_connections_per_key`.
    TooManyConnections,
    /// Tokens were issued but the store could not keep them.
    NotStored,
    /// Its connection was deleted while it waited: approved afterwards, it would have
    /// brought the connection back (another person's account even, whoever had the code).
    ConnectionDeleted,
}

impl Ended {
    pub(super) fn status(self) -> DeviceFlowStatus {
        match self {
            Ended::Denied => DeviceFlowStatus::Denied,
            Ended::Expired => DeviceFlowStatus::Expired,
            _ => DeviceFlowStatus::Failed,
        }
    }

    /// The code apps read in `error`: RFC 8628's for a decline and an expiry, the broker
    /// API's problem codes for the rest.
    pub(super) fn code(self) -> &'static str {
        match self {
            Ended::Denied => "access_denied",
            Ended::Expired => "expired_token",
            Ended::KeyRevoked => "api_key_revoked",
            Ended::Vault => "vault_error",
            Ended::ProviderRejected => "provider_rejected",
            Ended::ProviderUnavailable => "provider_unavailable",
            Ended::IdTokenInvalid => "id_token_invalid",
            Ended::TooManyConnections => "too_many_connections",
            Ended::NotStored => "storage_unavailable",
            Ended::ConnectionDeleted => "connection_deleted",
        }
    }

    /// How a final poll failure ends the flow.
    pub(super) fn of_poll(e: &FlowError) -> Ended {
        match e {
            FlowError::InvalidGrant(_) | FlowError::Rejected { .. } => Ended::ProviderRejected,
            FlowError::Transient(_) | FlowError::Throttled { .. } => Ended::ProviderUnavailable,
        }
    }

    /// How a failure to keep the tokens a poll got ends the flow.
    pub(super) fn of_keeping(e: &BrokerError) -> Ended {
        match e {
            BrokerError::TooManyConnections { .. } => Ended::TooManyConnections,
            BrokerError::IdToken(_) => Ended::IdTokenInvalid,
            BrokerError::Vault(_) => Ended::Vault,
            BrokerError::ProviderRejected(_) => Ended::ProviderRejected,
            BrokerError::ProviderUnavailable { .. } => Ended::ProviderUnavailable,
            _ => Ended::NotStored,
        }
    }

    /// The code of a flow as stored: its own, or for a flow that ended before the store
    /// kept one (or an expiry found on reading it), the one its status implies; none for
    /// a failure stored without one, whose cause its status does not tell.
    pub(super) fn code_of(status: DeviceFlowStatus, stored: Option<String>) -> Option<String> {
        let implied = match status {
            DeviceFlowStatus::Pending | DeviceFlowStatus::Connected => return None,
            DeviceFlowStatus::Failed => return stored,
            DeviceFlowStatus::Denied => Ended::Denied,
            DeviceFlowStatus::Expired => Ended::Expired,
        };
        Some(stored.unwrap_or_else(|| implied.code().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_end_has_its_status_and_a_code_of_its_own() {
        let all = [
            Ended::Denied,
            Ended::Expired,
            Ended::KeyRevoked,
            Ended::Vault,
            Ended::ProviderRejected,
            Ended::ProviderUnavailable,
            Ended::IdTokenInvalid,
            Ended::TooManyConnections,
            Ended::NotStored,
            Ended::ConnectionDeleted,
        ];
        let codes: std::collections::HashSet<_> = all.iter().map(|e| e.code()).collect();
        assert_eq!(codes.len(), all.len());
        assert_eq!(Ended::Denied.status(), DeviceFlowStatus::Denied);
        assert_eq!(Ended::Expired.status(), DeviceFlowStatus::Expired);
        assert_eq!(Ended::TooManyConnections.status(), DeviceFlowStatus::Failed);
    }

    #[test]
    fn a_flow_stored_without_a_code_gets_the_one_its_status_implies() {
        assert_eq!(Ended::code_of(DeviceFlowStatus::Pending, None), None);
        assert_eq!(
            Ended::code_of(DeviceFlowStatus::Expired, None).as_deref(),
            Some("expired_token")
        );
        assert_eq!(
            Ended::code_of(
                DeviceFlowStatus::Failed,
                Some("too_many_connections".into())
            )
            .as_deref(),
            Some("too_many_connections")
        );
        assert_eq!(
            Ended::code_of(DeviceFlowStatus::Connected, Some("x".into())),
            None
        );
        assert_eq!(Ended::code_of(DeviceFlowStatus::Failed, None), None);
    }
}
