//! The events the broker's changes tell of. Each is built before the store write that
//! makes the change and stored with it (`Notifier::deliveries`), so a change is never told
//! without having happened, and never happens without being told.

use super::Broker;
use crate::notify::{Event, EventType};
use crate::store::{
    AccountIdentity, ConnectionKey, ConnectionRow, ConnectionStatus, DeviceFlowRow,
    DeviceFlowStatus, Told,
};
use serde_json::{json, Value};

/// How a connection got its tokens.
#[derive(Debug, Clone, Copy)]
pub(super) enum Via {
    Connect,
    Device,
    Import,
}

impl Broker {
    fn connection_event(&self, kind: EventType, key: &ConnectionKey, more: Value) -> Event {
        let mut data = json!({"provider": key.provider, "account": key.account});
        if let (Some(data), Value::Object(more)) = (data.as_object_mut(), more) {
            data.extend(more);
        }
        self.notifier.event(kind, data)
    }

    /// A (re)connect: `connection.connected`, and `connection.recovered` when the user was
    /// told the connection needed them (`before` is the row it replaces). An import is no
    /// proof that the connection works: its `recovered` waits for a refresh that succeeds.
    pub(super) fn connected_events(
        &self,
        key: &ConnectionKey,
        before: Option<&ConnectionRow>,
        via: Via,
        (identity, same_account_as, replaced): (
            &AccountIdentity,
            &[String],
            Option<&AccountIdentity>,
        ),
    ) -> Vec<Event> {
        let proves_it_works = !matches!(via, Via::Import);
        let via = match via {
            Via::Connect => "connect",
            Via::Device => "device",
            Via::Import => "import",
        };
        let mut data = json!({"via": via, "reconnected": before.is_some()});
        if let Some(data) = data.as_object_mut() {
            if !identity.is_empty() {
                data.insert("provider_account".into(), json!(identity));
            }
            if !same_account_as.is_empty() {
                data.insert("same_account_as".into(), json!(same_account_as));
            }
            if let Some(old) = replaced {
                data.insert("replaced_provider_account".into(), json!(old));
            }
        }
        let mut events = vec![self.connection_event(EventType::ConnectionConnected, key, data)];
        if proves_it_works {
            events.extend(before.and_then(|row| self.recovered(row)));
        }
        events
    }

    /// `connection.recovered` for a row that had been reported broken or failing.
    fn recovered(&self, row: &ConnectionRow) -> Option<Event> {
        let told = if row.status == ConnectionStatus::NeedsReauth {
            row.told.with(Told::NEEDS_REAUTH)
        } else {
            row.told
        };
        let mut ends = Vec::new();
        if told.failing() {
            ends.push("refresh_failing");
        }
        if told.needs_reauth() {
            ends.push("needs_reauth");
        }
        let after = *ends.last()?;
        Some(self.connection_event(
            EventType::ConnectionRecovered,
            &row.key(),
            json!({"after": after, "told": ends}),
        ))
    }

    /// A successful refresh of `row`: `connection.refreshed` (for targets that opted in)
    /// and `connection.recovered` if failures had been reported.
    pub(super) fn refreshed_events(
        &self,
        row: &ConnectionRow,
        expires_at_ms: Option<i64>,
    ) -> Vec<Event> {
        let mut events = vec![self.connection_event(
            EventType::ConnectionRefreshed,
            &row.key(),
            json!({"expires_at": expires_at_ms.map(crate::clock::rfc3339)}),
        )];
        events.extend(self.recovered(row));
        events
    }

    pub(super) fn needs_reauth_event(&self, row: &ConnectionRow, error: &str) -> Event {
        self.connection_event(
            EventType::ConnectionNeedsReauth,
            &row.key(),
            json!({
                "error": error,
                "reconnect_url": self.reconnect_url(&row.provider, &row.account),
            }),
        )
    }

    /// `connection.refresh_failing` when this transient failure makes the run of failures
    /// older than `events.refresh_failing_after_seconds` and it was not told yet.
    pub(super) fn failing_event(
        &self,
        row: &ConnectionRow,
        error: &str,
        now_ms: i64,
        retry_at_ms: Option<i64>,
    ) -> Option<Event> {
        let since = row.failing_since_ms.unwrap_or(now_ms);
        let after =
            i64::try_from(self.notifier.policy().failing_after.as_millis()).unwrap_or(i64::MAX);
        if row.told.failing() || now_ms.saturating_sub(since) < after {
            return None;
        }
        Some(self.connection_event(
            EventType::ConnectionRefreshFailing,
            &row.key(),
            json!({
                "error": error,
                "failing_since": crate::clock::rfc3339(since),
                "failures": row.failures + 1,
                "retry_at": retry_at_ms.map(crate::clock::rfc3339),
            }),
        ))
    }

    pub(super) fn deleted_event(&self, key: &ConnectionKey, revoked: &str) -> Event {
        self.connection_event(
            EventType::ConnectionDeleted,
            key,
            json!({"revocation": revoked}),
        )
    }

    /// `device_flow.completed` or `device_flow.failed` for a flow that just ended.
    pub(super) fn device_event(
        &self,
        flow: &DeviceFlowRow,
        status: DeviceFlowStatus,
        error: Option<&str>,
        detail: &str,
    ) -> Event {
        let kind = if status == DeviceFlowStatus::Connected {
            EventType::DeviceFlowCompleted
        } else {
            EventType::DeviceFlowFailed
        };
        let mut data = json!({
            "id": flow.id,
            "provider": flow.provider,
            "account": flow.account,
            "status": status.as_str(),
            "detail": detail,
        });
        if let (Some(error), Some(fields)) = (error, data.as_object_mut()) {
            fields.insert("error".into(), error.into());
        }
        self.notifier.event(kind, data)
    }
}
