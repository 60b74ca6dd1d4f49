//! What oauthd tells targets about: the event types, their JSON bodies (the Standard
//! Webhooks payload shape: `type`, `timestamp`, `data`) and the sentence a phone shows.
//! Never a token: events are built from names, statuses and error texts only.

use serde_json::{json, Value};

/// The event types. `as_str` is the contract receivers match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    ConnectionConnected,
    /// Opt-in only: a target's `events` must name it exactly.
    ConnectionRefreshed,
    ConnectionRefreshFailing,
    ConnectionNeedsReauth,
    ConnectionRecovered,
    ConnectionDeleted,
    DeviceFlowCompleted,
    DeviceFlowFailed,
    /// `POST /v1/notify/test`: sent to every target, whatever its `events`.
    NotifyTest,
    /// The store lost what it held under a running oauthd (a Redis restarted without
    /// persistence, a `FLUSHALL`, a failover to an empty replica).
    StoreDataLost,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        EventType::ConnectionConnected,
        EventType::ConnectionRefreshed,
        EventType::ConnectionRefreshFailing,
        EventType::ConnectionNeedsReauth,
        EventType::ConnectionRecovered,
        EventType::ConnectionDeleted,
        EventType::DeviceFlowCompleted,
        EventType::DeviceFlowFailed,
        EventType::NotifyTest,
        EventType::StoreDataLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ConnectionConnected => "connection.connected",
            EventType::ConnectionRefreshed => "connection.refreshed",
            EventType::ConnectionRefreshFailing => "connection.refresh_failing",
            EventType::ConnectionNeedsReauth => "connection.needs_reauth",
            EventType::ConnectionRecovered => "connection.recovered",
            EventType::ConnectionDeleted => "connection.deleted",
            EventType::DeviceFlowCompleted => "device_flow.completed",
            EventType::DeviceFlowFailed => "device_flow.failed",
            EventType::NotifyTest => "notify.test",
            EventType::StoreDataLost => "store.data_lost",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Sent only to targets that name it exactly (a pattern never matches it).
    pub fn opt_in(self) -> bool {
        self == EventType::ConnectionRefreshed
    }
}

/// One event, before it is stored for each target.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `webhook-id`: the same for every target and every retry.
    pub id: String,
    pub kind: EventType,
    pub at_ms: i64,
    pub data: Value,
}

impl Event {
    /// The events this one ends (`connection.recovered`'s `told`, else its `after`): a
    /// target that was told of none of them is not told that the trouble is over.
    pub fn ends(&self) -> Vec<EventType> {
        if self.kind != EventType::ConnectionRecovered {
            return Vec::new();
        }
        let told: Vec<&str> = match self.data.get("told").and_then(Value::as_array) {
            Some(list) => list.iter().filter_map(Value::as_str).collect(),
            None => self
                .data
                .get("after")
                .and_then(Value::as_str)
                .into_iter()
                .collect(),
        };
        told.into_iter()
            .filter_map(|t| EventType::parse(&format!("connection.{t}")))
            .collect()
    }

    /// The JSON body of a webhook delivery.
    pub fn body(&self) -> String {
        json!({
            "type": self.kind.as_str(),
            "timestamp": crate::clock::rfc3339(self.at_ms),
            "data": self.data,
        })
        .to_string()
    }
}

/// What a phone shows for an event's stored JSON body: a title, a sentence, whether it is
/// urgent, and a link to open (the reconnect page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub title: String,
    pub text: String,
    pub urgent: bool,
    pub link: Option<String>,
}

/// Reads back a stored body; `None` when it is not one oauthd wrote.
pub fn message(body: &str) -> Option<Message> {
    let v: Value = serde_json::from_str(body).ok()?;
    let kind = EventType::parse(v.get("type")?.as_str()?)?;
    let d = v.get("data")?;
    let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let who = format!("{}/{}", s("provider"), s("account"));
    let error = s("error");
    let (title, text, urgent) = match kind {
        EventType::ConnectionConnected => (
            format!("{who} connected"),
            format!("{who} is connected."),
            false,
        ),
        EventType::ConnectionRefreshed => (
            format!("{who} refreshed"),
            format!("The access token of {who} was refreshed."),
            false,
        ),
        EventType::ConnectionRefreshFailing => (
            format!("{who}: refresh failing"),
            format!(
                "Refreshing {who} has failed since {} ({error}); oauthd keeps trying.",
                s("failing_since")
            ),
            true,
        ),
        EventType::ConnectionNeedsReauth => (
            format!("{who} needs you"),
            format!(
                "{who} must be connected again ({error}). Reconnect: {}",
                s("reconnect_url")
            ),
            true,
        ),
        EventType::ConnectionRecovered => (
            format!("{who} recovered"),
            format!("{who} works again."),
            false,
        ),
        EventType::ConnectionDeleted => (
            format!("{who} disconnected"),
            format!("{who} was disconnected."),
            false,
        ),
        EventType::DeviceFlowCompleted => (
            format!("{who} connected"),
            format!("The device sign-in for {who} completed."),
            false,
        ),
        EventType::DeviceFlowFailed => (
            format!("{who}: sign-in ended"),
            format!(
                "The device sign-in for {who} ended: {} ({}).",
                s("status"),
                s("detail")
            ),
            true,
        ),
        EventType::NotifyTest => (
            "test".to_owned(),
            "This is a test notification from oauthd: this target works.".to_owned(),
            false,
        ),
        EventType::StoreDataLost => (
            "store lost its data".to_owned(),
            format!(
                "{} lost what it held: connections, API keys, sign-ins and pending notifications may be gone.",
                s("store")
            ),
            true,
        ),
    };
    let link = d
        .get("reconnect_url")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some(Message {
        title: format!("oauthd: {title}"),
        text,
        urgent,
        link,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_reads_back_and_has_a_message() {
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
            let event = Event {
                id: "msg_1".into(),
                kind,
                at_ms: 0,
                data: json!({"provider": "p", "account": "a", "error": "invalid_grant",
                             "reconnect_url": "https://o/connect"}),
            };
            let m = message(&event.body()).expect("a message");
            assert!(m.title.starts_with("oauthd: "), "{m:?}");
            assert!(!m.text.is_empty());
        }
        assert_eq!(EventType::parse("connection.*"), None);
        assert_eq!(message("{\"type\":\"other\"}"), None);
    }

    #[test]
    fn needs_reauth_is_urgent_and_links_to_the_reconnect_page() {
        let event = Event {
            id: "msg_1".into(),
            kind: EventType::ConnectionNeedsReauth,
            at_ms: 0,
            data: json!({"provider": "spotify", "account": "default",
                         "error": "invalid_grant: revoked", "reconnect_url": "https://o/c"}),
        };
        let m = message(&event.body()).expect("a message");
        assert!(m.urgent);
        assert_eq!(m.link.as_deref(), Some("https://o/c"));
        assert!(m.text.contains("spotify/default"), "{}", m.text);
        assert!(m.text.contains("invalid_grant: revoked"), "{}", m.text);
    }
}
