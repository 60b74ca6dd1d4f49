//! Prometheus metrics: what oauthd did, for operators who do not read logs. One registry,
//! served at `/metrics`; HTTP request counts and latencies are recorded by
//! `http::request_metrics`.

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, RwLock};

use crate::namespace::CONNECT_PREFIX;

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("oauthd")
}

/// Registers a freshly made metric. Making and registering a uniquely named metric cannot
/// fail; a failure is a programming error, caught by the first test that scrapes.
#[expect(
    clippy::panic,
    reason = "metric names and labels are constants: a clash is a programming error every test run catches"
)]
fn registered<M: Collector + Clone + 'static>(name: &str, made: prometheus::Result<M>) -> M {
    let metric = made.unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = REGISTRY.register(Box::new(metric.clone()));
    metric
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(name, IntCounterVec::new(opts(name, help), labels))
}

fn counter(name: &str, help: &str) -> IntCounter {
    registered(name, IntCounter::with_opts(opts(name, help)))
}

/// Most namespaces that get a label of their own; states of any further namespace count
/// under `_other`. Apps may invent namespaces freely: this keeps the scrape bounded.
pub const MAX_NAMESPACE_LABELS: usize = 200;
/// The label for namespaces past the limit; not a valid namespace, so it cannot collide.
pub const OTHER_NAMESPACES: &str = "_other";
/// The label for a consume whose namespace is not known (an unknown state at a callback).
pub const NO_NAMESPACE: &str = "_none";
/// The label for an unknown state presented under a namespace that has no label yet: the
/// namespace was the caller's word, and words must not use up the labels.
pub const UNLABELLED_NAMESPACE: &str = "_unknown";

static NAMESPACE_LABELS: LazyLock<RwLock<HashSet<String>>> = LazyLock::new(Default::default);

/// What a namespace is counted as: itself, except that the broker's connect flows
/// (`connect:<provider>:<account>`) count per provider, so that account names stay off the
/// scrape and each account does not take a label.
fn countable(namespace: &str) -> &str {
    let Some(rest) = namespace.strip_prefix(CONNECT_PREFIX) else {
        return namespace;
    };
    match rest.find(':') {
        Some(end) => namespace
            .get(..CONNECT_PREFIX.len() + end)
            .unwrap_or(namespace),
        None => namespace,
    }
}

/// Whether the namespace has a label of its own already.
fn labelled(namespace: &str) -> bool {
    NAMESPACE_LABELS
        .read()
        .is_ok_and(|seen| seen.contains(namespace))
}

/// `namespace` itself while fewer than `MAX_NAMESPACE_LABELS` namespaces were labelled,
/// else `_other` (a namespace labelled already costs no allocation).
fn namespace_label(namespace: &str) -> &str {
    let namespace = countable(namespace);
    let known = |seen: &HashSet<String>| seen.contains(namespace);
    if labelled(namespace) {
        return namespace;
    }
    match NAMESPACE_LABELS.write() {
        Ok(mut seen) if known(&seen) || seen.len() < MAX_NAMESPACE_LABELS => {
            seen.insert(namespace.to_owned());
            namespace
        }
        _ => OTHER_NAMESPACES,
    }
}

static STATES_CREATED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "states_created_total",
        "States issued, by namespace.",
        &["namespace"],
    )
});

static STATE_CONSUMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "state_consumes_total",
        "State consume attempts, by namespace and outcome (ok, unknown, expired); connect \
         flows by provider (connect:<provider>), unknown states presented under a namespace \
         without a label yet as _unknown.",
        &["namespace", "outcome"],
    )
});

static STATES_SWEPT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "states_swept_total",
        "Expired states removed by the sweeper, by namespace.",
        &["namespace"],
    )
});

/// Label sets one thread keeps its own handles for, per metric; it looks any further one
/// up each time, as before.
const MAX_LOCAL_SERIES: usize = 1024;

/// A thread's handles to the series of one metric, by the values it was asked for:
/// prometheus hashes a label set and takes a lock to find its series on every call, and
/// the hot paths count several series on every request. The first value is the map's
/// key, so a hit allocates nothing.
pub(crate) struct LocalSeries<M> {
    by_first: HashMap<String, Vec<(Vec<String>, M)>>,
    len: usize,
}

impl<M> Default for LocalSeries<M> {
    fn default() -> Self {
        LocalSeries {
            by_first: HashMap::new(),
            len: 0,
        }
    }
}

impl<M> LocalSeries<M> {
    /// Runs `use_it` on the handle for `values` (at least one), made by `resolve` the
    /// first time.
    pub(crate) fn with<R>(
        &mut self,
        values: &[&str],
        resolve: impl FnOnce() -> M,
        use_it: impl FnOnce(&M) -> R,
    ) -> R {
        let (first, rest) = values.split_first().unwrap_or((&"", &[]));
        let same = |kept: &[String]| kept.iter().map(String::as_str).eq(rest.iter().copied());
        if let Some(list) = self.by_first.get(*first) {
            if let Some((_, metric)) = list.iter().find(|(kept, _)| same(kept)) {
                return use_it(metric);
            }
        }
        let metric = resolve();
        let answer = use_it(&metric);
        if self.len >= MAX_LOCAL_SERIES {
            // Full (label sets an app invents): further ones are looked up each time, and
            // the ones kept stay fast.
            return answer;
        }
        self.len += 1;
        let rest = rest.iter().map(|v| (*v).to_owned()).collect();
        self.by_first
            .entry((*first).to_owned())
            .or_default()
            .push((rest, metric));
        answer
    }
}

thread_local! {
    static CREATED_LOCAL: RefCell<LocalSeries<IntCounter>> = RefCell::default();
    static CONSUMED_LOCAL: RefCell<LocalSeries<IntCounter>> = RefCell::default();
    static HTTP_LOCAL: RefCell<LocalSeries<(IntCounter, Histogram)>> = RefCell::default();
}

pub fn state_created(namespace: &str) {
    CREATED_LOCAL.with_borrow_mut(|local| {
        local.with(
            &[namespace],
            || STATES_CREATED.with_label_values(&[namespace_label(namespace)]),
            IntCounter::inc,
        )
    });
}

/// `namespace`: the state's, or the one it was presented for; `None` when neither is known.
pub fn state_consumed(namespace: Option<&str>, outcome: &str) {
    let Some(namespace) = namespace else {
        STATE_CONSUMES
            .with_label_values(&[NO_NAMESPACE, outcome])
            .inc();
        return;
    };
    CONSUMED_LOCAL.with_borrow_mut(|local| {
        local.with(
            &[namespace, outcome],
            || STATE_CONSUMES.with_label_values(&[namespace_label(namespace), outcome]),
            IntCounter::inc,
        )
    });
}

/// A consume (or code attempt) of a state oauthd does not know, presented under
/// `namespace` (`None` when it was not said). Counted under that namespace only when it has
/// a label already (a state of it was created, consumed or swept): anyone with a key may
/// present any namespace, and that must not use up the labels.
pub fn unknown_state_consumed(namespace: Option<&str>) {
    let label = namespace.map_or(NO_NAMESPACE, |ns| {
        let ns = countable(ns);
        if labelled(ns) {
            ns
        } else {
            UNLABELLED_NAMESPACE
        }
    });
    STATE_CONSUMES.with_label_values(&[label, "unknown"]).inc();
}

pub fn states_swept(namespace: &str, count: u64) {
    STATES_SWEPT
        .with_label_values(&[namespace_label(namespace)])
        .inc_by(count);
}

static CACHE_READS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "cache_reads_total",
        "Hot-path reads of the in-memory caches, by cache (verify, token) and result (hit: \
         answered from memory; miss: read from the store).",
        &["cache", "result"],
    )
});

/// The hit and miss counters of the cache `name`, resolved once (the hot paths count
/// without looking labels up).
pub fn cache_counters(name: &str) -> (IntCounter, IntCounter) {
    (
        CACHE_READS.with_label_values(&[name, "hit"]),
        CACHE_READS.with_label_values(&[name, "miss"]),
    )
}

/// result: ok, failed, needs_reauth.
pub static REFRESHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "refreshes_total",
        "Token refreshes at providers, by provider and result.",
        &["provider", "result"],
    )
});

/// Requests through `/v1/proxy`, by provider and the provider's status class (`error`:
/// no answer at all).
static PROXIED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "proxy_requests_total",
        "Requests through the proxy, by provider and the answer's status class (2xx..5xx, error).",
        &["provider", "class"],
    )
});

/// Counts a proxied request; `status` 0 when the provider's API gave no answer.
pub fn proxied(provider: &str, status: u16) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "error",
    };
    PROXIED.with_label_values(&[provider, class]).inc();
}

/// Events that happened, by type, whether or not a target wanted them.
pub static EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "events_total",
        "Events (connection.*, device_flow.*, notify.test), by type.",
        &["type"],
    )
});

/// result: delivered, failed (retried later), dead.
pub static DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "deliveries_total",
        "Notification delivery attempts, by target and result (delivered, failed, dead).",
        &["target", "result"],
    )
});

pub static OUTBOX_PENDING: LazyLock<IntGauge> = LazyLock::new(|| {
    let name = "outbox_pending";
    let help = "Notification deliveries waiting to be sent or retried, at the last scrape.";
    registered(name, IntGauge::with_opts(opts(name, help)))
});

pub static STORAGE_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "storage_errors_total",
        "Requests answered 503 because storage failed.",
    )
});

pub static STORAGE_READ_ONLY: LazyLock<IntGauge> = LazyLock::new(|| {
    let name = "storage_read_only";
    let help = "1 while the SQLite database cannot be written (writes answer 503), else 0.";
    registered(name, IntGauge::with_opts(opts(name, help)))
});

pub static STORAGE_READY: LazyLock<IntGauge> = LazyLock::new(|| {
    let name = "storage_ready";
    let help = "1 when the storage answered a read and could take writes at the last scrape \
                (what /readyz checks), else 0: a lock another process holds, a database \
                deleted or moved, read-only or full, Redis down.";
    registered(name, IntGauge::with_opts(opts(name, help)))
});

pub static STORAGE_DISK_FULL: LazyLock<IntGauge> = LazyLock::new(|| {
    let name = "storage_disk_full";
    let help = "1 from a SQLite write that failed for want of room on the disk (writes that \
                find none answer 503) until one goes through with room again, else 0.";
    registered(name, IntGauge::with_opts(opts(name, help)))
});

/// Always 1, labelled with the build: which oauthd serves, for a dashboard or an alert on
/// mixed versions behind one Redis.
pub static BUILD_INFO: LazyLock<IntGauge> = LazyLock::new(|| {
    let name = "build_info";
    let help = "1, labelled with the version and the commit this oauthd was built from.";
    let opts = opts(name, help)
        .const_label("version", env!("CARGO_PKG_VERSION"))
        .const_label("commit", env!("OAUTHD_COMMIT"));
    registered(name, IntGauge::with_opts(opts))
});

pub static CONNECTIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    let name = "connections";
    let help = "Connections by provider and status, at the last scrape.";
    registered(
        name,
        IntGaugeVec::new(opts(name, help), &["provider", "status"]),
    )
});

/// The process's own series, as every Prometheus client exports them and dashboards
/// expect (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds` against `process_max_fds`, `process_start_time_seconds`, …): read
/// from `/proc` at each scrape. For the daemon only.
pub fn register_process() {
    let process = prometheus::process_collector::ProcessCollector::for_self();
    let _ = REGISTRY.register(Box::new(ProcessSeries { process }));
}

const CPU_SECONDS: &str = "process_cpu_seconds_total";

/// The prometheus crate's process series, but for the CPU time: it counts that in whole
/// seconds, so a daemon that idles at milliseconds a minute showed 0 for its first second
/// of CPU and `rate()` of it came in steps. Taken here from the process's CPU clock
/// (user and system time together, to the nanosecond).
struct ProcessSeries {
    process: prometheus::process_collector::ProcessCollector,
}

impl Collector for ProcessSeries {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.process.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.process.collect();
        let used = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        #[expect(
            clippy::cast_precision_loss,
            reason = "seconds of CPU: an f64 holds them exactly for 285 million years"
        )]
        let seconds = used.tv_sec as f64 + used.tv_nsec as f64 / 1e9;
        for family in families.iter_mut().filter(|f| f.name() == CPU_SECONDS) {
            family.set_field_type(prometheus::proto::MetricType::COUNTER);
            let mut counter = prometheus::proto::Counter::default();
            counter.set_value(seconds);
            let mut metric = prometheus::proto::Metric::default();
            metric.set_counter(counter);
            family.set_metric(vec![metric]);
        }
        families
    }
}

/// Prometheus text format of everything registered.
pub fn render() -> String {
    // A counter without labels is shown from the start, at 0: an alert on its rate, or a
    // dashboard, should not find it missing until the first storage failure.
    LazyLock::force(&STORAGE_ERRORS);
    LazyLock::force(&STORAGE_READ_ONLY);
    LazyLock::force(&OUTBOX_PENDING);
    let mut out = String::new();
    let _ = prometheus::TextEncoder::new().encode_utf8(&REGISTRY.gather(), &mut out);
    out
}

const HTTP_LABELS: [&str; 3] = ["endpoint", "method", "status"];

static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "http_requests_total",
        "Total number of HTTP requests",
        &HTTP_LABELS,
    )
});

static HTTP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    let name = "http_requests_duration_seconds";
    let opts = HistogramOpts::new(name, "HTTP request duration in seconds for all requests")
        .namespace("oauthd");
    registered(name, HistogramVec::new(opts, &HTTP_LABELS))
});

/// Counts an HTTP answer by route pattern, method and status; returns the histogram its
/// latency goes into once its body is done.
pub fn http_answered(endpoint: &str, method: &str, status: &str) -> Histogram {
    let labels = [endpoint, method, status];
    HTTP_LOCAL.with_borrow_mut(|local| {
        local.with(
            &labels,
            || {
                (
                    HTTP_REQUESTS.with_label_values(&labels),
                    HTTP_DURATION.with_label_values(&labels),
                )
            },
            |(count, latency)| {
                count.inc();
                latency.clone()
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_flows_count_per_provider() {
        for (namespace, counted) in [
            ("connect:spotify:alice", "connect:spotify"),
            ("connect:spotify:acme.bob", "connect:spotify"),
            ("connect:spotify", "connect:spotify"),
            ("oauth:spotify:x", "oauth:spotify:x"),
            ("connectors:a:b", "connectors:a:b"),
        ] {
            assert_eq!(countable(namespace), counted, "{namespace}");
        }
    }

    #[test]
    fn a_thread_keeps_one_handle_per_label_set_and_never_mixes_two() {
        let mut local = LocalSeries::<u32>::default();
        let mut made = 0;
        let mut get = |local: &mut LocalSeries<u32>, values: &[&str]| {
            local.with(
                values,
                || {
                    made += 1;
                    made
                },
                |m| *m,
            )
        };
        assert_eq!(get(&mut local, &["/a", "GET", "200"]), 1);
        assert_eq!(get(&mut local, &["/a", "GET", "404"]), 2);
        assert_eq!(get(&mut local, &["/a", "POST", "200"]), 3);
        assert_eq!(get(&mut local, &["/b", "GET", "200"]), 4);
        assert_eq!(get(&mut local, &["/a", "GET", "200"]), 1);
        assert_eq!(get(&mut local, &["/a", "GET", "404"]), 2);
        assert_eq!(get(&mut local, &["/b", "GET", "200"]), 4);
    }

    #[test]
    fn past_its_bound_a_thread_keeps_no_more_handles_and_still_answers_right() {
        let mut local = LocalSeries::<usize>::default();
        for i in 0..MAX_LOCAL_SERIES + 10 {
            let name = format!("ns{i}");
            assert_eq!(local.with(&[&name], || i, |m| *m), i);
        }
        assert_eq!(local.len, MAX_LOCAL_SERIES);
        let kept: usize = local.by_first.values().map(Vec::len).sum();
        assert_eq!(kept, MAX_LOCAL_SERIES);
        // The first ones are still kept: not made again.
        assert_eq!(local.with(&["ns0"], || usize::MAX, |m| *m), 0);
        // One past the bound was not kept: made again each time.
        let past = format!("ns{}", MAX_LOCAL_SERIES + 1);
        assert_eq!(local.with(&[&past], || 7, |m| *m), 7);
        assert_eq!(local.with(&[&past], || 8, |m| *m), 8);
    }
}
