//! Connections as apps and the page see them: metadata, never a token.

use super::{Broker, BrokerError};
use crate::store::{AccountIdentity, ConnectionKey, ConnectionRow, ConnectionStatus};

/// A connection's metadata: never a token.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ConnectionView {
    pub provider: String,
    pub account: String,
    pub status: ViewStatus,
    pub scopes: Vec<String>,
    pub token_type: String,
    pub expires_at: Option<String>,
    pub has_refresh_token: bool,
    pub last_refresh_at: Option<String>,
    pub last_error: Option<String>,
    pub failures: i64,
    pub retry_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Which account at the provider this is (from a verified ID token), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_account: Option<AccountIdentity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_url: Option<String>,
}

/// A connection's status as apps and the page see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ViewStatus {
    Active,
    /// The grant is gone: only the user can fix it, by connecting again.
    NeedsReauth,
    /// The provider left the config: the connection can be neither refreshed nor revoked.
    ProviderMissing,
}

impl ViewStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ViewStatus::Active => "active",
            ViewStatus::NeedsReauth => "needs_reauth",
            ViewStatus::ProviderMissing => "provider_missing",
        }
    }
}

impl std::fmt::Display for ViewStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl Broker {
    /// A stored status as apps see it: a connection whose provider left the config cannot
    /// be refreshed or revoked.
    fn view_status(&self, provider: &str, status: ConnectionStatus) -> ViewStatus {
        match status {
            _ if !self.providers.contains_key(provider) => ViewStatus::ProviderMissing,
            ConnectionStatus::Active => ViewStatus::Active,
            ConnectionStatus::NeedsReauth => ViewStatus::NeedsReauth,
        }
    }

    fn view(&self, row: &ConnectionRow) -> ConnectionView {
        use crate::clock::rfc3339;
        let status = self.view_status(&row.provider, row.status);
        ConnectionView {
            provider: row.provider.clone(),
            account: row.account.clone(),
            status,
            scopes: row
                .scopes
                .as_deref()
                .map(|s| {
                    s.split(' ')
                        .filter(|x| !x.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            token_type: row.token_type.clone(),
            expires_at: row.access_expires_at_ms.map(rfc3339),
            has_refresh_token: row.refresh_token.is_some(),
            // "never" until a refresh after the last (re)connect.
            last_refresh_at: row
                .last_refresh_at_ms
                .filter(|t| row.connected_at_ms.is_none_or(|c| *t > c))
                .map(rfc3339),
            last_error: row.last_error.clone(),
            failures: row.failures,
            retry_at: row.retry_at_ms.map(rfc3339),
            provider_account: (!row.identity.is_empty()).then(|| row.identity.clone()),
            created_at: rfc3339(row.created_at_ms),
            updated_at: rfc3339(row.updated_at_ms),
            // Only where the page can reconnect it: not for a provider left out of the config.
            reconnect_url: (status == ViewStatus::NeedsReauth)
                .then(|| self.reconnect_url(&row.provider, &row.account)),
        }
    }

    pub async fn connection(
        &self,
        provider: &str,
        account: &str,
    ) -> Result<ConnectionView, BrokerError> {
        Ok(self.view(&self.row(&ConnectionKey::new(provider, account)).await?))
    }

    /// Connections by provider and status as `/metrics` shows them (`refresh_failing` for
    /// active ones whose refreshes fail), counted by the store.
    pub async fn connection_counts(&self) -> Result<Vec<(String, &'static str, u64)>, BrokerError> {
        Ok(self
            .store
            .count_connections()
            .await?
            .into_iter()
            .map(|c| {
                let status = match self.view_status(&c.provider, c.status) {
                    ViewStatus::Active if c.failing => "refresh_failing",
                    status => status.as_str(),
                };
                (c.provider, status, c.count)
            })
            .collect())
    }

    pub async fn connections(&self) -> Result<Vec<ConnectionView>, BrokerError> {
        Ok(self
            .store
            .list_connections()
            .await?
            .iter()
            .map(|r| self.view(r))
            .collect())
    }
}
